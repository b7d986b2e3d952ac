"""Pulling images from real registries (see registry_fixture.py).

The real ``docker-registry`` serves images pushed by ``skopeo``; a fake
stdlib registry serves broken blobs and counts requests.  The last test
runs a pulled image in a VM through the CLI.
"""

import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base as oslo_base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import registry
from kata_zun.image import store
from kata_zun.tests.functional import base
from kata_zun.tests.functional import registry_fixture as rf

CONF = conf.CONF
Entry = busybox.Entry
MOTD = b'pulled from a registry\n'


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def fake_image(fake, repository, tag, layers, layer_type=None):
    """Serve an image of small layers from a FakeRegistry.

    :returns: (manifest digest, image id, layer digests).
    """
    tars = [busybox.layer_tar(layer) for layer in layers]
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    config = json.dumps(busybox.image_config([sha256(t) for t in tars]),
                        sort_keys=True).encode()
    manifest = {
        'schemaVersion': 2, 'mediaType': busybox.MT_OCI_MANIFEST,
        'config': {'mediaType': busybox.MT_OCI_CONFIG,
                   'digest': sha256(config), 'size': len(config)},
        'layers': [{'mediaType': layer_type or busybox.MT_OCI_LAYER_GZIP,
                    'digest': sha256(b), 'size': len(b)} for b in blobs]}
    digest = fake.add_image(repository, tag, manifest,
                            busybox.MT_OCI_MANIFEST,
                            dict({sha256(config): config},
                                 **{sha256(b): b for b in blobs}))
    return digest, sha256(config), [sha256(b) for b in blobs]


