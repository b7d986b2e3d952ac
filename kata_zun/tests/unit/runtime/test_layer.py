import os
import subprocess
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import layer

MiB = 1024 * 1024


class ParseSizeTestCase(base.BaseTestCase):
    """Docker's sizes (units.RAMInBytes): binary units, bytes when bare."""

    def test_sizes_as_docker_reads_them(self):
        for text, mb in (('512M', 512), ('512m', 512), ('5G', 5120),
                         ('5g', 5120), ('1.5G', 1536), ('1GiB', 1024),
                         ('1gb', 1024), ('1 G', 1024), ('2t', 2 * 1024 ** 2),
                         ('1P', 1024 ** 3), ('1024k', 1), ('64MB', 64),
                         (' 64m ', 64),
                         # bytes, rounded up to a whole MiB
                         ('1048576', 1), ('1048577', 2), ('100', 1),
                         ('0', 0), ('0.5m', 1), ('1.0000001G', 1025)):
            self.assertEqual(mb, layer.parse_size(text), text)

    def test_anything_else_is_refused_with_a_bounded_message(self):
        for bad in ('', ' ', 'G', '5X', '-1G', '+1G', '5GG', '1e9',
                    '0x10', '1.2.3G', '5 GB B', '5  G', '\u0661\u0662G',
                    '5G\n1', '9' * 33, 'size=5G', None, 5, 5.0, b'5G',
                    '1' * 100000):
            exc = self.assertRaises(exception.InvalidInput,
                                    layer.parse_size, bad)
            self.assertIn('invalid size', str(exc))
            self.assertLess(len(str(exc)), 300)

    def test_huge_numbers_are_exact_not_floats(self):
        self.assertEqual(9 * 10 ** 30 * 1024 ** 3,
                         layer.parse_size('9' + '0' * 30 + 'P'))


class StorageOptsTestCase(base.BaseTestCase):

    def test_size(self):
        self.assertEqual({'size_mb': None}, layer.parse_storage_opts([]))
        self.assertEqual({'size_mb': None}, layer.parse_storage_opts(None))
        self.assertEqual({'size_mb': 5120},
                         layer.parse_storage_opts(['size=5G']))
        self.assertEqual({'size_mb': 64},
                         layer.parse_storage_opts(['SIZE=64m']))
        # The last one wins, as with Docker.
        self.assertEqual({'size_mb': 2048}, layer.parse_storage_opts(
            ['size=1G', 'size=2G']))

    def test_other_options_are_refused_by_name(self):
        for bad, want in (('dm.basesize=5G', "unknown storage option "
                                             "'dm.basesize'"),
                          ('xfs.quota=on', 'unknown storage option'),
                          ('size', 'invalid storage option'),
                          ('=5G', 'invalid storage option'),
                          ('size=', 'invalid size'),
                          ('size=big', 'invalid size'),
                          ('k' * 100000 + '=1', 'unknown storage option')):
            exc = self.assertRaises(exception.InvalidInput,
                                    layer.parse_storage_opts, [bad])
            self.assertIn(want, str(exc))
            self.assertLess(len(str(exc)), 300)


class CheckSizeTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.dir = self.useFixture(fixtures.TempDir()).path

    def _statvfs(self, total_mb, free_mb=1):
        return mock.patch('os.statvfs', return_value=mock.Mock(
            f_frsize=4096, f_blocks=total_mb * 256, f_bavail=free_mb * 256))

    def test_none_is_the_configured_default(self):
        self.cfg.config(writable_layer_mb=300, group='kata')
        self.assertEqual(300, layer.check_size(None, self.dir))

    def test_bounds(self):
        with self._statvfs(1000) as statvfs:
            self.assertEqual(layer.MIN_MB,
                             layer.check_size(layer.MIN_MB, self.dir))
            self.assertEqual(1000, layer.check_size(1000, self.dir))
            statvfs.assert_called_with(self.dir)
            exc = self.assertRaises(exception.InvalidInput,
                                    layer.check_size, 1001, self.dir)
            self.assertIn('larger than the 1000 MiB filesystem', str(exc))
            self.assertRaises(exception.InvalidInput, layer.check_size,
                              10 ** 40, self.dir)
        # Free space is not a bound: the layer is sparse (overcommit, as
        # thin provisioning); only the filesystem's size is.
        with self._statvfs(1000, free_mb=0):
            self.assertEqual(1000, layer.check_size(1000, self.dir))

    def test_wrong_types_and_small_sizes(self):
        for bad in (0, -1, layer.MIN_MB - 1, True, 64.0, '64', [64]):
            self.assertRaises(exception.InvalidInput, layer.check_size,
                              bad, self.dir)

    def test_the_real_filesystem(self):
        total_mb, _free = layer.filesystem_mb(self.dir)
        self.assertGreater(total_mb, 0)
        self.assertEqual(total_mb, layer.check_size(total_mb, self.dir))
        self.assertRaises(exception.InvalidInput, layer.check_size,
                          total_mb + 1, self.dir)


class MakeTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'rw.img')

    def _superblock(self):
        out = subprocess.run(['dumpe2fs', '-h', self.path],
                             capture_output=True, check=True).stdout
        fields = {}
        for line in out.decode().splitlines():
            key, sep, value = line.partition(':')
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    def test_a_sparse_ext4_of_that_size(self):
        layer.make(self.path, 4096)
        st = os.stat(self.path)
        self.assertEqual(4096 * MiB, st.st_size)
        # Sparse: making a 4 GiB layer writes a few MiB.
        self.assertLess(st.st_blocks * 512, 64 * MiB)
        sb = self._superblock()
        self.assertEqual(4096 * MiB, int(sb['Block count']) *
                         int(sb['Block size']))
        self.assertEqual('0', sb['Reserved block count'])
        self.assertEqual('kz-rw', sb['Filesystem volume name'])

    def test_mkfs_failure(self):
        err = subprocess.CalledProcessError(1, 'mkfs.ext4', b'', b'no room')
        with mock.patch('subprocess.run', side_effect=err):
            exc = self.assertRaises(exception.KataZunException, layer.make,
                                    self.path, 64)
        self.assertIn('mkfs.ext4 failed: no room', str(exc))

    def test_size_of_a_record(self):
        layer.make(self.path, 32)
        self.assertEqual(64, layer.size_mb_of({'disk_mb': 64}, self.dir))
        # Records from before sizes were recorded, or damaged: the file.
        for config in ({}, {'disk_mb': '64'}, {'disk_mb': True}):
            self.assertEqual(32, layer.size_mb_of(config, self.dir))
        self.assertIsNone(layer.size_mb_of({}, self.dir + '/gone'))
