import os
import subprocess
import sys
import tempfile
import textwrap
import time
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.hypervisor.qemu import qmp
from kata_zun.hypervisor.qemu import vm as qemu_vm

# Stands in for QEMU: serves QMP on the socket named on its command line,
# logs every command, exits on "quit" (or ignores it with IGNORE_QUIT).
FAKE_QEMU = '''#!%(python)s
import json, os, socket, sys
args = sys.argv[1:]
qmp = [a for a in args if a.startswith('socket,id=qmp,fd=')][0]
srv = socket.socket(fileno=int(qmp.split('fd=')[1].split(',')[0]))
path = srv.getsockname()
conn, _ = srv.accept()
f = conn.makefile('rb')
conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\\n')
log = open(os.path.join(os.path.dirname(path), 'commands'), 'a')
for line in f:
    msg = json.loads(line)
    log.write(msg['execute'] + '\\n')
    log.flush()
    ret = {'status': 'running', 'running': True} \\
        if msg['execute'] == 'query-status' else {}
    conn.sendall(json.dumps({'return': ret, 'id': msg['id']}).encode() +
                 b'\\n')
    if msg['execute'] == 'quit' and '%(ignore_quit)s' != 'yes':
        sys.exit(0)
'''


class QemuVMTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(accelerator='tcg', tsc_khz=1000000,
                        group='kata_hypervisor')
        self.dir = tempfile.mkdtemp(prefix='kzt', dir='/tmp')
        self.addCleanup(lambda: subprocess.call(['rm', '-rf', self.dir]))
        self.config = hv_base.VMConfig(
            name='t', vcpus=1, memory_mb=128, kernel='/k', initrd='/i',
            run_dir=os.path.join(self.dir, 'vm'),
            console_log=os.path.join(self.dir, 'console.log'))

    def _qemu(self, body):
        path = os.path.join(self.dir, 'qemu')
        with open(path, 'w') as f:
            f.write(body)
        os.chmod(path, 0o755)
        return path

    def _fake_qemu(self, ignore_quit=False):
        return self._qemu(FAKE_QEMU % {
            'python': sys.executable,
            'ignore_quit': 'yes' if ignore_quit else 'no'})

    def _commands(self):
        with open(os.path.join(self.config.run_dir, 'commands')) as f:
            return f.read().split()

    def test_qemu_exits_at_start(self):
        qemu = self._qemu('#!/bin/sh\necho "bad option -foo" >&2\nexit 3\n')
        hv = qemu_vm.QemuHypervisor(qemu_path=qemu, jailed=False)
        exc = self.assertRaises(exception.HypervisorError, hv.start,
                                self.config)
        self.assertIn('status 3', str(exc))
        self.assertIn('bad option -foo', str(exc))

    def test_lifecycle_quit_path(self):
        hv = qemu_vm.QemuHypervisor(qemu_path=self._fake_qemu(),
                                    jailed=False)
        vm = hv.start(self.config)
        self.assertEqual(os.path.join(self.config.run_dir, 'agent.sock'),
                         vm.agent_socket)
        self.assertIsNone(vm.poll())
        vm.pause()
        vm.resume()
        self.assertTrue(vm.query_status()['running'])
        self.assertIsNone(vm.wait(0.01))
        vm.stop(0.1)
        self.assertEqual(0, vm.poll())
        self.assertEqual(['qmp_capabilities', 'stop', 'cont', 'query-status',
                          'quit'], self._commands())
        self.assertFalse(os.path.exists(vm.qmp_socket))

    def test_stop_kills_when_quit_is_ignored(self):
        hv = qemu_vm.QemuHypervisor(qemu_path=self._fake_qemu(True),
                                    jailed=False)
        vm = hv.start(self.config)
        self.useFixture(fixtures.MockPatchObject(qemu_vm, 'QUIT_GRACE', 0.2))
        vm.stop(0)
        self.assertEqual(-9, vm.poll())
        self.assertRaises(ProcessLookupError, os.kill, vm.pid, 0)

    def test_child_dies_with_its_owner(self):
        # The owner spawns a long sleep, prints its pid and exits.
        owner = subprocess.run(
            [sys.executable, '-c', textwrap.dedent('''
                import sys
                from kata_zun.hypervisor.qemu import vm
                p = vm.spawn(['sleep', '60'], open(sys.argv[1], 'wb'))
                print(p.pid)
            '''), os.path.join(self.dir, 'log')],
            stdout=subprocess.PIPE, check=True)
        pid = int(owner.stdout)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open('/proc/%d/stat' % pid) as f:
                    if f.read().split()[2] == 'Z':
                        break       # dead, waiting for init to reap it
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            self.fail('child outlived its owner')


