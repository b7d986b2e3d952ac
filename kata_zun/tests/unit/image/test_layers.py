import gzip
import hashlib
import io
import os
import stat
import tarfile

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import layers

CONF = conf.CONF
AS_ROOT = os.geteuid() == 0


class LayersTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(tmp, 'root')
        # A sentinel beside the root: nothing may ever appear in it.
        self.outside = os.path.join(tmp, 'outside')
        self.layers_dir = os.path.join(tmp, 'layers')
        for path in (self.root, self.outside, self.layers_dir):
            os.mkdir(path)
        self.count = 0

    def layer(self, entries, compress=False, raw=None):
        data = raw if raw is not None else busybox.layer_tar(entries)
        if compress:
            data = gzip.compress(data, mtime=0)
        self.count += 1
        path = os.path.join(self.layers_dir, 'layer%d' % self.count)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def apply(self, *layer_entries):
        return layers.apply_layers(self.root,
                                   [self.layer(e) for e in layer_entries])

    def path(self, name):
        return os.path.join(self.root, name)

    def assertUnsafe(self, *layer_entries):
        self.assertRaises(exception.UnsafeLayerMember, self.apply,
                          *layer_entries)
        self.assertEqual([], os.listdir(self.outside))

    def test_member_kinds_and_metadata(self):
        self.apply([
            ('d', 'dir', None, 0o750, 12, 34),
            ('d/suid', 'file', b'#!x', 0o4755, 0, 0),
            ('d/file', 'file', 'text', 0o640, 56, 78),
            ('d/link', 'symlink', '../nowhere/at/all'),
            ('d/hard', 'hardlink', 'd/file'),
            ('d/fifo', 'fifo', None, 0o600),
            ('implicit/parent/file', 'file', b'x'),
        ])
        st = os.stat(self.path('d/suid'))
        self.assertEqual(0o4755, stat.S_IMODE(st.st_mode))
        self.assertEqual(busybox.MTIME, st.st_mtime)
        with open(self.path('d/file')) as f:
            self.assertEqual('text', f.read())
        self.assertEqual('../nowhere/at/all',
                         os.readlink(self.path('d/link')))
        self.assertEqual(os.stat(self.path('d/file')).st_ino,
                         os.stat(self.path('d/hard')).st_ino)
        self.assertTrue(stat.S_ISFIFO(os.lstat(self.path('d/fifo')).st_mode))
        st = os.stat(self.path('d'))
        self.assertEqual(0o750, stat.S_IMODE(st.st_mode))
        self.assertEqual(busybox.MTIME, st.st_mtime)
        self.assertTrue(os.path.isdir(self.path('implicit/parent')))
        if AS_ROOT:
            st = os.stat(self.path('d/file'))
            self.assertEqual((56, 78), (st.st_uid, st.st_gid))
            self.assertEqual((12, 34), (os.stat(self.path('d')).st_uid,
                                        os.stat(self.path('d')).st_gid))

    def test_diff_id_and_gzip(self):
        data = busybox.layer_tar([('f', 'file', b'data')])
        diff_id = 'sha256:' + hashlib.sha256(data).hexdigest()
        path = self.layer(None, compress=True, raw=data)
        self.assertEqual([diff_id], layers.apply_layers(self.root, [path]))
        self.assertTrue(os.path.isfile(self.path('f')))

    def test_unsupported_compression(self):
        path = self.layer(None, raw=b'\x28\xb5\x2f\xfd' + b'\0' * 100)
        e = self.assertRaises(exception.ImageError, layers.apply_layers,
                              self.root, [path])
        self.assertIn('unsupported compression zstd', str(e))

    def test_not_a_tar(self):
        for raw in (b'garbage' * 100, gzip.compress(b'garbage' * 100),
                    b'\x1f\x8b' + b'\0' * 50):
            path = self.layer(None, raw=raw)
            self.assertRaises(exception.ImageError, layers.apply_layers,
                              self.root, [path])

    def test_device_nodes_skipped(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as tar:
            for name, kind in (('null', tarfile.CHRTYPE),
                               ('sda', tarfile.BLKTYPE)):
                info = tarfile.TarInfo(name)
                info.type = kind
                tar.addfile(info)
        layers.apply_layers(self.root, [self.layer(None, raw=buf.getvalue())])
        self.assertEqual([], os.listdir(self.root))

    def test_whiteouts_across_layers(self):
        self.apply(
            [('a', 'dir'), ('a/x', 'file', b'x'), ('a/y', 'file', b'y'),
             ('b', 'dir'), ('b/z', 'file', b'z'), ('c', 'file', b'c')],
            [('b', 'whiteout'), ('a/x', 'whiteout'),
             ('missing/thing', 'whiteout')],
            [('c', 'whiteout'), ('c', 'dir'), ('c/new', 'file', b'n')])
        self.assertEqual(['a', 'c'], sorted(os.listdir(self.root)))
        self.assertEqual(['y'], os.listdir(self.path('a')))
        self.assertEqual(['new'], os.listdir(self.path('c')))

    def test_whiteout_does_not_hide_its_own_layer(self):
        self.apply([('f', 'file', b'old'), ('d', 'dir'),
                    ('d/lower', 'file', b'')],
                   [('f', 'file', b'new'), ('f', 'whiteout'),
                    ('d/upper', 'file', b''), ('d', 'whiteout')])
        with open(self.path('f'), 'rb') as f:
            self.assertEqual(b'new', f.read())
        self.assertEqual(['upper'], os.listdir(self.path('d')))

    def test_opaque_directory(self):
        self.apply(
            [('d', 'dir'), ('d/old', 'file', b''), ('d/sub', 'dir'),
             ('d/sub/deep', 'file', b''), ('d/keep', 'dir'),
             ('d/keep/lower', 'file', b''), ('other', 'file', b'')],
            [('d', 'dir'), ('d/before', 'file', b''),
             ('d/keep/upper', 'file', b''), ('d', 'opaque'),
             ('d/after', 'file', b'')])
        self.assertEqual(['after', 'before', 'keep'],
                         sorted(os.listdir(self.path('d'))))
        self.assertEqual(['upper'], os.listdir(self.path('d/keep')))
        self.assertTrue(os.path.exists(self.path('other')))
        self.assertFalse(os.path.exists(self.path('d/.wh..wh..opq')))

    def test_replacing(self):
        self.apply(
            [('dir2file', 'dir'), ('dir2file/x', 'file', b''),
             ('file2dir', 'file', b''), ('merge', 'dir', None, 0o700),
             ('merge/lower', 'file', b''), ('link2file', 'symlink', 'x')],
            [('dir2file', 'file', b'f'), ('file2dir', 'dir'),
             ('file2dir/y', 'file', b''), ('merge', 'dir', None, 0o755),
             ('merge/upper', 'file', b''), ('link2file', 'file', b'')])
        self.assertTrue(os.path.isfile(self.path('dir2file')))
        self.assertTrue(os.path.isfile(self.path('file2dir/y')))
        self.assertEqual(['lower', 'upper'],
                         sorted(os.listdir(self.path('merge'))))
        self.assertEqual(0o755, stat.S_IMODE(os.stat(
            self.path('merge')).st_mode))
        self.assertFalse(os.path.islink(self.path('link2file')))

    def test_read_only_directory_is_filled(self):
        self.apply([('ro', 'dir', None, 0o555), ('ro/f', 'file', b'')],
                   [('ro/g', 'file', b'')])
        self.assertEqual(['f', 'g'], sorted(os.listdir(self.path('ro'))))
        self.assertEqual(0o555, stat.S_IMODE(os.stat(self.path('ro')).st_mode))

    def test_traversal_rejected(self):
        for name in ('../outside/evil', '/abs', 'a/../../outside/evil',
                     'a/b/../../..'):
            self.assertUnsafe([('ok', 'file', b''), (name, 'file', b'x')])
        self.assertFalse(os.path.exists('/abs'))

    def test_nul_byte_rejected(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w',
                          format=tarfile.PAX_FORMAT) as tar:
            # Long enough for a pax path record, which may hold a NUL.
            tar.addfile(tarfile.TarInfo('x' * 120 + '\0/../outside/evil'))
        path = self.layer(None, raw=buf.getvalue())
        e = self.assertRaises(exception.UnsafeLayerMember,
                              layers.apply_layers, self.root, [path])
        self.assertIn('NUL', str(e))
        self.assertEqual([], os.listdir(self.root))

    def test_split_member_name(self):
        self.assertEqual(['a', 'b'], layers.split_member_name('./a//b/'))
        self.assertEqual([], layers.split_member_name('./'))
        for name in ('a\0b', '/a', 'a/../b', '..'):
            self.assertRaises(exception.UnsafeLayerMember,
                              layers.split_member_name, name)

    def test_nothing_applied_after_unsafe_member(self):
        self.assertUnsafe([('../evil', 'file', b''),
                           ('after', 'file', b'')])
        self.assertEqual([], os.listdir(self.root))

    def test_write_through_symlink_rejected(self):
        self.assertUnsafe([('escape', 'symlink', self.outside),
                           ('escape/pwned', 'file', b'x')])
        self.assertUnsafe([('up', 'symlink', '../outside'),
                           ('up/pwned', 'dir')])
        self.assertUnsafe([('d', 'dir'), ('d/dots', 'symlink', '../..')],
                          [('d/dots/outside/pwned', 'file', b'x')])

    def test_symlink_replacing_directory_then_write_rejected(self):
        self.assertUnsafe([('d', 'dir'), ('d/f', 'file', b'')],
                          [('d', 'symlink', self.outside),
                           ('d/f', 'file', b'pwned')])

    def test_whiteout_through_symlink_rejected(self):
        victim = os.path.join(self.outside, 'victim')
        with open(victim, 'w'):
            pass
        self.assertRaises(exception.UnsafeLayerMember, self.apply,
                          [('escape', 'symlink', self.outside)],
                          [('escape/victim', 'whiteout')])
        self.assertRaises(exception.UnsafeLayerMember, self.apply,
                          [('escape', 'symlink', self.outside)],
                          [('escape', 'opaque')])
        self.assertEqual(['victim'], os.listdir(self.outside))

    def test_hardlinks_rejected(self):
        target = os.path.join(self.outside, 'target')
        with open(target, 'w'):
            pass
        for entries in (
                [('h', 'hardlink', '../outside/target')],
                [('h', 'hardlink', target)],
                [('s', 'symlink', target), ('h', 'hardlink', 's')],
                [('l', 'symlink', self.outside),
                 ('h', 'hardlink', 'l/target')],
                [('d', 'dir'), ('h', 'hardlink', 'd')],
                [('h', 'hardlink', 'not/extracted')]):
            self.assertRaises(exception.UnsafeLayerMember, self.apply,
                              entries)
        self.assertEqual(1, os.stat(target).st_nlink)
        self.assertEqual(['target'], os.listdir(self.outside))

    def test_limits(self):
        self.flags(max_entries=3, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded, self.apply,
                          [('a', 'file', b''), ('b', 'file', b'')],
                          [('c', 'file', b''), ('d', 'file', b'')])
        self.flags(max_entries=100, max_unpacked_mb=1, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded, self.apply,
                          [('a', 'file', b'x' * (512 * 1024))],
                          [('b', 'file', b'x' * (512 * 1024 + 1))])
        self.flags(max_layers=2, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded, self.apply,
                          [], [], [])

    def test_oversized_extended_header(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w',
                          format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo('f')
            info.pax_headers = {'comment': 'x' * layers.MAX_HEADER_BYTES}
            tar.addfile(info)
        path = self.layer(None, raw=buf.getvalue())
        self.assertRaises(exception.ImageLimitExceeded, layers.apply_layers,
                          self.root, [path])
