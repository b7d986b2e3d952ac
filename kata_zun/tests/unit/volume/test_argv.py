"""QEMU command line of a VM with volumes: block volumes as fd-passed
disks (read-only where the mount is), shared directories as vhost-user-fs
devices on connections to their virtiofsd.
"""

import os
import stat
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.hypervisor.qemu import argv
from kata_zun.volume import devices
from kata_zun.volume import spec

QEMU = '/usr/bin/qemu-system-x86_64'


class VolumeArgvTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(tsc_khz=2596138, group='kata_hypervisor')

    def _config(self, entries, machine='microvm'):
        return hv_base.VMConfig(
            name='sb1', vcpus=1, memory_mb=256, kernel='/g/vmlinux',
            initrd='/g/initrd.img', run_dir='/run/kz/sb1',
            console_log='/var/log/kz/c.log',
            disks=devices.disks(entries),
            shared_dirs=devices.shared_dirs(entries))

    def test_jailed_golden(self):
        entries = [
            dict(spec.make('block', '/img/a.img', '/a', True),
                 disk='/img/a.img', serial='kz-vol0'),
            dict(spec.make('bind', '/srv/www', '/www', True),
                 dir='/srv/www', tag='kz-fs0'),
            dict(spec.make('volume', 'v', '/v'), disk='/s/volumes/v/disk.img',
                 serial='kz-vol1'),
        ]
        config = self._config(entries)
        handles = argv.Handles('/guest/vmlinux', '/guest/initrd.img', 5, 6,
                               7, disk_fds=(8, 9), fs_fds=(10,))
        self.assertEqual((5, 6, 7, 8, 9, 10), handles.fds())
        cmd = argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU,
                              handles=handles)
        self.assertEqual(['-m', '256M', '-object',
                          'memory-backend-memfd,id=mem,size=256M,share=on'],
                         cmd[cmd.index('-m'):cmd.index('-m') + 4])
        start = cmd.index('-add-fd')
        self.assertEqual([
            '-add-fd', 'fd=8,set=1',
            '-blockdev', '{"driver":"raw","node-name":"disk0",'
                         '"read-only":true,"file":{"driver":"file",'
                         '"filename":"/dev/fdset/1"}}',
            '-device', 'virtio-blk-device,drive=disk0,serial=kz-vol0',
            '-add-fd', 'fd=9,set=2',
            '-blockdev', '{"driver":"raw","node-name":"disk1",'
                         '"read-only":false,"file":{"driver":"file",'
                         '"filename":"/dev/fdset/2"}}',
            '-device', 'virtio-blk-device,drive=disk1,serial=kz-vol1',
            '-global', 'virtio-mmio.force-legacy=false',
            '-chardev', 'socket,id=vfs0,fd=10',
            '-device', 'vhost-user-fs-device,chardev=vfs0,tag=kz-fs0,'
                       'queue-size=1024',
            '-sandbox', argv.SANDBOX_OPTS], cmd[start:])

    def test_q35_and_bad_inputs(self):
        self.assertEqual(
            ['-chardev', 'socket,id=vfs2,fd=4',
             '-device', 'vhost-user-fs-pci,chardev=vfs2,tag=t,'
                        'queue-size=1024'],
            argv.VhostUserFs(2, 't', 4, 'q35').args())
        for tag, fd in (('a,b', 4), ('t' * 37, 4), ('', 4), ('t', 2),
                        ('t', True)):
            self.assertRaises(exception.HypervisorError,
                              argv.VhostUserFs(0, tag, fd).args)
        entries = [dict(spec.make('bind', '/srv', '/srv'), dir='/srv',
                        tag='kz-fs0')]
        config = self._config(entries)
        # A shared directory needs its connection: never a path QEMU
        # would open itself.
        self.assertRaises(exception.HypervisorError, argv.build_argv,
                          config, 'tcg', 'microvm', 'max', QEMU)
        self.assertRaises(exception.HypervisorError, argv.build_argv,
                          config, 'tcg', 'microvm', 'max', QEMU,
                          handles=argv.Handles('/k', '/i', 5, 6, 7))

    def test_host_block_device_golden(self):
        # A Cinder volume is a host block device: QEMU's host_device
        # driver (its file driver refuses anything but a regular file).
        self.assertEqual([
            '-add-fd', 'fd=8,set=3',
            '-blockdev', '{"driver":"raw","node-name":"disk2",'
                         '"read-only":true,"file":{"driver":"host_device",'
                         '"filename":"/dev/fdset/3"}}',
            '-device', 'virtio-blk-device,drive=disk2,serial=kz-vol0'],
            argv.BlockDevice(2, '/dev/loop7', 'kz-vol0', True, fd=8,
                             host_device=True).args())
        # The disk knows what its path is.
        entries = [dict(spec.make('block', '/dev/null', '/a'),
                        disk='/dev/null', serial='kz-vol0'),
                   dict(spec.make('block', '/img/x.img', '/b'),
                        disk='/img/x.img', serial='kz-vol1')]
        self.assertEqual([False, False],
                         [d.host_device for d in devices.disks(entries)])
        blk = os.stat_result((stat.S_IFBLK | 0o600,) + (0,) * 9)
        with mock.patch.object(devices.os, 'stat', return_value=blk):
            self.assertEqual([True, True], [
                d.host_device for d in devices.disks(entries)])
