"""Named volumes on disk, and turning requests into VM devices."""

import os

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.volume import devices
from kata_zun.volume import spec
from kata_zun.volume import store


class StoreTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'volumes')
        self.store = store.VolumeStore(self.root)

    def test_parse_size(self):
        self.assertEqual(64 * 1024 ** 2, store.parse_size('64M'))
        self.assertEqual(10 * 1024 ** 3, store.parse_size('10GiB'))
        self.assertEqual(2 ** 30, store.parse_size(str(2 ** 30)))
        for bad in ('1M', '17T', '-5G', '1.5G', 'lots', '9' * 40, ''):
            self.assertRaises(exception.InvalidInput, store.parse_size,
                              bad)

    def test_create_is_sparse_and_blank(self):
        vol = self.store.create('v1', 64 * 1024 ** 2)
        st = os.stat(vol['disk'])
        self.assertEqual(64 * 1024 ** 2, st.st_size)
        self.assertLess(st.st_blocks * 512, 1024 * 1024)
        self.assertEqual(0o600, st.st_mode & 0o777)
        with open(vol['disk'], 'rb') as f:
            self.assertEqual(b'\0' * 4096, f.read(4096))
        self.assertRaises(exception.Conflict, self.store.create, 'v1')
        self.assertEqual(['v1'], [v['name'] for v in self.store.list()])

    def test_unfinished_create_is_not_listed_and_can_be_redone(self):
        os.makedirs(os.path.join(self.root, 'half'))
        self.assertEqual([], self.store.list())
        self.assertRaises(exception.NotFound, self.store.get, 'half')
        self.store.create('half', 16 * 1024 ** 2)
        self.assertEqual(['half'], [v['name'] for v in self.store.list()])

    def test_hostile_names_never_reach_the_file_system(self):
        for name in ('../etc', '/abs', '.hidden', 'a/b', '', 'x' * 65,
                     'nul\0'):
            self.assertRaises(exception.InvalidInput, self.store.create,
                              name)
        self.assertFalse(os.path.exists(os.path.join(
            os.path.dirname(self.root), 'etc')))

    def test_remove_refuses_a_volume_in_use(self):
        vol = self.store.create('used', 16 * 1024 ** 2)
        self.assertRaises(exception.Conflict, self.store.remove, 'used',
                          lambda name: ['c' * 64])
        self.assertTrue(os.path.exists(vol['disk']))
        self.store.remove('used', lambda name: [])
        self.assertFalse(os.path.exists(os.path.dirname(vol['disk'])))
        self.assertRaises(exception.NotFound, self.store.remove, 'used',
                          lambda name: [])


class Record(object):
    def __init__(self, cid, volumes):
        self.id = cid
        self.config = {'volumes': volumes}


class DevicesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.store = store.VolumeStore(os.path.join(self.tmp, 'volumes'))
        self.image = os.path.join(self.tmp, 'a.img')
        with open(self.image, 'wb') as f:
            f.truncate(1 << 20)

    def test_resolve_disks_and_agent_specs(self):
        link = os.path.join(self.tmp, 'link.img')
        os.symlink(self.image, link)
        entries = devices.resolve(
            [spec.parse_v('named:/data'),
             spec.parse_mount('type=block,source=%s,target=/b,readonly'
                              % link)], self.store)
        self.assertEqual(self.store.get('named')['disk'], entries[0]['disk'])
        # The link is resolved at create: the record names the file.
        self.assertEqual(self.image, entries[1]['disk'])
        self.assertEqual(
            [{'type': 'block', 'serial': 'kz-vol0', 'target': '/data',
              'readonly': False},
             {'type': 'block', 'serial': 'kz-vol1', 'target': '/b',
              'readonly': True}], devices.agent_specs(entries))
        self.assertEqual(
            (hv_base.Disk(entries[0]['disk'], 'kz-vol0', False),
             hv_base.Disk(self.image, 'kz-vol1', True)),
            devices.disks(entries))
        self.assertEqual((), devices.disks(None))

    def test_unservable_sources_fail_clearly(self):
        for text, message in (
                ('type=block,source=/nonexistent.img,target=/d',
                 'No such file'),
                ('type=block,source=%s,target=/d' % self.tmp,
                 'not a file or a block device'),
                ('type=bind,source=/dev/null,target=/d',
                 'not a directory or a regular file'),
                ('type=bind,source=/nonexistent,target=/d',
                 'No such file')):
            exc = self.assertRaises(exception.InvalidInput, devices.resolve,
                                    [spec.parse_mount(text)], self.store)
            self.assertIn(message, str(exc))

    def test_bind_mounts_become_shared_directories(self):
        link = os.path.join(self.tmp, 'dirlink')
        os.symlink(self.tmp, link)
        entries = devices.resolve(
            [spec.parse_v('%s:/a:ro' % link), spec.parse_v('v:/v'),
             spec.parse_mount('type=bind,src=%s,dst=/b' % self.tmp)],
            self.store)
        self.assertEqual(
            (hv_base.SharedDir(self.tmp, 'kz-fs0', True),
             hv_base.SharedDir(self.tmp, 'kz-fs1', False)),
            devices.shared_dirs(entries))
        self.assertEqual(1, len(devices.disks(entries)))
        self.assertEqual(
            [{'type': 'virtiofs', 'tag': 'kz-fs0', 'target': '/a',
              'readonly': True},
             {'type': 'block', 'serial': 'kz-vol0', 'target': '/v',
              'readonly': False},
             {'type': 'virtiofs', 'tag': 'kz-fs1', 'target': '/b',
              'readonly': False}], devices.agent_specs(entries))

    def test_bind_mount_of_a_file_shares_that_file_only(self):
        link = os.path.join(self.tmp, 'conf-link')
        os.symlink(self.image, link)
        entries = devices.resolve(
            [spec.parse_v('%s:/etc/app.conf:ro' % link),
             spec.parse_mount('type=bind,source=%s,target=/b' % self.image)],
            self.store)
        # The record names the file itself (the link resolved at create).
        self.assertEqual([self.image, self.image],
                         [e['file'] for e in entries])
        self.assertFalse(any('dir' in e for e in entries))
        self.assertEqual(
            (hv_base.SharedDir(self.image, 'kz-fs0', True, 'file'),
             hv_base.SharedDir(self.image, 'kz-fs1', False, 'file')),
            devices.shared_dirs(entries))
        self.assertEqual((), devices.disks(entries))
        # The guest learns the file's name in the export, never the
        # host's name for it.
        self.assertEqual(
            [{'type': 'virtiofs', 'tag': 'kz-fs0', 'target': '/etc/app.conf',
              'readonly': True, 'file': 'file'},
             {'type': 'virtiofs', 'tag': 'kz-fs1', 'target': '/b',
              'readonly': False, 'file': 'file'}],
            devices.agent_specs(entries))
        self.assertNotIn('a.img', repr(devices.agent_specs(entries)))

    def test_users(self):
        records = [Record('a', [{'type': 'volume', 'source': 'v'}]),
                   Record('b', [{'type': 'block', 'source': '/v'}]),
                   Record('c', None)]
        self.assertEqual(['a'], devices.users(records, 'v'))
        self.assertEqual([], devices.users(records, 'w'))