class NicHotplugTestCase(base.BaseTestCase):
    """QemuVM's slot bookkeeping and QMP sequences (QMP itself is the
    golden-tested argv part; the real path is test_zun_neutron_e2e).
    """

    def setUp(self):
        super().setUp()
        self.qmp = qmp
        self.config = hv_base.VMConfig(
            name='t', vcpus=1, memory_mb=128, kernel='/k', initrd='/i',
            run_dir='/nonexistent', console_log='/nonexistent/c',
            nics=(hv_base.Nic('kzt0', '02:00:00:00:00:01'),), pci_slots=2)
        self.vm = qemu_vm.QemuVM(mock.Mock(), self.config, None, '/l',
                                 '/q', '/a')
        self.calls = []
        self.errors = {}
        self.present = set()

        def execute(cmd, args=None, timeout=10.0, fds=()):
            self.calls.append((cmd, (args or {}).get('id')))
            if cmd == 'getfd':
                # The tap's fd goes along with the command.
                self.assertEqual(1, len(fds))
            if cmd in self.errors:
                raise self.errors.pop(cmd)
            if cmd == 'qom-list':
                return [{'name': n} for n in sorted(self.present)]
            return {}
        self.vm.execute = execute
        # The tap is opened here (QEMU may be jailed): any fd stands in.
        self.useFixture(fixtures.MockPatch(
            'kata_zun.hypervisor.qemu.handles.open_tap',
            side_effect=lambda tap: os.open(os.devnull, os.O_RDONLY)))

    def test_add_into_free_slot_then_full(self):
        self.vm.add_nic(hv_base.Nic('kzt1', '02:00:00:00:00:02'))
        self.assertEqual([('getfd', None), ('netdev_add', 'net-kzt1-1'),
                          ('device_add', 'nic-kzt1-1')], self.calls)
        exc = self.assertRaises(exception.NicHotplugError, self.vm.add_nic,
                                hv_base.Nic('kzt2', '02:00:00:00:00:03'))
        self.assertIn('all 2 NIC slots are taken', str(exc))
        self.assertRaises(exception.NicHotplugError, self.vm.add_nic,
                          hv_base.Nic('kzt1', '02:00:00:00:00:02'))

    def test_failed_device_add_removes_its_netdev(self):
        self.errors['device_add'] = self.qmp.QMPCommandError(
            'device_add', 'GenericError', 'Bus rp1 is full')
        exc = self.assertRaises(exception.NicHotplugError, self.vm.add_nic,
                                hv_base.Nic('kzt1', '02:00:00:00:00:02'))
        self.assertIn('Bus rp1 is full', str(exc))
        self.assertEqual(('netdev_del', 'net-kzt1-1'), self.calls[-1])
        # The slot is still free.
        self.vm.add_nic(hv_base.Nic('kzt1', '02:00:00:00:00:02'))

    def test_remove_after_the_guest_let_go(self):
        # The boot-time NIC lives in slot 0 and can be removed too.
        self.errors['device_del'] = self.qmp.QMPCommandError(
            'device_del', 'DeviceNotFound', "Device 'nic-kzt0' not found")
        self.assertTrue(self.vm.remove_nic('kzt0'))
        self.assertEqual([('device_del', 'nic-kzt0'),
                          ('netdev_del', 'net-kzt0')], self.calls)
        self.assertRaises(exception.NicHotplugError, self.vm.remove_nic,
                          'kzt0')

    def test_remove_from_an_uncooperative_guest(self):
        # device_del is accepted but the guest keeps the device: the tap
        # is cut at once, the slot stays taken until the device is gone.
        self.present = {'nic-kzt0'}
        self.assertFalse(self.vm.remove_nic('kzt0'))
        self.assertEqual(('netdev_del', 'net-kzt0'), self.calls[-1])
        self.vm.add_nic(hv_base.Nic('kzt1', '02:00:00:00:00:02'))
        self.assertRaises(exception.NicHotplugError, self.vm.add_nic,
                          hv_base.Nic('kzt2', '02:00:00:00:00:03'))
        self.present = set()          # the guest let go at last
        self.vm.add_nic(hv_base.Nic('kzt2', '02:00:00:00:00:03'))
        self.assertIn(('device_add', 'nic-kzt2-2'), self.calls)

    def test_vm_without_slots(self):
        vm = qemu_vm.QemuVM(mock.Mock(), hv_base.VMConfig(
            name='t', vcpus=1, memory_mb=128, kernel='/k', initrd='/i',
            run_dir='/x', console_log='/x/c'), None, '/l', '/q', '/a')
        exc = self.assertRaises(exception.NicHotplugError, vm.add_nic,
                                hv_base.Nic('kzt1', '02:00:00:00:00:02'))
        self.assertIn('without hotplug slots', str(exc))


class WaitExitTestCase(base.BaseTestCase):
    """``_wait_exit`` wakes when the process ends (a pidfd), not on a
    poll interval, leaves it to be reaped, and is bounded.
    """

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))

    def test_wakes_on_exit_and_does_not_reap(self):
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, '-c',
                                 'import os; os.read(0, 1)'], stdin=r)
        os.close(r)
        self.addCleanup(proc.kill)
        os.write(w, b'x')         # let it exit now
        os.close(w)
        self.assertTrue(qemu_vm._wait_exit(proc.pid, 50))
        # Ended (a zombie until reaped): the caller's poll reaps it.
        self.assertEqual(0, proc.poll())

    def test_bounded_and_gone_processes(self):
        proc = subprocess.Popen(['sleep', '30'])
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.assertTrue(qemu_vm._wait_exit(proc.pid, 0.05))
        self.assertIsNone(proc.poll())
        proc.kill()
        proc.wait()
        # A pid that names no process (reaped): the caller waits its own
        # way (Popen knows it is done).
        self.assertFalse(qemu_vm._wait_exit(proc.pid, 50))

    def test_without_pidfds_the_wait_still_waits(self):
        vm = qemu_vm.QemuVM.__new__(qemu_vm.QemuVM)
        vm._proc = subprocess.Popen([sys.executable, '-c',
                                     'import time; time.sleep(0.3)'])
        self.addCleanup(vm._proc.wait)
        self.addCleanup(vm._proc.kill)
        with mock.patch.object(os, 'pidfd_open',
                               side_effect=OSError(38, 'ENOSYS')):
            self.assertEqual(0, vm.wait(50))
