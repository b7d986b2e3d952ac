import os
import re
from unittest import mock

import fixtures
from oslotest import base

from kata_zun.agent import guestidentity

UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}'
                     r'-[0-9a-f]{12}\n$')


class GuestIdentityTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def test_container_ids_are_new_each_time(self):
        one = guestidentity.new_container_ids(self.tmp)
        with open(os.path.join(self.tmp, 'boot_id')) as f:
            boot_id = f.read()
        with open(os.path.join(self.tmp, 'machine-id')) as f:
            machine_id = f.read()
        self.assertRegex(boot_id, UUID_RE)
        self.assertRegex(machine_id, r'^[0-9a-f]{32}\n$')
        self.assertEqual(one['boot_id'] + '\n', boot_id)
        two = guestidentity.new_container_ids(self.tmp)
        self.assertNotEqual(one, two)

    def test_ids_never_written_through_a_link(self):
        os.symlink('/etc/passwd', os.path.join(self.tmp, 'boot_id'))
        self.assertRaises(OSError, guestidentity.new_container_ids, self.tmp)

    def test_bind_over_boot_id_and_machine_id(self):
        cdir = os.path.join(self.tmp, 'c')
        root = os.path.join(self.tmp, 'root')
        os.makedirs(cdir)
        os.makedirs(root + '/etc')
        # An image's link at /etc/machine-id is replaced, never followed.
        os.symlink('/etc/shadow', root + '/etc/machine-id')
        guestidentity.new_container_ids(cdir)
        mount = mock.Mock()

        def write_file(path, data):
            with open(path, 'w') as f:
                f.write(data)
        guestidentity.bind_container_ids(cdir, root, mount, write_file, 4096)
        self.assertEqual([
            mock.call(cdir + '/boot_id',
                      root + '/proc/sys/kernel/random/boot_id', None, 4096),
            mock.call(cdir + '/machine-id', root + '/etc/machine-id', None,
                      4096)], mount.call_args_list)
        self.assertFalse(os.path.islink(root + '/etc/machine-id'))

    def test_revalidate_rebinds_every_virtio_blk_device(self):
        driver = os.path.join(self.tmp, 'virtio_blk')
        os.makedirs(driver)
        for name in ('virtio2', 'virtio5', 'module'):
            os.mkdir(os.path.join(driver, name))
        for name in ('bind', 'unbind'):
            open(os.path.join(driver, name), 'w').close()
        writes = []
        real_write = os.write

        def record(fd, data):
            writes.append((os.readlink('/proc/self/fd/%d' % fd), data))
            return real_write(fd, data)
        with mock.patch.object(os, 'write', side_effect=record):
            self.assertEqual(2, guestidentity.revalidate_disks(driver))
        self.assertEqual(sorted([
            (driver + '/unbind', b'virtio2'), (driver + '/bind', b'virtio2'),
            (driver + '/unbind', b'virtio5'), (driver + '/bind', b'virtio5'),
        ]), sorted(writes))
        # Unbind comes before bind for each device.
        self.assertLess(writes.index((driver + '/unbind', b'virtio2')),
                        writes.index((driver + '/bind', b'virtio2')))
        self.assertEqual(0, guestidentity.revalidate_disks(
            os.path.join(self.tmp, 'none')))

    def test_renew_reseeds_and_only_restored_guests_reprobe(self):
        with mock.patch.object(guestidentity, 'reseed') as reseed, \
                mock.patch.object(guestidentity, 'probe_disks') as probe, \
                mock.patch.object(guestidentity, 'revalidate_disks',
                                  return_value=3) as reprobe:
            self.assertEqual({'restored': False, 'disks': 0},
                             guestidentity.renew(None, b'x' * 64))
            reseed.assert_called_once_with(b'x' * 64)
            reprobe.assert_not_called()
            self.assertEqual({'restored': True, 'disks': 3},
                             guestidentity.renew(None, b'', restored=True))
            # Reseeded even without host entropy (the CRNG is forced to
            # reseed from what the guest kernel has).
            self.assertEqual(2, reseed.call_count)
            # The disk driver is loaded (if it is not yet) either way.
            self.assertEqual(2, probe.call_count)

    def _bus(self, bound=('virtio0', 'virtio1')):
        """A stand-in /sys/bus/virtio (never the host's): a console, two
        disks (``bound`` ones have a driver) and a network device.
        """
        bus = os.path.join(self.tmp, 'bus')
        for name, kind in (('virtio0', '0x0003'), ('virtio1', '0x0002'),
                           ('virtio2', '0x0001'), ('virtio3', '0x0002')):
            path = os.path.join(bus, 'devices', name)
            os.makedirs(path)
            with open(os.path.join(path, 'device'), 'w') as f:
                f.write(kind + '\n')
            if name in bound:
                os.symlink('../../drivers/other', os.path.join(path,
                                                               'driver'))
        with open(os.path.join(bus, 'drivers_autoprobe'), 'w') as f:
            f.write('1')
        os.makedirs(os.path.join(bus, 'drivers'))
        return bus

    def _modprobe(self, code, bus):
        """A stand-in for the guest's modprobe (the host's must not
        run): it records its arguments and the bus's autoprobe setting
        when it ran, and registers the driver (makes its directory).
        """
        script = os.path.join(self.tmp, 'modprobe')
        with open(script, 'w') as f:
            f.write('#!/bin/sh\necho "$@" > %s/args\n'
                    'cat %s/drivers_autoprobe > %s/autoprobe\n'
                    'mkdir %s/drivers/virtio_blk\nexit %d\n'
                    % (self.tmp, bus, self.tmp, bus, code))
        os.chmod(script, 0o755)
        return script

    def _read(self, *path):
        with open(os.path.join(*path)) as f:
            return f.read()

    def _sys_block(self):
        """A /sys/block of two virtio disks (one without writeback
        throttling) and a loop device.
        """
        root = os.path.join(self.tmp, 'block')
        for name, wbt in (('vda', '75000'), ('vdb', None), ('loop0', '2000')):
            os.makedirs(os.path.join(root, name, 'queue'))
            if wbt is not None:
                with open(os.path.join(root, name, 'queue',
                                       'wbt_lat_usec'), 'w') as f:
                    f.write(wbt)
        return root

    def _wbt(self, root, name):
        with open(os.path.join(root, name, 'queue', 'wbt_lat_usec')) as f:
            return f.read()

    def test_probe_disks_loads_the_driver_once(self):
        bus = self._bus()
        script = self._modprobe(0, bus)
        block = self._sys_block()
        # Loaded now, with the bus's autoprobe as it was: the driver
        # probed every disk itself.
        self.assertEqual(-1, guestidentity.probe_disks(bus, script, block))
        self.assertEqual('1', self._read(self.tmp, 'autoprobe'))
        # The VM's disks without writeback throttling; nothing else.
        self.assertEqual('0', self._wbt(block, 'vda'))
        self.assertEqual('2000', self._wbt(block, 'loop0'))
        self.assertEqual('virtio_blk\n', self._read(self.tmp, 'args'))
        os.unlink(os.path.join(self.tmp, 'args'))
        # There already (loaded, or built in): nothing run; the disks
        # no driver has (virtio3 here; virtio1 has one) are bound.
        writes = []
        with mock.patch.object(guestidentity, '_write',
                               side_effect=lambda p, d: writes.append((p, d))):
            self.assertEqual(1, guestidentity.probe_disks(bus, script,
                                                          block))
        self.assertEqual([(os.path.join(bus, 'drivers', 'virtio_blk',
                                        'bind'), b'virtio3')], writes)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'args')))

    def test_unbound_disks_are_block_devices_without_a_driver(self):
        bus = self._bus(bound=())
        self.assertEqual(['virtio1', 'virtio3'],
                         guestidentity.unbound_disks(bus))
        # A device whose type cannot be read is not a disk of ours.
        with open(os.path.join(bus, 'devices', 'virtio1', 'device'),
                  'w') as f:
            f.write('junk')
        os.unlink(os.path.join(bus, 'devices', 'virtio3', 'device'))
        self.assertEqual([], guestidentity.unbound_disks(bus))

    def test_template_loads_the_driver_with_autoprobe_off(self):
        bus = self._bus(bound=())
        script = self._modprobe(0, bus)
        self.assertTrue(guestidentity.load_disk_driver(bus, script))
        # modprobe ran while the bus did not bind new drivers to devices,
        # and the setting is back afterwards.
        self.assertEqual('0', self._read(self.tmp, 'autoprobe'))
        self.assertEqual('1', self._read(bus, 'drivers_autoprobe'))
        self.assertEqual('virtio_blk\n', self._read(self.tmp, 'args'))
        os.unlink(os.path.join(self.tmp, 'args'))
        # Loaded already: nothing run.
        self.assertFalse(guestidentity.load_disk_driver(bus, script))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'args')))

    def test_template_driver_load_failure_restores_autoprobe(self):
        bus = self._bus(bound=())
        script = self._modprobe(3, bus)
        e = self.assertRaises(OSError, guestidentity.load_disk_driver, bus,
                              script)
        self.assertIn('exited with 3', str(e))
        self.assertEqual('1', self._read(bus, 'drivers_autoprobe'))

    def test_quiet_disks_without_a_sys_block(self):
        self.assertEqual(0, guestidentity.quiet_disks(
            os.path.join(self.tmp, 'none')))
        self.assertEqual(1, guestidentity.quiet_disks(self._sys_block()))

    def test_probe_disks_failure_is_an_error(self):
        bus = self._bus()
        script = self._modprobe(1, bus)
        os.rmdir(os.path.join(bus, 'drivers'))
        block = self._sys_block()
        e = self.assertRaises(OSError, guestidentity.probe_disks, bus,
                              script, block)
        self.assertEqual('75000', self._wbt(block, 'vda'))
        self.assertIn('exited with 1', str(e))

    def test_warm_up_imports_and_loads_the_disk_driver(self):
        # Mocked: the host's own /sys/bus/virtio must never be touched,
        # nor a BPF program loaded into the host's kernel.
        from kata_zun.agent import guestdev
        from kata_zun.agent import guestnet
        from kata_zun.agent import guestspawn
        with mock.patch.object(guestidentity, 'load_disk_driver') as load, \
                mock.patch.object(guestdev, 'program') as program, \
                mock.patch.object(guestnet, 'loopback_up') as lo, \
                mock.patch.object(guestspawn, 'start_server') as spawn, \
                mock.patch.object(guestidentity, 'gc') as gc, \
                mock.patch('importlib.import_module') as imp:
            gc.freeze.side_effect = lambda: self.assertTrue(
                spawn.called and gc.collect.called)
            self.assertEqual(len(guestidentity.WARM_MODULES),
                             guestidentity.warm_up())
        # The heap frozen last, once the rest made what it makes.
        gc.freeze.assert_called_once_with()
        load.assert_called_once_with()
        program.assert_called_once_with(mock.ANY)
        lo.assert_called_once_with()
        spawn.assert_called_once_with()
        self.assertEqual([mock.call(n) for n in guestidentity.WARM_MODULES],
                         imp.call_args_list)
