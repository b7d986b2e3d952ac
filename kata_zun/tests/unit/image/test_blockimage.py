import os
import subprocess

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.image import blockimage


class BlockImageTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.src = os.path.join(self.tmp, 'src')
        os.makedirs(os.path.join(self.src, 'd'))
        for i in range(50):
            with open(os.path.join(self.src, 'd', 'f%d' % i), 'wb') as f:
                f.write(os.urandom(10000))
        os.link(os.path.join(self.src, 'd', 'f0'),
                os.path.join(self.src, 'hard'))
        os.symlink('x' * 100, os.path.join(self.src, 'long-link'))

    def test_tree_usage(self):
        usage, inodes = blockimage.tree_usage(self.src)
        # 50 files of 3 blocks, a long symlink, the directories.
        self.assertEqual(53, inodes)
        self.assertGreaterEqual(usage, 151 * 4096)
        self.assertLess(usage, 160 * 4096)

    def test_build_ext4(self):
        dest = os.path.join(self.tmp, 'img')
        self.assertEqual('ext4', blockimage.build(self.src, dest, 'ext4'))
        subprocess.run(['e2fsck', '-fn', dest], check=True,
                       capture_output=True)
        self.assertEqual(0, os.path.getsize(dest) % (1024 * 1024))

    def test_build_erofs(self):
        dest = os.path.join(self.tmp, 'img')
        self.assertEqual('erofs', blockimage.build(self.src, dest, 'erofs'))
        subprocess.run(['fsck.erofs', dest], check=True, capture_output=True)

    def test_failure_has_stderr(self):
        dest = os.path.join(self.tmp, 'img')
        e = self.assertRaises(exception.ImageError, blockimage.build,
                              os.path.join(self.tmp, 'missing'), dest,
                              'erofs')
        self.assertIn('mkfs.erofs failed', str(e))
        self.assertRaises(exception.ImageError, blockimage.build, self.src,
                          dest, 'btrfs')
