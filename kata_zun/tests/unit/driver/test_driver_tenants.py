"""Zun projects and the image store: names stay with their project.

A real :class:`ImageStore` behind a driver whose runtime is mocked.
"""

import json
import os
import socket
import stat
import tarfile
import threading
import time
import types
from unittest import mock

import eventlet
import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base
from zun.common import exception as zun_exc

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import registry
from kata_zun.image import store

CONF = conf.CONF


def context(project):
    return types.SimpleNamespace(project_id=project)


class DriverTenantTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.tmp = self.useFixture(fixtures.TempDir()).path
        # A pull that reaches for a registry fails at once: nothing
        # listens there.
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        self.flags(default_registry='127.0.0.1:%d' % port,
                   insecure_registries=['127.0.0.1:%d' % port],
                   registry_retries=0, group='kata_image')
        from kata_zun import driver
        self.mod = driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        self.rt.images = store.ImageStore(os.path.join(self.tmp, 'store'))
        self.rt.image_users.return_value = []
        tpool = mock.patch.object(driver.tpool, 'execute',
                                  side_effect=lambda f, *a, **k: f(*a, **k))
        tpool.start()
        self.addCleanup(tpool.stop)
        self.count = 0

    def archive(self, repo_tags, content):
        self.count += 1
        path = os.path.join(self.tmp, 'image%d.tar' % self.count)
        busybox.write_docker_archive(
            path, repo_tags=repo_tags, busybox=None,
            layers=[[('etc/motd', 'file', content)]])
        return path

    def glance_pull(self, project, path, repo='shared', tag='latest'):
        with mock.patch('zun.image.glance.driver.GlanceDriver') as gd:
            gd.return_value.pull_image.return_value = (
                {'image': repo, 'tags': [tag], 'path': path}, False)
            image, _loaded = self.driver.pull_image(
                context(project), repo, tag, 'ifnotpresent', 'glance')
        return image['id']

    def test_a_projects_name_never_satisfies_another_project(self):
        a_id = self.glance_pull('A', self.archive(['shared:latest'], b'A'))
        image, _ = self.driver.pull_image(context('A'), 'shared', 'latest',
                                          'never')
        self.assertEqual(a_id, image['id'])
        image, _ = self.driver.pull_image(context('A'), 'shared', 'latest',
                                          'ifnotpresent')
        self.assertEqual(a_id, image['id'])
        # B asks for the same name: A's image is not B's.
        self.assertRaises(zun_exc.ImageNotFound, self.driver.pull_image,
                          context('B'), 'shared', 'latest', 'never')
        e = self.assertRaises(zun_exc.ZunException, self.driver.pull_image,
                              context('B'), 'shared', 'latest',
                              'ifnotpresent')
        self.assertIn('127.0.0.1', str(e))
        self.assertEqual([], self.driver.search_image(
            context('B'), 'shared', 'latest', 'docker', True))
        # Nor is it the CLI's.
        self.assertRaises(zun_exc.ImageNotFound, self.driver.pull_image,
                          None, 'shared', 'latest', 'never')
        # B loads its own image of that name: each project sees its own.
        b_id = self.glance_pull('B', self.archive(['shared:latest'], b'B'))
        self.assertNotEqual(a_id, b_id)
        for project, want in (('A', a_id), ('B', b_id)):
            image, _ = self.driver.pull_image(context(project), 'shared',
                                              'latest', 'never')
            self.assertEqual(want, image['id'])
        # B deleting A's image by id leaves it to A.
        self.driver.delete_image(context('B'), a_id)
        image, _ = self.driver.pull_image(context('A'), 'shared', 'latest',
                                          'never')
        self.assertEqual(a_id, image['id'])
        # A deleting it removes it.
        self.driver.delete_image(context('A'), a_id)
        self.assertNotIn(a_id, [r.id for r in self.rt.images.list()])

    def test_operator_names_serve_every_project(self):
        # `kata-zun load` by the host's operator: every project finds it,
        # none can take it away from the others.
        op = self.rt.images.load_archive(
            self.archive(['base:1'], b'op'))[0]
        for project in ('A', 'B'):
            image, _ = self.driver.pull_image(context(project), 'base', '1',
                                              'ifnotpresent')
            self.assertEqual(op.id, image['id'])
        self.driver.delete_image(context('B'), 'base:1')
        image, _ = self.driver.pull_image(context('A'), 'base', '1', 'never')
        self.assertEqual(op.id, image['id'])
        # A project's own name of that name wins for that project only.
        a_id = self.glance_pull('A', self.archive(['base:1'], b'A'),
                                repo='base', tag='1')
        image, _ = self.driver.pull_image(context('A'), 'base', '1', 'never')
        self.assertEqual(a_id, image['id'])
        image, _ = self.driver.pull_image(context('B'), 'base', '1', 'never')
        self.assertEqual(op.id, image['id'])
        self.assertEqual(op.id, self.rt.images.get('base:1').id)

    def test_operator_deletes_by_id(self):
        a_id = self.glance_pull('A', self.archive(['shared:latest'], b'A'))
        # The CLI has no name of it; by id, the host's operator deletes
        # it, with the project's names.
        self.assertRaises(exception.ImageNotFound, self.rt.images.remove,
                          'shared:latest')
        self.assertTrue(self.rt.images.remove(a_id))
        self.assertRaises(zun_exc.ImageNotFound, self.driver.pull_image,
                          context('A'), 'shared', 'latest', 'never')

    def test_commit_is_named_in_its_project(self):
        path = self.archive([], b'committed')

        def commit(container_id, repo_tag=None):
            self.assertIsNone(repo_tag)
            return self.rt.images.load_archive(path)[0]

        self.rt.commit.side_effect = commit
        c = types.SimpleNamespace(container_id='ab' * 16, uuid='u')
        image_id = self.driver.commit(context('A'), c, 'mine', 'v1')
        found = self.driver.search_image(context('A'), 'mine', 'v1',
                                         'docker', True)
        self.assertEqual([('mine', ['v1'], image_id)],
                         [(f['name'], f['tags'], f['id']) for f in found])
        self.assertEqual([], self.driver.search_image(
            context('B'), 'mine', 'v1', 'docker', True))
        self.assertRaises(zun_exc.ImageNotFound, self.driver.pull_image,
                          context('B'), 'mine', 'v1', 'never')
        # zun uploads the commit to Glance by name, without the project,
        # from the same green thread: the archive names it.
        stream = self.driver.get_image('mine:v1')
        out = os.path.join(self.tmp, 'upload.tar')
        with open(out, 'wb') as f:
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    break
                f.write(chunk)
        with tarfile.open(out) as tar:
            manifest = json.load(tar.extractfile('manifest.json'))
        self.assertEqual(['mine:v1'], manifest[0]['RepoTags'])
        # Another green thread (another request) cannot get it by name.
        self.assertRaises(zun_exc.ImageNotFound, eventlet.spawn(
            self.driver.get_image, 'mine:v1').wait)

    def test_inspect_after_pull_is_the_projects_image(self):
        # zun's image pull API: pull_image, then inspect_image by name
        # without the project, in the same green thread.
        a_id = self.glance_pull('A', self.archive(['shared:latest'], b'A'))

        def pull_and_inspect(project):
            self.driver.pull_image(context(project), 'shared', 'latest',
                                   'never')
            return self.driver.inspect_image('shared:latest')

        info = eventlet.spawn(pull_and_inspect, 'A').wait()
        self.assertEqual((a_id, 'shared:latest'),
                         (info['Id'], info['RepoTags'][0]))
        self.assertRaises(zun_exc.ImageNotFound,
                          eventlet.spawn(pull_and_inspect, 'B').wait)
        self.assertRaises(zun_exc.ImageNotFound, eventlet.spawn(
            self.driver.inspect_image, 'shared:latest').wait)

    def test_store_is_private(self):
        self.glance_pull('A', self.archive(['shared:latest'], b'A'))
        root = self.rt.images.root
        for top, dirs, files in os.walk(root):
            self.assertEqual(0o700, stat.S_IMODE(os.stat(top).st_mode), top)
            for name in files:
                path = os.path.join(top, name)
                self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode),
                                 path)

    def test_pulls_leave_most_of_the_thread_pool(self):
        self.flags(max_concurrent_pulls=2, group='kata_image')
        from kata_zun.driver import images
        images._IMAGE_SLOTS = None
        self.addCleanup(setattr, images, '_IMAGE_SLOTS', None)
        lock = threading.Lock()
        running, peak = [0], [0]
        record = mock.Mock(id='sha256:' + 'e' * 64, repo_tags=[])

        def pull(ref, **kwargs):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.3)
            with lock:
                running[0] -= 1
            return record

        fake_store = mock.Mock()
        fake_store.pull.side_effect = pull
        self.rt.images = mock.Mock()
        self.rt.images.scoped.return_value = fake_store
        mock.patch.stopall()    # the real thread pool this time
        pool = eventlet.GreenPool()
        results = list(pool.imap(
            lambda i: self.driver.pull_image(context('A'), 'img%d' % i,
                                             'latest', 'always'),
            range(6)))
        self.assertEqual(6, len(results))
        self.assertEqual(6, fake_store.pull.call_count)
        self.assertLessEqual(peak[0], 2)


class CredentialsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, 'creds.json')
        with open(path, 'w') as f:
            f.write('{"private.example:5000": {"username": "op", '
                    '"password": "host-secret"}}')
        self.flags(credentials_file=path, group='kata_image')

    def test_host_credentials_only_for_listed_registries(self):
        reg = 'private.example:5000'
        self.assertIsNotNone(registry.Client(reg, 'r')._basic)
        self.assertIsNone(registry.Client(reg, 'r',
                                          host_credentials=False)._basic)
        self.flags(shared_credentials_registries=[reg], group='kata_image')
        self.assertIsNotNone(registry.Client(
            reg, 'r', host_credentials=False)._basic)
        # What the project gives is always used.
        self.flags(shared_credentials_registries=[], group='kata_image')
        self.assertIsNotNone(registry.Client(
            reg, 'r', {'username': 'u', 'password': 'p'},
            host_credentials=False)._basic)
