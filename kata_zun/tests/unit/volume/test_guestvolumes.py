"""The guest side of volumes: spec checks and mount points that stay
inside the container's root whatever symlinks the image holds.
"""

import os

import fixtures
from oslotest import base

from kata_zun.agent import guestvolumes as gv


class ParseTestCase(base.BaseTestCase):

    def test_valid_and_sorted_parents_first(self):
        out = gv.parse([
            {'type': 'block', 'serial': 'kz-vol0', 'target': '/a/b/c'},
            {'type': 'virtiofs', 'tag': 'kz-fs0', 'target': '//a/',
             'readonly': True}])
        self.assertEqual(['/a', '/a/b/c'], [v['target'] for v in out])
        self.assertEqual([], gv.parse(None))

    def test_lying_host_specs_are_refused(self):
        bad = [
            'not a list', [None], [[]] * 17,
            [{'type': 'nfs', 'target': '/a'}],
            [{'type': 'block', 'serial': 'x' * 21, 'target': '/a'}],
            [{'type': 'block', 'serial': 'a,b', 'target': '/a'}],
            [{'type': 'block', 'serial': 's', 'target': 'rel'}],
            [{'type': 'block', 'serial': 's', 'target': '/'}],
            [{'type': 'block', 'serial': 's', 'target': '/a/../..'}],
            [{'type': 'block', 'serial': 's', 'target': '/a' * 3000}],
            [{'type': 'block', 'serial': 's', 'target': '/a\0'}],
            [{'type': 'block', 'serial': 's', 'target': '/a',
              'readonly': 'no'}],
            [{'type': 'virtiofs', 'tag': 't' * 37, 'target': '/a'}],
            [{'type': 'block', 'serial': 's', 'target': '/a'},
             {'type': 'block', 'serial': 't', 'target': '/a/'}],
        ]
        for specs in bad:
            self.assertRaises(gv.VolumeError, gv.parse, specs)


class ResolveTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(tmp, 'rootfs')
        self.outside = os.path.join(tmp, 'outside')
        os.makedirs(os.path.join(self.root, 'etc'))
        os.makedirs(self.outside)

    def test_creates_missing_directories(self):
        path = gv.resolve(self.root, '/srv/data')
        self.assertEqual(os.path.join(self.root, 'srv/data'), path)
        self.assertTrue(os.path.isdir(path))

    def test_image_symlinks_never_lead_outside_the_root(self):
        # Absolute and relative links out of the root, as a hostile
        # image would ship them.
        os.symlink(self.outside, os.path.join(self.root, 'abs'))
        os.symlink('../../outside', os.path.join(self.root, 'rel'))
        os.symlink('/etc', os.path.join(self.root, 'data'))
        self.assertEqual(os.path.join(self.root, self.outside.lstrip('/'),
                                      'x'),
                         gv.resolve(self.root, '/abs/x'))
        self.assertEqual(os.path.join(self.root, 'outside'),
                         gv.resolve(self.root, '/rel'))
        # A link inside the root is followed as a chroot would.
        self.assertEqual(os.path.join(self.root, 'etc'),
                         gv.resolve(self.root, '/data'))
        self.assertEqual([], os.listdir(self.outside))

    def test_link_loops_and_files_fail(self):
        os.symlink('/loop', os.path.join(self.root, 'loop'))
        self.assertRaises(gv.VolumeError, gv.resolve, self.root, '/loop')
        open(os.path.join(self.root, 'file'), 'w').close()
        self.assertRaises(gv.VolumeError, gv.resolve, self.root, '/file')
        os.symlink('/', os.path.join(self.root, 'toroot'))
        self.assertRaises(gv.VolumeError, gv.resolve, self.root, '/toroot')


class MountAllTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(tmp, 'rootfs')
        os.makedirs(self.root)
        self.disk = os.path.join(tmp, 'disk')
        with open(self.disk, 'wb') as f:
            f.truncate(1 << 20)
        self.mounts = []

    def _mount(self, source, target, fstype, flags=0, data=None):
        self.mounts.append((source, target, fstype, flags, data))

    def test_blank_read_only_disk_is_refused(self):
        exc = self.assertRaises(
            gv.VolumeError, gv.mount_all, self.root,
            [{'type': 'block', 'serial': 's', 'target': '/d',
              'readonly': True}], lambda s: self.disk, self._mount)
        self.assertIn('blank and read-only', str(exc))
        self.assertEqual([], self.mounts)

    def test_formatted_disk_is_mounted_read_only_without_mkfs(self):
        with open(self.disk, 'r+b') as f:
            f.seek(1080)
            f.write(b'\x53\xef')
        self.assertFalse(gv.is_blank(self.disk))
        done = gv.mount_all(
            self.root, [{'type': 'block', 'serial': 's', 'target': '/d',
                         'readonly': True},
                        {'type': 'virtiofs', 'tag': 'kz-fs0',
                         'target': '/e'}],
            lambda s: self.disk, self._mount)
        self.assertEqual([{'target': '/d', 'formatted': False},
                          {'target': '/e', 'formatted': False}], done)
        self.assertEqual(
            [(self.disk, os.path.join(self.root, 'd'), 'ext4',
              gv.MS_RDONLY | gv.MS_NODEV, None),
             ('kz-fs0', os.path.join(self.root, 'e'), 'virtiofs',
              gv.MS_NODEV, None)], self.mounts)

    def test_mkfs_failure_is_reported_and_bounded(self):
        self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.agent.guestvolumes.MKE2FS', '/bin/false'))
        exc = self.assertRaises(
            gv.VolumeError, gv.mount_all, self.root,
            [{'type': 'block', 'serial': 's', 'target': '/d'}],
            lambda s: self.disk, self._mount)
        self.assertIn('mke2fs', str(exc))
        # A mke2fs that hangs is killed at the deadline.
        hang = os.path.join(os.path.dirname(self.disk), 'hang')
        with open(hang, 'w') as f:
            f.write('#!/bin/sh\nexec sleep 60\n')
        os.chmod(hang, 0o755)
        self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.agent.guestvolumes.MKE2FS', hang))
        exc = self.assertRaises(gv.VolumeError, gv.make_fs, self.disk,
                                timeout=0.5)
        self.assertIn('took more than', str(exc))
