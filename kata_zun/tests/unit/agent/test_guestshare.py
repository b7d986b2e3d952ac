"""Block volumes mounted once per VM and bound into each container."""

import fixtures
from oslotest import base

from kata_zun.agent import guestshare


class SharedMountsTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.calls = []
        self.staging = self.useFixture(fixtures.TempDir()).path
        self.fail_rw = False

        def mount(source, target, fstype, flags=0, data=None):
            if (self.fail_rw and fstype == 'ext4' and
                    not flags & guestshare.MS_RDONLY):
                raise OSError(30, 'read-only device')
            self.calls.append((source, target, fstype, flags, data))
        self.shared = guestshare.SharedMounts(mount, self.staging)

    def test_one_mount_per_device_a_bind_per_container(self):
        self.shared('/dev/vdc', '/c1/data', 'ext4', guestshare.MS_NODEV)
        self.shared('/dev/vdc', '/c2/data', 'ext4',
                    guestshare.MS_NODEV | guestshare.MS_RDONLY)
        self.shared('/dev/vdc', '/c3/data', 'ext4', guestshare.MS_NODEV)
        stage = self.staging + '/0'
        devices = [c for c in self.calls if c[0] == '/dev/vdc']
        # Mounted once, read-write, whatever the first container wanted.
        self.assertEqual([('/dev/vdc', stage, 'ext4', guestshare.MS_NODEV,
                           None)], devices)
        binds = [(c[0], c[1]) for c in self.calls
                 if c[3] == guestshare.MS_BIND]
        self.assertEqual([(stage, '/c1/data'), (stage, stage + '-ro'),
                          (stage + '-ro', '/c2/data'),
                          (stage, '/c3/data')], binds)
        # The read-only view is remounted read-only once.
        remounts = [c for c in self.calls if c[3] & guestshare.MS_REMOUNT]
        self.assertEqual(1, len(remounts))
        self.assertTrue(remounts[0][3] & guestshare.MS_RDONLY)
        self.assertEqual(stage + '-ro', remounts[0][1])

    def test_read_only_device_mounted_read_only(self):
        self.fail_rw = True
        self.shared('/dev/vdd', '/c1/data', 'ext4', guestshare.MS_RDONLY)
        devices = [c for c in self.calls if c[0] == '/dev/vdd']
        self.assertEqual(guestshare.MS_RDONLY, devices[0][3])
        # A read-write request cannot mount a device that refuses it.
        self.assertRaises(OSError, self.shared, '/dev/vde', '/c2/data',
                          'ext4', 0)

    def test_shared_directories_pass_through(self):
        self.shared('kz-fs0', '/c1/data', 'virtiofs', guestshare.MS_NODEV)
        self.assertEqual([('kz-fs0', '/c1/data', 'virtiofs',
                           guestshare.MS_NODEV, None)], self.calls)
