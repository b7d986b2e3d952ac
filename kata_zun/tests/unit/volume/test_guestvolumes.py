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

    def test_shared_file(self):
        out = gv.parse([{'type': 'virtiofs', 'tag': 'kz-fs0',
                         'file': 'file', 'target': '/etc/app.conf',
                         'readonly': True}])
        self.assertEqual([{'type': 'virtiofs', 'tag': 'kz-fs0',
                           'file': 'file', 'target': '/etc/app.conf',
                           'readonly': True}], out)

    def test_lying_shared_file_names_are_refused(self):
        for name in ('', '.', '..', '../x', 'a/b', '/file', 'x' * 65,
                     'a\0', '-rf', 5, None, ['file'], {'a': 1}):
            self.assertRaises(
                gv.VolumeError, gv.parse,
                [{'type': 'virtiofs', 'tag': 'kz-fs0', 'file': name,
                  'target': '/a'}])

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

    def test_file_targets(self):
        # Missing: an empty file, its parents directories.
        path = gv.resolve(self.root, '/etc/app/app.conf', 'file')
        self.assertEqual(os.path.join(self.root, 'etc/app/app.conf'), path)
        self.assertEqual(0, os.path.getsize(path))
        # Existing file: kept as it is.
        with open(path, 'w') as f:
            f.write('image content')
        self.assertEqual(path, gv.resolve(self.root, '/etc/app/app.conf',
                                          'file'))
        with open(path) as f:
            self.assertEqual('image content', f.read())
        # A directory there is refused, even behind a link.
        exc = self.assertRaises(gv.VolumeError, gv.resolve, self.root,
                                '/etc', 'file')
        self.assertIn('is a directory', str(exc))
        os.symlink('/etc', os.path.join(self.root, 'etclink'))
        self.assertRaises(gv.VolumeError, gv.resolve, self.root,
                          '/etclink', 'file')
        # A dangling link to outside: the file is made inside the root.
        os.symlink(os.path.join(self.outside, 'f'),
                   os.path.join(self.root, 'dangling'))
        self.assertEqual(
            os.path.join(self.root, self.outside.lstrip('/'), 'f'),
            gv.resolve(self.root, '/dangling', 'file'))
        self.assertEqual([], os.listdir(self.outside))
        # A node that is not a regular file is refused.
        os.mkfifo(os.path.join(self.root, 'fifo'))
        self.assertRaises(gv.VolumeError, gv.resolve, self.root, '/fifo',
                          'file')
        # A file where a directory is needed on the way.
        self.assertRaises(gv.VolumeError, gv.resolve, self.root,
                          '/etc/app/app.conf/x', 'file')

    def test_pinned_mount_point_catches_a_swapped_link(self):
        path = gv.resolve(self.root, '/srv/data')
        # Something (another user of a shared directory above) swaps a
        # component for a link out of the root after the resolution.
        os.makedirs(os.path.join(self.outside, 'data'))
        os.rename(os.path.join(self.root, 'srv'),
                  os.path.join(self.root, 'srv.old'))
        os.symlink(self.outside, os.path.join(self.root, 'srv'))
        pinned = gv._Pinned(path)
        exc = self.assertRaises(gv.VolumeError, pinned.__enter__)
        self.assertIn('changed', str(exc))

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
        self.staging = os.path.join(tmp, 'staging')
        self.mounts = []
        self.exports = {'kz-fs1': 'file'}

    def _mount(self, source, target, fstype, flags=0, data=None):
        if target.startswith('/proc/self/fd/'):
            # Where a pinned mount point really is.
            target = os.readlink(target)
        self.mounts.append((source, target, fstype, flags, data))
        if fstype == 'virtiofs' and source in self.exports:
            # A shared file's export, as the host's virtiofsd serves it.
            open(os.path.join(target, self.exports[source]), 'w').close()

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

    def _file_vol(self, **kw):
        vol = {'type': 'virtiofs', 'tag': 'kz-fs1', 'file': 'file',
               'target': '/etc/app.conf', 'readonly': True}
        vol.update(kw)
        return vol

    def test_shared_file_is_staged_outside_the_root_and_bound(self):
        done = gv.mount_all(self.root, [self._file_vol()],
                            lambda s: self.disk, self._mount, self.staging)
        self.assertEqual([{'target': '/etc/app.conf', 'formatted': False}],
                         done)
        stage = os.path.join(self.staging, 'kz-fs1')
        self.assertEqual(
            [('kz-fs1', stage, 'virtiofs', gv.MS_RDONLY | gv.MS_NODEV,
              None),
             (os.path.join(stage, 'file'),
              os.path.join(self.root, 'etc/app.conf'), None, gv.MS_BIND,
              None)], self.mounts)
        # The mount point: an empty file, made for it.
        self.assertEqual(0, os.path.getsize(
            os.path.join(self.root, 'etc/app.conf')))

    def test_shared_file_needs_a_staging_directory_outside_the_root(self):
        for staging in (None, os.path.join(self.root, 'run')):
            exc = self.assertRaises(
                gv.VolumeError, gv.mount_all, self.root,
                [self._file_vol()], lambda s: self.disk, self._mount,
                staging)
            self.assertIn('staging', str(exc))
        self.assertEqual([], self.mounts)

    def test_shared_file_missing_or_a_link_in_its_export_is_refused(self):
        self.exports = {}
        exc = self.assertRaises(
            gv.VolumeError, gv.mount_all, self.root, [self._file_vol()],
            lambda s: self.disk, self._mount, self.staging)
        self.assertIn('missing from its export', str(exc))
        stage = os.path.join(self.staging, 'kz-fs2')
        os.makedirs(stage)
        os.symlink('/etc/passwd', os.path.join(stage, 'file'))
        self.assertRaises(
            gv.VolumeError, gv.mount_all, self.root,
            [self._file_vol(tag='kz-fs2', target='/b')],
            lambda s: self.disk, self._mount, self.staging)
        self.assertNotIn(gv.MS_BIND, [m[3] for m in self.mounts])

    def test_directory_at_a_file_target_is_refused(self):
        os.makedirs(os.path.join(self.root, 'etc/app.conf'))
        exc = self.assertRaises(
            gv.VolumeError, gv.mount_all, self.root, [self._file_vol()],
            lambda s: self.disk, self._mount, self.staging)
        self.assertIn('is a directory', str(exc))
        self.assertEqual([], self.mounts)