class PullTestCase(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(300, gentle=True))
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(self.tmp, 'store')
        self.store = store.ImageStore(self.root)
        self.messages = []

    # Helpers.

    def start(self, mode='http', default=True):
        reg = self.useFixture(rf.Registry(mode))
        insecure = [] if mode == 'tls' else [reg.address]
        if reg.issuer:
            insecure.append(reg.issuer.address)
        self.flags(insecure_registries=insecure, group='kata_image')
        if default:
            self.flags(default_registry=reg.address, group='kata_image')
        return reg

    def fake(self):
        fake = self.useFixture(rf.FakeRegistry())
        self.flags(insecure_registries=[fake.address], group='kata_image')
        return fake

    def archive(self, **kwargs):
        path = os.path.join(self.tmp, 'image-%d.tar' % len(os.listdir(
            self.tmp)))
        image_id = busybox.write_oci_archive(path, **kwargs)
        return 'oci-archive:' + path, image_id

    def push_busybox(self, reg, repo_tag='library/busybox:latest',
                     **kwargs):
        kwargs.setdefault('extra_files', {'etc/motd': MOTD})
        source, image_id = self.archive(**kwargs)
        reg.push(source, repo_tag)
        return image_id

    def pull(self, ref, **kwargs):
        return self.store.pull(ref, progress=self.messages.append, **kwargs)

    def digest_message(self):
        return [m.split()[1] for m in self.messages
                if m.startswith('Digest: ')][-1]

    def extract(self, record):
        out = os.path.join(self.tmp, 'extracted')
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(['fsck.erofs', '--extract=' + out,
                        record.block_image], check=True, capture_output=True)
        return out

    def assertStoreClean(self, pulled_before=False):
        for sub in ('tmp', 'images', 'block'):
            self.assertEqual([], os.listdir(os.path.join(self.root, sub)))
        self.assertEqual([], self.store.list())
        if not pulled_before:
            self.assertFalse(os.path.exists(os.path.join(
                self.root, 'registry', 'digests')))

    # The real registry.

    def test_anonymous_pull(self):
        reg = self.start()
        image_id = self.push_busybox(reg)
        record = self.pull('busybox')
        self.assertEqual(image_id, record.id)
        full = '%s/library/busybox:latest' % reg.address
        self.assertEqual([full], record.repo_tags)
        self.assertTrue(os.path.isfile(record.block_image))
        self.assertEqual('amd64', record.architecture)
        with open(os.path.join(self.extract(record), 'etc/motd'), 'rb') as f:
            self.assertEqual(MOTD, f.read())
        # Found by its full name and, from the default registry, short.
        for ref in ('busybox', 'busybox:latest', full):
            self.assertEqual(image_id, self.store.get(ref).id)
        self.assertIn('Pulling %s' % full, self.messages)
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))
        # Removing by the short name removes the image.
        self.assertTrue(self.store.remove('busybox'))
        self.assertEqual([], self.store.list())

    def test_docker_schema2_and_whiteouts(self):
        reg = self.start()
        layers = [[Entry('etc/motd', 'file', MOTD),
                   Entry('srv', 'dir'), Entry('srv/a', 'file', 'a'),
                   Entry('srv/b', 'file', 'b')],
                  [Entry('etc/motd', 'whiteout'), Entry('srv', 'opaque'),
                   Entry('srv/c', 'file', 'c')]]
        source, image_id = self.archive(layers=layers)
        reg.push(source, 'team/app:v2', docker_format=True)
        record = self.pull('%s/team/app:v2' % reg.address)
        self.assertEqual(image_id, record.id)
        root = self.extract(record)
        self.assertFalse(os.path.exists(os.path.join(root, 'etc/motd')))
        self.assertEqual(['c'], os.listdir(os.path.join(root, 'srv')))
        self.assertTrue(os.path.isfile(os.path.join(root, 'bin/busybox')))
        self.assertEqual(image_id, self.store.get('team/app:v2').id)
        self.assertTrue(any(m.startswith('Layer 3/3 ') and
                            m.endswith(': done') for m in self.messages))

    def test_loopback_plain_http_without_configuration(self):
        # Like Docker: a registry on loopback needs no insecure entry.
        reg = self.start()
        image_id = self.push_busybox(reg)
        self.flags(insecure_registries=[], group='kata_image')
        sends = self.useFixture(fixtures.MockPatchObject(
            registry.Client, '_send', autospec=True,
            side_effect=registry.Client._send)).mock
        self.assertEqual(image_id, self.pull('busybox').id)
        urls = [c.args[1] for c in sends.call_args_list]
        self.assertTrue(urls[0].startswith('https://%s/' % reg.address),
                        urls)
        # One HTTPS attempt, then plain HTTP for every request.
        self.assertFalse([u for u in urls[1:] if u.startswith('https')],
                         urls)
        for name in ('localhost:%d' % reg.port, '127.0.0.1:%d' % reg.port):
            self.store.remove(self.store.list()[0].id)
            self.assertEqual(image_id, self.pull(name + '/library/busybox',
                                                 policy='always').id)

    def test_plain_http_elsewhere_says_how_to_allow_it(self):
        # The registry is on 127.0.0.1 (traffic stays here) but is taken
        # for a remote host: HTTPS only, one attempt, a hint.
        reg = self.start()
        self.push_busybox(reg)
        self.flags(insecure_registries=[], group='kata_image')
        self.useFixture(fixtures.MockPatch(
            'kata_zun.image.registry.transport.is_loopback',
            return_value=False))
        sends = self.useFixture(fixtures.MockPatchObject(
            registry.Client, '_send', autospec=True,
            side_effect=registry.Client._send)).mock
        started = time.monotonic()
        e = self.assertRaises(registry.RegistryError, self.pull, 'busybox')
        self.assertIn('https://%s/v2/library/busybox/manifests/latest'
                      % reg.address, str(e))
        self.assertIn('%s answers in plain HTTP, not HTTPS; to pull from it '
                      'over plain HTTP, add "%s" to [kata_image] '
                      'insecure_registries' % (reg.address, reg.address),
                      str(e))
        self.assertEqual(1, sends.call_count)
        self.assertLess(time.monotonic() - started, 5)
        self.assertStoreClean()

    def test_basic_auth(self):
        reg = self.start('basic')
        image_id = self.push_busybox(reg)
        e = self.assertRaises(registry.RegistryAuthError, self.pull,
                              'busybox')
        self.assertIn('needs credentials', str(e))
        e = self.assertRaises(
            registry.RegistryAuthError, self.pull, 'busybox',
            credentials={'username': rf.USER, 'password': 'wrong'})
        self.assertIn('access to library/busybox denied', str(e))
        self.assertStoreClean()
        good = {'username': rf.USER, 'password': rf.PASSWORD}
        self.assertEqual(image_id, self.pull('busybox',
                                             credentials=good).id)
        # The credentials file, for pulls without credentials.
        self.store.remove('busybox')
        path = os.path.join(self.tmp, 'credentials.json')
        with open(path, 'w') as f:
            json.dump({reg.address: good}, f)
        self.flags(credentials_file=path, group='kata_image')
        self.assertEqual(image_id, self.pull('busybox').id)

    def test_tls(self):
        reg = self.start('tls')
        image_id = self.push_busybox(reg)
        log = self.useFixture(fixtures.FakeLogger(
            name='kata_zun.image.registry'))
        e = self.assertRaises(registry.RegistryError, self.pull, 'busybox')
        self.assertIn('CERTIFICATE_VERIFY_FAILED', str(e))
        # An untrusted certificate stays untrusted: not retried.
        self.assertNotIn('retry', log.output)
        self.assertStoreClean()
        self.flags(ca_file=reg.ca_file, group='kata_image')
        self.assertEqual(image_id, self.pull('busybox').id)

    def test_bearer_token(self):
        reg = self.start('token')
        image_id = self.push_busybox(reg)
        del reg.issuer.requests[:]
        # Anonymous: the token server grants pull.
        self.assertEqual(image_id, self.pull('busybox').id)
        request = reg.issuer.requests[0]
        self.assertIsNone(request['auth'])
        self.assertEqual({'scope': ['repository:library/busybox:pull'],
                          'service': [rf.SERVICE]}, request['query'])
        # With credentials: sent to the token server, once the operator
        # lists it (it is not the registry's host:port; see
        # test_hostile_images for the refusal).
        self.store.remove('busybox')
        self.flags(token_realm_hosts=[reg.issuer.address],
                   group='kata_image')
        good = {'username': rf.USER, 'password': rf.PASSWORD}
        self.assertEqual(image_id, self.pull('busybox',
                                             credentials=good).id)
        self.assertTrue(reg.issuer.requests[-1]['auth'].startswith('Basic '))
        self.store.remove('busybox')
        e = self.assertRaises(
            registry.RegistryAuthError, self.pull, 'busybox',
            credentials={'username': rf.USER, 'password': 'bad'})
        self.assertIn('answered 401: incorrect username or password',
                      str(e))
        # A token server on loopback needs no listing; elsewhere, one
        # over plain HTTP must be listed too.
        self.flags(insecure_registries=[reg.address], group='kata_image')
        self.assertEqual(image_id, self.pull('busybox').id)
        self.store.remove('busybox')
        self.useFixture(fixtures.MockPatch(
            'kata_zun.image.registry.transport.is_loopback',
            return_value=False))
        e = self.assertRaises(registry.RegistryError, self.pull, 'busybox')
        self.assertIn('refusing %s' % reg.issuer.realm, str(e))
        self.assertStoreClean(pulled_before=True)

    def test_token_denied(self):
        reg = self.start('token')
        self.push_busybox(reg)
        reg.issuer.anonymous_pull = False
        e = self.assertRaises(registry.RegistryAuthError, self.pull,
                              'busybox')
        self.assertIn('access to library/busybox denied', str(e))

    def test_digest_pinning(self):
        reg = self.start()
        image_id = self.push_busybox(reg)
        self.pull('busybox')
        digest = self.digest_message()
        self.store.remove('busybox')
        record = self.pull('busybox@' + digest)
        self.assertEqual(image_id, record.id)
        self.assertEqual([], record.repo_tags)
        # Found again locally, also with policy never.
        self.assertEqual(image_id, self.store.pull(
            'busybox@' + digest, policy='never').id)
        self.assertEqual(image_id, self.store.pull(
            '%s/library/busybox@%s' % (reg.address, digest),
            policy='never').id)
        # Unknown digest.
        self.assertRaises(exception.ImageNotFound, self.pull,
                          'busybox@sha256:' + 'e' * 64)
        # Content addressed: the same content in any repository.
        self.assertEqual(image_id, self.store.pull(
            'other@' + digest, policy='never').id)

    def test_multi_arch_index(self):
        reg = self.start()
        layout = os.path.join(self.tmp, 'multi')
        base_layer = busybox.rootfs()
        index_digest = rf.write_index_layout(layout, {
            'amd64': [base_layer, [Entry('arch', 'file', 'amd64')]],
            'arm64': [[Entry('arch', 'file', 'arm64')]]})
        reg.push('oci:%s:latest' % layout, 'library/multi:latest',
                 copy_all=True)
        record = self.pull('multi')
        self.assertEqual(index_digest, self.digest_message())
        with open(os.path.join(self.extract(record), 'arch')) as f:
            self.assertEqual('amd64', f.read())
        self.assertEqual('amd64', record.architecture)
        # Pinned by the digest of the index.
        self.assertEqual(record.id, self.store.pull(
            'multi@' + index_digest, policy='never').id)

    def test_wrong_platform(self):
        reg = self.start()
        layout = os.path.join(self.tmp, 'arm')
        rf.write_index_layout(layout, {
            'arm64': [[Entry('arch', 'file', 'arm64')]],
            's390x': [[Entry('arch', 'file', 's390x')]]})
        reg.push('oci:%s:latest' % layout, 'library/arm:latest',
                 copy_all=True)
        e = self.assertRaises(exception.ImageError, self.pull, 'arm')
        self.assertIn('has no linux/amd64 image (it has linux/arm64, '
                      'linux/s390x)', str(e))
        self.assertStoreClean()

    def test_missing_image(self):
        reg = self.start()
        self.push_busybox(reg)
        for ref in ('nothere', 'busybox:nosuchtag'):
            e = self.assertRaises(exception.ImageNotFound, self.pull, ref)
            self.assertIn('%s/library/' % reg.address, str(e))
        self.assertRaises(exception.ImageNotFound, self.pull, 'sha256:' +
                          'a' * 64)
        self.assertStoreClean()

    def test_concurrent_pulls_share_the_work(self):
        reg = self.start()
        image_id = self.push_busybox(reg)
        results, errors = [], []

        def pull():
            try:
                results.append(self.store.pull('busybox').id)
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=pull) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([], errors)
        self.assertEqual([image_id, image_id], results)
        self.assertEqual([image_id], [r.id for r in self.store.list()])
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))

    def test_green_threads(self):
        # zun-compute runs under eventlet: pulls in green threads.
        reg = self.start()
        image_id = self.push_busybox(reg)
        script = (
            'import eventlet\n'
            'eventlet.monkey_patch()\n'
            'import sys\n'
            'from kata_zun import conf\n'
            'from kata_zun.image import store\n'
            'conf.CONF([])\n'
            'for name in ("insecure_registries", "default_registry"):\n'
            '    conf.CONF.set_override(name, sys.argv[2], "kata_image")\n'
            's = store.ImageStore(sys.argv[1])\n'
            'pool = eventlet.GreenPool()\n'
            'ids = set(pool.imap(lambda _: s.pull("busybox").id, range(3)))\n'
            'print(" ".join(ids), len(s.list()))\n')
        out = subprocess.run([sys.executable, '-c', script, self.root,
                              reg.address], check=True, capture_output=True,
                             text=True, timeout=120).stdout
        self.assertEqual('%s 1\n' % image_id, out)

    # The fake registry.

    def test_policies(self):
        fake = self.fake()
        repo = '%s/app' % fake.address
        _d, first, _l = fake_image(fake, 'app', 'latest',
                                   [[Entry('v', 'file', '1')]])
        self.assertRaises(exception.ImageNotFound, self.pull, repo,
                          policy='never')
        self.assertEqual([], fake.requests)
        self.assertEqual(first, self.pull(repo).id)
        count = len(fake.requests)
        self.assertEqual(3, count)  # manifest, config, layer
        # ifnotpresent and never: no request.
        self.assertEqual(first, self.pull(repo).id)
        self.assertEqual(first, self.pull(repo, policy='never').id)
        self.assertEqual(count, len(fake.requests))
        # always: the manifest only, the image is unchanged.
        self.assertEqual(first, self.pull(repo, policy='always').id)
        self.assertEqual(count + 1, len(fake.requests))
        self.assertEqual('/v2/app/manifests/latest', fake.requests[-1][0])
        # The tag moves: always pulls the new image, ifnotpresent not.
        _d, second, _l = fake_image(fake, 'app', 'latest',
                                    [[Entry('v', 'file', '2')]])
        self.assertEqual(first, self.pull(repo).id)
        self.assertEqual(second, self.pull(repo, policy='always').id)
        self.assertEqual(second, self.store.get(repo).id)
        self.assertEqual([], self.store.get(first).repo_tags)
        self.assertRaises(exception.InvalidInput, self.pull, repo,
                          policy='sometimes')

    def test_corrupt_blob(self):
        fake = self.fake()
        _d, _i, layers = fake_image(
            fake, 'bad', 'latest', [[Entry('data', 'file', os.urandom(
                1 << 16))]])
        fake.behaviour[layers[0]] = 'corrupt'
        e = self.assertRaises(exception.ImageError, self.pull,
                              '%s/bad' % fake.address)
        self.assertIn('digest mismatch of blob %s' % layers[0], str(e))
        self.assertStoreClean()

    def test_transient_answers_are_retried(self):
        fake = self.fake()
        _d, image_id, layers = fake_image(
            fake, 'flaky', 'v1', [[Entry('data', 'file', b'x' * 4096)]])
        manifest = '/v2/flaky/manifests/v1'
        blob = '/v2/flaky/blobs/%s' % layers[0]
        fake.transient = {manifest: [503, (429, 1)], blob: [502]}
        started = time.monotonic()
        self.assertEqual(image_id, self.pull('%s/flaky:v1' % fake.address).id)
        paths = [p for p, _r in fake.requests]
        self.assertEqual(3, paths.count(manifest))
        self.assertEqual(2, paths.count(blob))
        # Back-off 0.5 s, then the registry's Retry-After of 1 s.
        self.assertGreaterEqual(time.monotonic() - started, 1.5)

    def test_retries_run_out_cleanly(self):
        fake = self.fake()
        fake_image(fake, 'down', 'v1', [[Entry('data', 'file', b'x')]])
        manifest = '/v2/down/manifests/v1'
        fake.transient = {manifest: [503] * 10}
        self.flags(registry_retries=1, group='kata_image')
        e = self.assertRaises(registry.RegistryError, self.pull,
                              '%s/down:v1' % fake.address)
        self.assertIn('HTTP 503', str(e))
        self.assertEqual(2, [p for p, _r in fake.requests].count(manifest))
        self.assertStoreClean()

    def test_nothing_listening_fails_at_once(self):
        self.flags(insecure_registries=['127.0.0.1:9'], group='kata_image')
        started = time.monotonic()
        e = self.assertRaises(registry.RegistryError, self.pull,
                              '127.0.0.1:9/nothing:v1')
        self.assertIn('Connection refused', str(e))
        self.assertLess(time.monotonic() - started, 5)
        self.assertStoreClean()

    # Proxies (the real tinyproxy).

    def test_http_registry_through_proxy_with_credentials(self):
        reg = self.start()
        image_id = self.push_busybox(reg)
        proxy = self.useFixture(rf.TinyProxy(credentials=('pu', 'pp')))
        self.flags(http_proxy='http://%s' % proxy.address,
                   no_proxy='', group='kata_image')
        e = self.assertRaises(registry.RegistryError, self.pull, 'busybox')
        self.assertIn('the proxy wants credentials (HTTP 407 (via proxy %s)'
                      % proxy.address, str(e))
        self.assertStoreClean()
        self.flags(http_proxy=proxy.url, group='kata_image')
        self.assertEqual(image_id, self.pull('busybox').id)
        served = proxy.requests()
        self.assertTrue(any(r.startswith('GET http://%s/v2/library/busybox/'
                                         'manifests/latest' % reg.address)
                            for r in served), served)
        self.assertTrue(any('/blobs/sha256:' in r for r in served), served)

    def test_tls_registry_through_proxy_tunnel(self):
        reg = self.start('tls')
        image_id = self.push_busybox(reg)
        self.flags(ca_file=reg.ca_file, group='kata_image')
        proxy = self.useFixture(rf.TinyProxy())
        # From the environment, like Docker and curl; NO_PROXY bypasses.
        self.useFixture(fixtures.EnvironmentVariable('HTTPS_PROXY',
                                                     proxy.url))
        self.useFixture(fixtures.EnvironmentVariable('NO_PROXY',
                                                     'example.invalid'))
        self.assertEqual(image_id, self.pull('busybox').id)
        served = proxy.requests()
        self.assertTrue(any(r.startswith('CONNECT %s ' % reg.address)
                            for r in served), served)
        self.assertFalse([r for r in served if r.startswith('GET')], served)
        # The proxy refuses the tunnel without credentials: said at once.
        self.useFixture(fixtures.EnvironmentVariable(
            'HTTPS_PROXY', 'http://' + self.useFixture(rf.TinyProxy(
                credentials=('pu', 'pp'))).address))
        started = time.monotonic()
        e = self.assertRaises(registry.RegistryError, self.pull, 'busybox',
                              policy='always')
        self.assertIn('Tunnel connection failed: 407', str(e))
        self.assertLess(time.monotonic() - started, 5)
        self.useFixture(fixtures.EnvironmentVariable('HTTPS_PROXY',
                                                     proxy.url))

        # A registry listed in NO_PROXY is reached directly.
        self.useFixture(fixtures.EnvironmentVariable('NO_PROXY',
                                                     '127.0.0.1'))
        before = len(proxy.requests())
        self.assertEqual(image_id, self.pull('busybox', policy='always').id)
        self.assertEqual(before, len(proxy.requests()))

    def test_truncated_blob(self):
        fake = self.fake()
        _d, _i, layers = fake_image(
            fake, 'cut', 'latest', [[Entry('data', 'file', os.urandom(
                1 << 16))]])
        fake.behaviour[layers[0]] = 'cut'
        e = self.assertRaises(exception.ImageError, self.pull,
                              '%s/cut' % fake.address)
        self.assertIn('truncated blob %s' % layers[0], str(e))
        self.assertEqual(registry.client.BLOB_ATTEMPTS, len(
            [p for p, _r in fake.requests if p.endswith(layers[0])]))
        self.assertStoreClean()

    def test_resume_with_range(self):
        fake = self.fake()
        data = os.urandom(1 << 17)
        _d, image_id, layers = fake_image(
            fake, 'flaky', 'latest', [[Entry('data', 'file', data)]])
        fake.behaviour[layers[0]] = 'cut-once'
        record = self.pull('%s/flaky' % fake.address)
        self.assertEqual(image_id, record.id)
        ranges = [r for p, r in fake.requests if p.endswith(layers[0])]
        self.assertEqual(2, len(ranges))
        self.assertIsNone(ranges[0])
        self.assertRegex(ranges[1], r'^bytes=[1-9][0-9]*-$')
        with open(os.path.join(self.extract(record), 'data'), 'rb') as f:
            self.assertEqual(data, f.read())

    def test_restart_without_range(self):
        fake = self.fake()
        _d, image_id, layers = fake_image(
            fake, 'norange', 'latest', [[Entry('data', 'file', os.urandom(
                1 << 17))]])
        fake.behaviour[layers[0]] = 'cut-once-norange'
        self.assertEqual(image_id,
                         self.pull('%s/norange' % fake.address).id)
        self.assertTrue(any('ignored the Range request' in m
                            for m in self.messages), self.messages)

    def test_crash_mid_pull(self):
        fake = self.fake()
        _d, image_id, layers = fake_image(
            fake, 'app', 'latest', [[Entry('data', 'file', os.urandom(
                1 << 18))]])
        fake.behaviour[layers[0]] = 'stall-once'
        script = (
            'import sys\n'
            'from kata_zun import conf\n'
            'from kata_zun.image import store\n'
            'conf.CONF([])\n'
            'conf.CONF.set_override("insecure_registries", [sys.argv[2]], '
            '"kata_image")\n'
            'store.ImageStore(sys.argv[1]).pull(sys.argv[2] + "/app")\n')
        child = subprocess.Popen([sys.executable, '-c', script, self.root,
                                  fake.address])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        partial = os.path.join(self.root, 'tmp', '*', 'layout', 'blobs',
                               'sha256', layers[0][7:])
        deadline = time.monotonic() + 60
        while not any(os.path.getsize(p) for p in glob.glob(partial)):
            self.assertLess(time.monotonic(), deadline)
            self.assertIsNone(child.poll())
            time.sleep(0.05)
        child.kill()
        child.wait()
        # A later pull does not trip over what the crash left.
        self.store = store.ImageStore(self.root)
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))
        self.assertEqual(image_id, self.pull('%s/app' % fake.address).id)
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))

    def test_manifest_digest_mismatch(self):
        fake = self.fake()
        digest, _i, _l = fake_image(fake, 'app', 'latest',
                                    [[Entry('a', 'file', 'a')]])
        other = 'sha256:' + 'c' * 64
        fake.manifests[('app', other)] = fake.manifests[('app', digest)]
        e = self.assertRaises(exception.ImageError, self.pull,
                              '%s/app@%s' % (fake.address, other))
        self.assertIn('digest mismatch of manifest %s: got %s'
                      % (other, digest), str(e))
        self.assertStoreClean()

    def test_limits_and_media_types(self):
        fake = self.fake()
        fake_image(fake, 'two', 'latest', [[Entry('a', 'file', 'a')],
                                           [Entry('b', 'file', 'b')]])
        fake_image(fake, 'zstd', 'latest', [[Entry('a', 'file', 'a')]],
                   layer_type='application/vnd.oci.image.layer.v1.tar+zstd')
        fake.add_image('v1', 'latest', {'schemaVersion': 1}, 'application/'
                       'vnd.docker.distribution.manifest.v1+prettyjws', {})
        e = self.assertRaises(exception.ImageError, self.pull,
                              '%s/v1' % fake.address)
        self.assertIn("unsupported media type 'application/vnd.docker."
                      "distribution.manifest.v1+prettyjws'", str(e))
        self.flags(max_layers=1, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded, self.pull,
                          '%s/two' % fake.address)
        e = self.assertRaises(exception.ImageError, self.pull,
                              '%s/zstd' % fake.address)
        self.assertIn('unsupported compression zstd', str(e))
        # No blob was downloaded.
        self.assertEqual([], [p for p, _r in fake.requests
                              if '/blobs/' in p])
        self.assertStoreClean()


