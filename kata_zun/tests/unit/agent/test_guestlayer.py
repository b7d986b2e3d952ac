"""The writable layer as an OCI layer tar, on a real upper directory."""

import io
import os
import tarfile

import fixtures
from oslotest import base

from kata_zun.agent import guestlayer


class GuestLayerTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('whiteout devices and trusted xattrs need root')
        self.root = self.useFixture(fixtures.TempDir()).path

    def _layer(self):
        out = io.BytesIO()
        guestlayer.write_layer(self.root, out)
        out.seek(0)
        with tarfile.open(fileobj=out) as tar:
            return [(m, tar.extractfile(m).read() if m.isreg() else None)
                    for m in tar.getmembers()]

    def test_whiteouts_opaque_and_files(self):
        r = self.root
        os.makedirs(r + '/etc')
        os.mknod(r + '/etc/group', 0o20000 | 0o600, os.makedev(0, 0))
        os.mkdir(r + '/home')
        try:
            os.setxattr(r + '/home', 'trusted.overlay.opaque', b'y')
        except OSError as exc:
            self.skipTest('no trusted xattrs here: %s' % exc)
        with open(r + '/home/only', 'w') as f:
            f.write('new')
        os.mkdir(r + '/data')
        with open(r + '/data/f', 'w') as f:
            f.write('hello')
        os.link(r + '/data/f', r + '/data/hl')
        os.symlink('f', r + '/data/sl')
        os.mkfifo(r + '/data/fifo')
        # A real device node is not part of an image.
        os.mknod(r + '/data/null', 0o20000 | 0o666, os.makedev(1, 3))
        # Mount point placeholders of the agent are left out.
        open(r + '/etc/hosts', 'w').close()
        members = self._layer()
        names = [m.name for m, _ in members]
        self.assertEqual(len(names), len(set(names)))
        by_name = {m.name: (m, data) for m, data in members}
        self.assertIn('etc/.wh.group', by_name)
        self.assertTrue(by_name['etc/.wh.group'][0].isreg())
        self.assertEqual(0, by_name['etc/.wh.group'][0].size)
        self.assertNotIn('etc/group', by_name)
        self.assertNotIn('etc/hosts', by_name)
        self.assertIn('home/.wh..wh..opq', by_name)
        self.assertLess(names.index('home'),
                        names.index('home/.wh..wh..opq'))
        self.assertEqual(b'new', by_name['home/only'][1])
        self.assertEqual(b'hello', by_name['data/f'][1])
        self.assertTrue(by_name['data/hl'][0].islnk())
        self.assertEqual('data/f', by_name['data/hl'][0].linkname)
        self.assertTrue(by_name['data/sl'][0].issym())
        self.assertTrue(by_name['data/fifo'][0].isfifo())
        self.assertNotIn('data/null', by_name)
        self.assertFalse([m for m, _ in members if m.ischr()])
        # Parents come before their children.
        for name in names:
            parent = os.path.dirname(name)
            if parent:
                self.assertLess(names.index(parent), names.index(name))

    def test_xattr_whiteout_and_plain_dirs(self):
        r = self.root
        os.mkdir(r + '/d')
        open(r + '/d/gone', 'w').close()
        try:
            os.setxattr(r + '/d/gone', 'trusted.overlay.whiteout', b'')
        except OSError as exc:
            self.skipTest('no trusted xattrs here: %s' % exc)
        open(r + '/d/empty', 'w').close()
        names = [m.name for m, _ in self._layer()]
        self.assertEqual(['d', 'd/empty', 'd/.wh.gone'], names)

    def test_freeze_and_thaw(self):
        cg = self.useFixture(fixtures.TempDir()).path
        with open(cg + '/cgroup.freeze', 'w') as f:
            f.write('0\n')
        with open(cg + '/cgroup.events', 'w') as f:
            f.write('populated 1\nfrozen 1\n')
        thaw = guestlayer.freeze(cg)
        with open(cg + '/cgroup.freeze') as f:
            self.assertEqual('1', f.read())
        thaw()
        with open(cg + '/cgroup.freeze') as f:
            self.assertEqual('0', f.read())
        # Frozen already (a paused container): left as it was.
        with open(cg + '/cgroup.freeze', 'w') as f:
            f.write('1\n')
        guestlayer.freeze(cg)()
        with open(cg + '/cgroup.freeze') as f:
            self.assertEqual('1\n', f.read())
