import os

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.hypervisor.qemu import argv

QEMU = '/usr/bin/qemu-system-x86_64'
SANDBOX = ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,'
                       'resourcecontrol=deny']


def _config(**kwargs):
    values = dict(name='sb1', vcpus=2, memory_mb=512, kernel='/g/vmlinux',
                  initrd='/g/initrd.img', run_dir='/run/kz/sb1',
                  console_log='/var/log/kz/sb1,console.log')
    values.update(kwargs)
    return hv_base.VMConfig(**values)


class BuildArgvTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        # The goldens below leave the balloon out (see
        # test_free_page_reporting_balloon).
        self.cfg.config(tsc_khz=2596138, free_page_reporting=False,
                        group='kata_hypervisor')

    def test_free_page_reporting_balloon(self):
        self.cfg.config(free_page_reporting=True, group='kata_hypervisor')
        config = _config(disks=(hv_base.Disk('/img/r.erofs', 'r', True),))
        for machine, device in (('microvm', 'virtio-balloon-device'),
                                ('q35', 'virtio-balloon-pci')):
            full = argv.build_argv(config, 'tcg', machine, 'max', QEMU)
            balloon = ['-device', '%s,id=balloon0,free-page-reporting=on,'
                       'deflate-on-oom=off' % device]
            # Right after the agent port, before the disks: never
            # inflated, it can only give memory back.
            at = full.index('virtserialport,bus=vser0.0,chardev=agent,'
                            'name=agent.0') + 1
            self.assertEqual(balloon, full[at:at + 2])
            self.assertEqual(1, full.count(balloon[1]))
            self.assertEqual('-blockdev', full[at + 2])
        self.cfg.config(free_page_reporting=False, group='kata_hypervisor')
        full = argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU)
        self.assertFalse([a for a in full if 'balloon' in a])

    def test_microvm_tcg_disks_sandbox(self):
        config = _config(
            disks=(hv_base.Disk('/img/rootfs.erofs', 'rootfs', True),
                   hv_base.Disk('/var/lib/kz/rw.img', 'rw0')),
            kernel_params=('kz.debug=1',))
        self.assertEqual([
            QEMU,
            '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
            '-name', 'sb1,debug-threads=on',
            '-machine', 'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,'
                        'isa-serial=on,acpi=on,memory-backend=mem',
            '-accel', 'tcg',
            '-cpu', 'max,-erms,-fsrm',
            '-m', '512M', '-object', 'memory-backend-memfd,id=mem,size=512M',
            '-smp', '2',
            '-kernel', '/g/vmlinux', '-initrd', '/g/initrd.img',
            '-append', 'console=ttyS0 reboot=k panic=-1 tsc_early_khz=2596138 '
                       'cryptomgr.notests tsc=reliable rdinit=/init quiet '
                       'kz.debug=1',
            '-chardev', 'file,id=console,path=/var/log/kz/sb1,,console.log',
            '-serial', 'chardev:console',
            '-chardev', 'socket,id=qmp,path=/run/kz/sb1/qmp.sock,server=on,'
                        'wait=off',
            '-mon', 'chardev=qmp,mode=control',
            '-device', 'virtio-serial-device,id=vser0,max_ports=2',
            '-chardev', 'socket,id=agent,path=/run/kz/sb1/agent.sock,'
                        'server=on,wait=off',
            '-device', 'virtserialport,bus=vser0.0,chardev=agent,'
                       'name=agent.0',
            '-blockdev', '{"driver":"raw","node-name":"disk0",'
                         '"read-only":true,"file":{"driver":"file",'
                         '"filename":"/img/rootfs.erofs"}}',
            '-device', 'virtio-blk-device,drive=disk0,serial=rootfs',
            '-blockdev', '{"driver":"raw","node-name":"disk1",'
                         '"read-only":false,"file":{"driver":"file",'
                         '"filename":"/var/lib/kz/rw.img"}}',
            '-device', 'virtio-blk-device,drive=disk1,serial=rw0',
        ] + SANDBOX, argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU))

    def test_jailed_qemu_gets_descriptors(self):
        # A jailed QEMU opens nothing by name on the host: the kernel and
        # initrd are at their jail paths, the rest are inherited fds.
        config = _config(
            disks=(hv_base.Disk('/img/rootfs.erofs', 'rootfs', True),
                   hv_base.Disk('/var/lib/kz/rw.img', 'rw0')),
            nics=(hv_base.Nic('kzt0123456789ab', '02:6b:0a:58:00:02'),),
            pci_slots=1)
        handles = argv.Handles('/guest/vmlinux', '/guest/initrd.img',
                               qmp_fd=5, agent_fd=6, console_fd=7,
                               disk_fds=(8, 9), tap_fds=(10,))
        self.assertEqual((5, 6, 7, 8, 9, 10), handles.fds())
        self.assertEqual([
            QEMU,
            '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
            '-name', 'sb1,debug-threads=on',
            '-machine', 'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,'
                        'isa-serial=on,acpi=on,pcie=on,memory-backend=mem',
            '-accel', 'tcg,tb-size=64',
            '-cpu', 'max,-erms,-fsrm',
            '-m', '512M', '-object', 'memory-backend-memfd,id=mem,size=512M',
            '-smp', '2',
            '-kernel', '/guest/vmlinux', '-initrd', '/guest/initrd.img',
            '-append', 'console=ttyS0 reboot=k panic=-1 tsc_early_khz=2596138 '
                       'cryptomgr.notests tsc=reliable rdinit=/init quiet '
                       'pcie_ports=native',
            '-chardev', 'socket,id=console,fd=7,server=off',
            '-serial', 'chardev:console',
            '-chardev', 'socket,id=qmp,fd=5,server=on,wait=off',
            '-mon', 'chardev=qmp,mode=control',
            '-device', 'virtio-serial-device,id=vser0,max_ports=2',
            '-chardev', 'socket,id=agent,fd=6,server=on,wait=off',
            '-device', 'virtserialport,bus=vser0.0,chardev=agent,'
                       'name=agent.0',
            '-add-fd', 'fd=8,set=1',
            '-blockdev', '{"driver":"raw","node-name":"disk0",'
                         '"read-only":true,"file":{"driver":"file",'
                         '"filename":"/dev/fdset/1"}}',
            '-device', 'virtio-blk-device,drive=disk0,serial=rootfs',
            '-add-fd', 'fd=9,set=2',
            '-blockdev', '{"driver":"raw","node-name":"disk1",'
                         '"read-only":false,"file":{"driver":"file",'
                         '"filename":"/dev/fdset/2"}}',
            '-device', 'virtio-blk-device,drive=disk1,serial=rw0',
            '-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1',
            '-netdev', 'tap,id=net-kzt0123456789ab,fd=10,vhost=off',
            '-device', 'virtio-net-pci,id=nic-kzt0123456789ab,'
                       'netdev=net-kzt0123456789ab,mac=02:6b:0a:58:00:02,'
                       'bus=rp0,romfile=',
        ] + SANDBOX, argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU,
                                     handles=handles, tcg_cache_mb=64))

    def test_handles_must_match_the_devices(self):
        config = _config(disks=(hv_base.Disk('/img/a', 'a'),))
        for handles in (
                argv.Handles('/k', '/i', 5, 6, 7),           # no disk fd
                argv.Handles('/k', '/i', 5, 6, 7, (8,), (9,)),   # extra tap
                argv.Handles('/k', '/i', 1, 6, 7, (8,)),     # stdout
                argv.Handles('/k', '/i', True, 6, 7, (8,))):
            self.assertRaises(exception.HypervisorError, argv.build_argv,
                              config, 'tcg', 'microvm', 'max', QEMU,
                              handles=handles)

    def test_hotplug_of_an_open_tap(self):
        dev = argv.NetDevice(1, 'kzt0123456789ab', '02:6b:0a:58:00:02',
                             slot=1, generation=3)
        self.assertEqual({'type': 'tap', 'id': 'net-kzt0123456789ab-3',
                          'fd': 'fd-net-kzt0123456789ab-3', 'vhost': False},
                         dev.netdev_add_args('fd-net-kzt0123456789ab-3'))

    def test_q35_kvm_no_sandbox_operator_params(self):
        self.cfg.config(seccomp_sandbox=False, group='kata_hypervisor')
        self.cfg.config(kernel_params='loglevel=3  kz.x=1', group='kata_guest')
        config = _config(vcpus=1, memory_mb=256, console_log='/c.log',
                         disks=(hv_base.Disk('/img/a,b.raw', 'a', True),))
        self.assertEqual([
            '/opt/qemu',
            '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
            '-name', 'sb1,debug-threads=on',
            '-machine', 'q35,acpi=on,vmport=off,memory-backend=mem',
            '-accel', 'kvm',
            '-cpu', 'host',
            '-m', '256M', '-object', 'memory-backend-memfd,id=mem,size=256M',
            '-smp', '1',
            '-kernel', '/g/vmlinux', '-initrd', '/g/initrd.img',
            '-append', 'console=ttyS0 reboot=k panic=-1 tsc_early_khz=2596138 '
                       'cryptomgr.notests tsc=reliable rdinit=/init quiet '
                       'loglevel=3 '
                       'kz.x=1',
            '-chardev', 'file,id=console,path=/c.log',
            '-serial', 'chardev:console',
            '-chardev', 'socket,id=qmp,path=/run/kz/sb1/qmp.sock,server=on,'
                        'wait=off',
            '-mon', 'chardev=qmp,mode=control',
            '-device', 'virtio-serial-pci,id=vser0,max_ports=2',
            '-chardev', 'socket,id=agent,path=/run/kz/sb1/agent.sock,'
                        'server=on,wait=off',
            '-device', 'virtserialport,bus=vser0.0,chardev=agent,'
                       'name=agent.0',
            '-blockdev', '{"driver":"raw","node-name":"disk0",'
                         '"read-only":true,"file":{"driver":"file",'
                         '"filename":"/img/a,b.raw"}}',
            '-device', 'virtio-blk-pci,drive=disk0,serial=a',
        ], argv.build_argv(config, 'kvm', 'q35', 'host', '/opt/qemu'))

    def test_tcg_cpu_drops_byte_wise_string_ops(self):
        # Under TCG only; a model that names a feature keeps the
        # operator's word for it.
        self.assertEqual(['-cpu', 'max,-erms,-fsrm'],
                         argv.Cpu('max', 'tcg').args())
        self.assertEqual(['-cpu', 'max'], argv.Cpu('max', 'kvm').args())
        self.assertEqual(['-cpu', 'host'], argv.Cpu('host', 'kvm').args())
        self.assertEqual(['-cpu', 'Skylake-Client,+erms,-fsrm'],
                         argv.Cpu('Skylake-Client,+erms', 'tcg').args())
        self.assertEqual(['-cpu', 'max,erms=on,fsrm=on'],
                         argv.Cpu('max,erms=on,fsrm=on', 'tcg').args())
        # Idempotent: what a template key records builds the same argv.
        eff = argv.Cpu('max', 'tcg').effective
        self.assertEqual(eff, argv.Cpu(eff, 'tcg').effective)

    def test_no_tsc_no_tsc_param(self):
        self.cfg.config(tsc_khz=0, group='kata_hypervisor')
        self.useFixture(fixtures.MockPatchObject(argv, '_tsc_cache', [None]))
        self.assertEqual(['console=ttyS0', 'reboot=k', 'panic=-1',
                          'cryptomgr.notests', 'tsc=reliable', 'rdinit=/init',
                          'quiet'],
                         argv.kernel_params(_config()))

    def test_rejects_smuggled_kernel_param(self):
        for bad in ('a b', 'x\ninit=/bin/sh', ''):
            self.assertRaises(exception.HypervisorError, argv.kernel_params,
                              _config(kernel_params=(bad,)))

    def test_rejects_bad_disk_serial(self):
        for bad in ('a,drive=x', 'x' * 21, ''):
            config = _config(disks=(hv_base.Disk('/d', bad),))
            self.assertRaises(exception.HypervisorError, argv.build_argv,
                              config, 'tcg', 'microvm', 'max', QEMU)

    def test_rejects_long_socket_path_and_unknown_types(self):
        config = _config(run_dir='/' + 'r' * 100)
        self.assertRaises(exception.HypervisorError, argv.build_argv,
                          config, 'tcg', 'microvm', 'max', QEMU)
        self.assertRaises(exception.HypervisorError, argv.build_argv,
                          _config(), 'hvf', 'microvm', 'max', QEMU)
        self.assertRaises(exception.HypervisorError, argv.build_argv,
                          _config(), 'tcg', 'pc', 'max', QEMU)


