"""Hostile registries: slow ones and ones that reach for credentials.

Real HTTP servers on loopback (registry_fixture.FakeRegistry) and the
real image store; each case asserts a clear error, what the servers
received, and a store with nothing left behind.
"""

import os

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base as oslo_base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import registry
from kata_zun.image import store
from kata_zun.tests.functional import registry_fixture as rf
from kata_zun.tests.functional import test_registry

CONF = conf.CONF
CREDS = {'username': 'alice', 'password': 'tenant-secret'}


class HostileRegistryTestCase(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        # Without a pull deadline, the dripping registries below would
        # hold a pull for hours: this ends the test instead.
        self.useFixture(fixtures.Timeout(240, gentle=True))
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(self.tmp, 'store')
        self.store = store.ImageStore(self.root)
        self.registry = self.useFixture(rf.FakeRegistry())
        self.other = self.useFixture(rf.FakeRegistry())
        self.flags(insecure_registries=[self.registry.address,
                                        self.other.address],
                   registry_retries=0, group='kata_image')
        self.manifest_digest, self.image_id, self.blobs = \
            test_registry.fake_image(self.registry, 'app', 'v1', [
                [busybox.Entry('etc/motd', 'file', b'hello')]])
        self.ref = self.registry.address + '/app:v1'

    def assertStoreClean(self):
        for sub in ('tmp', 'images', 'block'):
            self.assertEqual([], os.listdir(os.path.join(self.root, sub)))
        self.assertEqual([], self.store.list())

    # -------------------------------------------------------- deadline

    def test_dripping_blob_ends_at_the_pull_deadline(self):
        self.flags(pull_timeout=3, registry_timeout=60, group='kata_image')
        # A layer of 1 MiB at 20 bytes a second.
        self.manifest_digest, self.image_id, self.blobs = \
            test_registry.fake_image(self.registry, 'slow', 'v1', [[
                busybox.Entry('big', 'file', os.urandom(1 << 20))]])
        for digest in self.blobs:
            self.registry.behaviour[digest] = 'drip'
        e = self.assertRaises(registry.PullTimeout, self.store.pull,
                              self.registry.address + '/slow:v1')
        self.assertIn('pull_timeout', str(e))
        self.assertStoreClean()

    def test_dripping_headers_end_at_the_pull_deadline(self):
        # Each byte comes well within registry_timeout: only the
        # deadline stops it.
        self.flags(pull_timeout=3, registry_timeout=60, group='kata_image')
        self.registry.drip_headers = True
        e = self.assertRaises(registry.PullTimeout, self.store.pull,
                              self.ref)
        self.assertIn('pull_timeout', str(e))
        self.assertStoreClean()

    # ----------------------------------------------------- credentials

    def test_token_realm_on_another_host_gets_no_credentials(self):
        self.registry.challenge = (
            'Bearer realm="http://%s/token",service="fake"'
            % self.other.address)
        self.registry.token = self.other.token
        e = self.assertRaises(registry.RegistryAuthError, self.store.pull,
                              self.ref, credentials=CREDS)
        self.assertIn('token_realm_hosts', str(e))
        self.assertEqual([], self.other.authorizations)
        self.assertStoreClean()
        # Listed by the operator, it is trusted.
        self.flags(token_realm_hosts=[self.other.address],
                   group='kata_image')
        record = self.store.pull(self.ref, credentials=CREDS)
        self.assertEqual(self.image_id, record.id)
        self.assertEqual(1, len(self.other.authorizations))
        self.assertTrue(self.other.authorizations[0][1].startswith('Basic '))

    def test_anonymous_token_from_another_host(self):
        # Without credentials there is nothing to leak: the token server
        # may be anywhere (Docker Hub's is).
        self.registry.challenge = (
            'Bearer realm="http://%s/token",service="fake"'
            % self.other.address)
        self.registry.token = self.other.token
        record = self.store.pull(self.ref)
        self.assertEqual(self.image_id, record.id)
        self.assertEqual([('/token', None)], self.other.authorizations)

    def test_redirect_target_cannot_pick_the_realm(self):
        # The registry redirects the manifest to another host, which
        # asks for a token from itself: the credentials stay home.
        path = '/v2/app/manifests/v1'
        self.registry.redirects[path] = 'http://%s%s' % (
            self.other.address, path)
        self.other.manifests.update(self.registry.manifests)
        self.other.challenge = (
            'Bearer realm="http://%s/token",service="fake"'
            % self.other.address)
        e = self.assertRaises(registry.RegistryAuthError, self.store.pull,
                              self.ref, credentials=CREDS)
        self.assertIn('token_realm_hosts', str(e))
        self.assertEqual([(path, None)], self.other.authorizations)
        self.assertStoreClean()

    # ------------------------------------------------------- documents

    def test_deeply_nested_manifest_is_refused(self):
        nested = {}
        for _ in range(500):
            nested = {'n': nested}
        self.registry.add_image('deep', 'v1', dict(
            nested, schemaVersion=2, mediaType=busybox.MT_OCI_MANIFEST),
            busybox.MT_OCI_MANIFEST, {})
        e = self.assertRaises(exception.ImageError, self.store.pull,
                              self.registry.address + '/deep:v1')
        self.assertIn('nested deeper', str(e))
        self.assertStoreClean()

    def test_manifest_of_tiny_values_is_refused(self):
        self.registry.add_image('tiny', 'v1', {
            'schemaVersion': 2, 'mediaType': busybox.MT_OCI_MANIFEST,
            'annotations': {'x': [[]] * 100000}},
            busybox.MT_OCI_MANIFEST, {})
        e = self.assertRaises(exception.ImageLimitExceeded, self.store.pull,
                              self.registry.address + '/tiny:v1')
        self.assertIn('values', str(e))
        self.assertStoreClean()
