"""The driver's commit and Glance hooks, with a mocked runtime."""

import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base
from zun.common import exception as zun_exc

from kata_zun import conf
from kata_zun import exception


class DriverImageTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        self.mod = driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        tpool = mock.patch.object(driver.tpool, 'execute',
                                  side_effect=lambda f, *a, **k: f(*a, **k))
        tpool.start()
        self.addCleanup(tpool.stop)

    def test_commit(self):
        c = types.SimpleNamespace(container_id='ab' * 16, uuid='u')
        self.rt.commit.return_value = mock.Mock(id='sha256:' + 'c' * 64)
        self.rt.images.tag.return_value = mock.Mock(
            id='sha256:' + 'c' * 64, repo_tags=['repo:v1'],
            config={'Env': ['PASSWORD=x']})
        from kata_zun.driver import images
        with mock.patch.object(images.LOG, 'warning') as warning:
            self.assertEqual('sha256:' + 'c' * 64,
                             self.driver.commit(None, c, 'repo', 'v1'))
        self.assertIn('environment', warning.call_args[0][0])
        # Committed untagged, then named (in the project, see
        # test_driver_tenants).
        self.rt.commit.assert_called_once_with('ab' * 16)
        self.rt.images.tag.assert_called_once_with('sha256:' + 'c' * 64,
                                                   'repo:v1')
        self.driver.commit(None, c, 'repo', 'None')
        self.rt.images.tag.assert_called_with('sha256:' + 'c' * 64, 'repo')
        self.rt.commit.side_effect = exception.Conflict(reason='stopped')
        self.assertRaises(zun_exc.Conflict, self.driver.commit, None, c,
                          'repo', 'v1')

    def test_get_image_is_a_stream_not_a_generator(self):
        stream = self.driver.get_image('repo:v1')
        self.assertFalse(isinstance(stream, types.GeneratorType))
        self.assertTrue(hasattr(stream, 'read'))
        self.rt.images.get.side_effect = exception.ImageNotFound(ref='x')
        self.assertRaises(zun_exc.ImageNotFound, self.driver.get_image, 'x')

    def test_upload_goes_through_zun_glance_driver(self):
        glance = mock.Mock()
        image = mock.Mock(id='gid')
        self.driver.upload_image_data(None, image, 'v1', b'data', glance)
        glance.update_image.assert_called_once_with(None, 'gid', tag='v1')
        glance.upload_image_data.assert_called_once_with(None, 'gid',
                                                         b'data')
        glance.upload_image_data.side_effect = RuntimeError('boom')
        self.assertRaises(zun_exc.ZunException,
                          self.driver.upload_image_data, None, image, 'v1',
                          b'data', glance)
        self.driver.create_image(None, 'name', glance)
        glance.create_image.assert_called_once_with(None, 'name')
        self.driver.delete_committed_image(None, 'gid', glance)
        glance.delete_committed_image.assert_called_once_with(None, 'gid')

    def test_pull_from_glance_loads_and_read_tar_image_names(self):
        record = mock.Mock(id='sha256:' + 'd' * 64,
                           repo_tags=['myimg:v1'])
        self.rt.images.load_archive.return_value = [record]
        self.rt.images.get.return_value = record
        with mock.patch('zun.image.glance.driver.GlanceDriver') as gd:
            gd.return_value.pull_image.return_value = (
                {'image': 'myimg', 'tags': ['v1'], 'path': '/x.tar'}, False)
            image, loaded = self.driver.pull_image(
                None, 'myimg', 'v1', 'always', 'glance')
        self.assertTrue(loaded)
        self.rt.images.load_archive.assert_called_once_with('/x.tar')
        self.assertEqual('glance', image['driver'])
        self.driver.read_tar_image(image)
        self.assertEqual(('myimg', 'v1', record.id),
                         (image['repo'], image['tag'], image['id']))
        self.assertIn(image['tag'], image['tags'])

    def test_read_tar_image_prefers_the_requested_name(self):
        record = mock.Mock(id='sha256:' + 'd' * 64,
                           repo_tags=['other:1', 'myimg:v2', 'myimg:v1'])
        self.rt.images.get.return_value = record
        for repo, tag, want in (('myimg', 'v1', ('myimg', 'v1')),
                                ('myimg', 'v9', ('myimg', 'v2')),
                                ('nope', 'v1', ('other', '1'))):
            image = {'repo': repo, 'tag': tag, 'id': record.id}
            self.driver.read_tar_image(image)
            self.assertEqual(want, (image['repo'], image['tag']))