class NetDeviceTestCase(base.BaseTestCase):
    """Golden argv of virtio-net NICs on host taps (issue 5)."""

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(tsc_khz=2596138, group='kata_hypervisor')

    def test_microvm_nics_before_sandbox(self):
        config = _config(nics=(
            hv_base.Nic('kzt0123456789ab', '02:6b:0a:58:00:02'),
            hv_base.Nic('kzt0123456789ac', '02:6b:0a:58:00:03')))
        full = argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU)
        self.assertEqual([
            '-netdev', 'tap,id=net0,ifname=kzt0123456789ab,script=no,'
                       'downscript=no,vhost=off',
            '-device', 'virtio-net-device,netdev=net0,'
                       'mac=02:6b:0a:58:00:02',
            '-netdev', 'tap,id=net1,ifname=kzt0123456789ac,script=no,'
                       'downscript=no,vhost=off',
            '-device', 'virtio-net-device,netdev=net1,'
                       'mac=02:6b:0a:58:00:03',
        ] + SANDBOX, full[-10:])

    def test_q35_nic_has_no_option_rom(self):
        config = _config(nics=(hv_base.Nic('kzt0123456789ab',
                                           '02:6b:0a:58:00:02'),))
        self.assertEqual(
            ['-netdev', 'tap,id=net0,ifname=kzt0123456789ab,script=no,'
                        'downscript=no,vhost=off',
             '-device', 'virtio-net-pci,netdev=net0,mac=02:6b:0a:58:00:02,'
                        'romfile='] + SANDBOX,
            argv.build_argv(config, 'kvm', 'q35', 'host', QEMU)[-6:])

    def test_nic_without_checksum_offload(self):
        # Open vSwitch's userspace datapath: the guest checksums and
        # segments its frames itself (issue 15).
        config = _config(nics=(
            hv_base.Nic('kzt0123456789ab', '02:6b:0a:58:00:02',
                        checksum_offload=False),
            hv_base.Nic('kzt0123456789ac', '02:6b:0a:58:00:03')))
        full = argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU)
        self.assertEqual([
            '-device', 'virtio-net-device,netdev=net0,'
                       'mac=02:6b:0a:58:00:02,csum=off,host_tso4=off,'
                       'host_tso6=off,host_ecn=off,host_ufo=off',
            '-netdev', 'tap,id=net1,ifname=kzt0123456789ac,script=no,'
                       'downscript=no,vhost=off',
            '-device', 'virtio-net-device,netdev=net1,'
                       'mac=02:6b:0a:58:00:03',
        ] + SANDBOX, full[-8:])
        slotted = argv.build_argv(
            _config(pci_slots=2, nics=config.nics[:1]), 'kvm', 'q35',
            'host', QEMU)
        self.assertIn('virtio-net-pci,id=nic-kzt0123456789ab,'
                      'netdev=net-kzt0123456789ab,mac=02:6b:0a:58:00:02,'
                      'bus=rp0,romfile=,csum=off,host_tso4=off,'
                      'host_tso6=off,host_ecn=off,host_ufo=off', slotted)

    def test_no_nics_no_netdev(self):
        full = argv.build_argv(_config(), 'tcg', 'microvm', 'max', QEMU)
        self.assertNotIn('-netdev', full)

    def test_rejects_bad_tap_and_mac(self):
        for tap, mac in (('kz,ifname=eth0', '02:00:00:00:00:01'),
                         ('x' * 16, '02:00:00:00:00:01'),
                         ('', '02:00:00:00:00:01'),
                         ('kzt1\n', '02:00:00:00:00:01'),
                         ('kzt1', '02:00:00:00:00:01\n'),
                         ('kzt1', '01:00:00:00:00:01'),      # multicast
                         ('kzt1', '02:00:00:00:00:01,x=y'),
                         ('kzt1', '02:00:00:00:00')):
            config = _config(nics=(hv_base.Nic(tap, mac),))
            self.assertRaises(exception.HypervisorError, argv.build_argv,
                              config, 'tcg', 'microvm', 'max', QEMU)

    def test_microvm_slots_golden(self):
        config = _config(pci_slots=3, nics=(
            hv_base.Nic('kzt0123456789ab', '02:6b:0a:58:00:02'),))
        full = argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU)
        self.assertEqual(
            'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,'
            'isa-serial=on,acpi=on,pcie=on,memory-backend=mem',
            full[full.index('-machine') + 1])
        self.assertTrue(full[full.index('-append') + 1].endswith(
            ' quiet pcie_ports=native'))
        self.assertEqual([
            '-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1',
            '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2',
            '-device', 'pcie-root-port,id=rp2,bus=pcie.0,chassis=3,slot=3',
            '-netdev', 'tap,id=net-kzt0123456789ab,ifname=kzt0123456789ab,'
                       'script=no,downscript=no,vhost=off',
            '-device', 'virtio-net-pci,id=nic-kzt0123456789ab,'
                       'netdev=net-kzt0123456789ab,mac=02:6b:0a:58:00:02,'
                       'bus=rp0,romfile=',
        ] + SANDBOX, full[-12:])

    def test_q35_slots_use_acpi_hotplug(self):
        # q35 hotplugs its root ports through ACPI: no pcie_ports=native
        # (it stopped the guest from seeing hotplugged NICs), no pcie=on.
        full = argv.build_argv(_config(pci_slots=1), 'kvm', 'q35', 'host',
                               QEMU)
        self.assertNotIn('pcie_ports=native',
                         full[full.index('-append') + 1])
        self.assertEqual('q35,acpi=on,vmport=off,memory-backend=mem',
                         full[full.index('-machine') + 1])
        self.assertIn('pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1',
                      full)

    def test_no_slots_no_pcie(self):
        full = argv.build_argv(_config(), 'tcg', 'microvm', 'max', QEMU)
        self.assertNotIn('pcie=on', full[full.index('-machine') + 1])
        self.assertNotIn('pcie_ports=native',
                         full[full.index('-append') + 1])

    def test_slot_limits(self):
        nics = tuple(hv_base.Nic('kzt%d' % i, '02:00:00:00:00:0%d' % i)
                     for i in range(3))
        for config in (_config(pci_slots=2, nics=nics),
                       _config(pci_slots=argv.MAX_PCI_SLOTS + 1),
                       _config(pci_slots=-1)):
            self.assertRaises(exception.HypervisorError, argv.build_argv,
                              config, 'tcg', 'microvm', 'max', QEMU)

    def test_hotplug_qmp_arguments(self):
        dev = argv.NetDevice(2, 'kzt0123456789ab', '02:6b:0a:58:00:02',
                             slot=2, generation=7)
        self.assertEqual({'type': 'tap', 'id': 'net-kzt0123456789ab-7',
                          'ifname': 'kzt0123456789ab', 'script': 'no',
                          'downscript': 'no', 'vhost': False},
                         dev.netdev_add_args())
        self.assertEqual({'driver': 'virtio-net-pci',
                          'id': 'nic-kzt0123456789ab-7',
                          'netdev': 'net-kzt0123456789ab-7',
                          'mac': '02:6b:0a:58:00:02', 'bus': 'rp2',
                          'romfile': ''}, dev.device_add_args())
        plain = argv.NetDevice(2, 'kzt0123456789ab', '02:6b:0a:58:00:02',
                               slot=2, generation=7, checksum_offload=False)
        self.assertEqual({'driver': 'virtio-net-pci',
                          'id': 'nic-kzt0123456789ab-7',
                          'netdev': 'net-kzt0123456789ab-7',
                          'mac': '02:6b:0a:58:00:02', 'bus': 'rp2',
                          'romfile': '', 'csum': False, 'host_tso4': False,
                          'host_tso6': False, 'host_ecn': False,
                          'host_ufo': False}, plain.device_add_args())
        fixed = argv.NetDevice(0, 'kzt1', '02:00:00:00:00:01')
        self.assertIsNone(fixed.device_id)
        self.assertRaises(exception.HypervisorError, fixed.device_add_args)
        for bad in (argv.NetDevice(0, 'kz,x', '02:00:00:00:00:01', slot=0),
                    argv.NetDevice(0, 'kzt1', '02:00:00:00:00:01', slot=8)):
            self.assertRaises(exception.HypervisorError,
                              bad.netdev_add_args)


class TscTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        for name in ('_TSC_SYSFS', '_KMSG', '_CPUINFO'):
            self.useFixture(fixtures.MockPatchObject(
                argv, name, os.path.join(self.dir, name)))

    def _write(self, name, text):
        with open(os.path.join(self.dir, name), 'w') as f:
            f.write(text)

    def test_sources_in_order(self):
        self.assertIsNone(argv._read_tsc_khz())
        self._write('_CPUINFO', 'processor\t: 0\ncpu MHz\t\t: 2596.138\n')
        self.assertEqual(2596138, argv._read_tsc_khz())
        self._write('_KMSG', '6,1,2,-;tsc: Detected 2596.1 MHz processor\n')
        self.assertEqual(2596100, argv._read_tsc_khz())
        self._write('_KMSG', '6,1,2,-;tsc: Detected 2596.1 MHz processor\n'
                             '6,9,9,-;tsc: Refined TSC clocksource '
                             'calibration: 2595.991 MHz\n')
        self.assertEqual(2595991, argv._read_tsc_khz())
        self._write('_TSC_SYSFS', '2600000\n')
        self.assertEqual(2600000, argv._read_tsc_khz())

    def test_config_wins_and_host_value_is_cached(self):
        self.useFixture(fixtures.MockPatchObject(argv, '_tsc_cache', []))
        self._write('_TSC_SYSFS', '2600000\n')
        self.assertEqual(2600000, argv.host_tsc_khz())
        self._write('_TSC_SYSFS', '1\n')
        self.assertEqual(2600000, argv.host_tsc_khz())
        self.cfg.config(tsc_khz=1234, group='kata_hypervisor')
        self.assertEqual(1234, argv.host_tsc_khz())