class PullRunTestCase(base.KataZunFunctionalTest):
    """The CLI pulls and runs images in VMs."""

    def test_run_pulls_and_pull_with_credentials(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        public = self.useFixture(rf.Registry('http'))
        private = self.useFixture(rf.Registry('basic'))
        with open(self.conf_file, 'a') as f:
            f.write('[kata_image]\ndefault_registry = %s\n'
                    'insecure_registries = %s,%s\n' % (
                        public.address, public.address, private.address))
        path = os.path.join(tmp, 'busybox.tar')
        busybox.write_oci_archive(path, extra_files={'etc/motd': MOTD})
        public.push('oci-archive:' + path, 'library/busybox:latest')
        busybox.write_oci_archive(path, extra_files={'etc/motd': b'private'})
        private.push('oci-archive:' + path, 'team/app:1')

        self.kz('run', '--rm', '--pull', 'never', 'busybox', 'true',
                check=125)
        r = self.kz('run', '--rm', 'busybox', 'cat', '/etc/motd', check=0)
        # (With debug = True, the CLI also logs the mkfs run to stdout.)
        self.assertTrue(r.out.endswith(MOTD), r)
        self.assertIn(b'Pulling %s/library/busybox:latest'
                      % public.address.encode(), r.err)
        r = self.kz('run', '--rm', 'busybox', 'true', check=0)
        self.assertNotIn(b'Pulling', r.err)
        self.assertIn('%s/library/busybox' % public.address,
                      self.kz('images', check=0).text)

        app = '%s/team/app:1' % private.address
        r = self.kz('pull', app, check=1)
        self.assertIn(b'needs credentials', r.err)
        r = self.kz('pull', '--username', rf.USER, '--password-stdin', app,
                    input=rf.PASSWORD.encode() + b'\n', check=0)
        self.assertRegex(r.text.splitlines()[-1], r'^sha256:[0-9a-f]{64}$')
        r = self.kz('run', '--rm', app, 'cat', '/etc/motd', check=0)
        self.assertTrue(r.out.endswith(b'private'), r)


class LoginTestCase(base.KataZunFunctionalTest):
    """kata-zun login/logout against the real registry on 127.0.0.1,
    without any insecure_registries entry (loopback: plain HTTP).
    """

    def push_private(self, reg):
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, 'busybox.tar')
        image_id = busybox.write_oci_archive(
            path, extra_files={'etc/motd': b'private'})
        reg.push('oci-archive:' + path, 'team/app:1')
        return image_id

    def auth_file(self):
        return os.path.join(self.state_path, 'images', 'registry',
                            'auth.json')

    def check_login_pull_logout(self, reg):
        image_id = self.push_private(reg)
        app = '%s/team/app:1' % reg.address
        r = self.kz('login', '-u', rf.USER, '--password-stdin', reg.address,
                    input=b'wrong\n', check=1)
        self.assertIn(b'authentication failed', r.err)
        self.assertNotIn(b'Login Succeeded', r.out)
        self.assertFalse(os.path.exists(self.auth_file()))
        r = self.kz('pull', app, check=1)

        r = self.kz('login', '-u', rf.USER, '--password-stdin',
                    'http://%s/' % reg.address,
                    input=rf.PASSWORD.encode() + b'\n', check=0)
        self.assertEqual('Login Succeeded\n', r.text)
        self.assertEqual(0o600, os.stat(self.auth_file()).st_mode & 0o777)
        with open(self.auth_file()) as f:
            self.assertEqual({reg.address: {'username': rf.USER,
                                            'password': rf.PASSWORD}},
                             json.load(f))
        # Later pulls use it.
        r = self.kz('pull', app, check=0)
        self.assertEqual(image_id, r.text.splitlines()[-1])

        r = self.kz('logout', reg.address, check=0)
        self.assertEqual('Removing login credentials for %s\n'
                         % reg.address, r.text)
        r = self.kz('logout', reg.address, check=0)
        self.assertEqual('Not logged in to %s\n' % reg.address, r.text)
        self.kz('rmi', app, check=0)
        r = self.kz('pull', app, check=1)
        self.assertIn(b'Registry %s' % reg.address.encode(), r.err)

    def test_basic(self):
        self.check_login_pull_logout(self.useFixture(rf.Registry('basic')))

    def test_token(self):
        reg = self.useFixture(rf.Registry('token'))
        reg.issuer.anonymous_pull = False
        with open(self.conf_file, 'a') as f:
            f.write('[kata_image]\ntoken_realm_hosts = %s\n'
                    % reg.issuer.address)
        self.check_login_pull_logout(reg)
        # docker login asks the token server for no scope.
        logins = [r for r in reg.issuer.requests
                  if r['auth'] and 'scope' not in r['query']]
        self.assertTrue(logins, reg.issuer.requests)

    def test_usage_errors(self):
        r = self.kz('login', '--password-stdin', '127.0.0.1:9',
                    input=b'x\n', check=1)
        self.assertIn(b'Must provide --username with --password-stdin',
                      r.err)
        r = self.kz('login', '-u', 'a', '127.0.0.1:9', check=1)
        self.assertIn(b'non TTY device', r.err)
        r = self.kz('login', '-u', 'a', '--password-stdin', 'ftp://x',
                    input=b'x\n', check=1)
        self.assertIn(b'invalid registry', r.err)
        r = self.kz('login', '-u', 'a', '-p', 'b', '127.0.0.1:9', check=1)
        self.assertIn(b'Using --password via the CLI is insecure', r.err)
        self.assertIn(b'Connection refused', r.err)
        self.assertFalse(os.path.exists(self.auth_file()))
