"""Regression tests for what the fault matrix (tools/fault-matrix.py)
found: each kill it makes leaves a container that is explained, can be
started or removed, and leaks nothing.
"""

import os
import signal
import subprocess
import sys
import time
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun.cmd import shim as shim_cmd
from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils
from kata_zun.runtime import liveness
from kata_zun.runtime import manager

CID = 'c' * 64


class FaultPointTestCase(base.BaseTestCase):

    def test_does_nothing_unless_named(self):
        self.useFixture(fixtures.EnvironmentVariable(faultpoint.ENV))
        with mock.patch('os.kill') as kill, mock.patch('os.write') as write:
            faultpoint.reached('rm')
            self.useFixture(fixtures.EnvironmentVariable(faultpoint.ENV,
                                                         'create'))
            faultpoint.reached('rm')
        kill.assert_not_called()
        write.assert_not_called()

    def test_named_point_says_so_and_stops(self):
        self.useFixture(fixtures.EnvironmentVariable(faultpoint.ENV, 'rm'))
        with mock.patch('os.kill') as kill, mock.patch('os.write') as write:
            faultpoint.reached('rm')
        kill.assert_called_once_with(os.getpid(), signal.SIGSTOP)
        self.assertEqual(
            faultpoint.MARKER + ('rm %d\n' % os.getpid()).encode(),
            write.call_args[0][1])

    def test_armed_file_stops_once_and_says_where(self):
        self.useFixture(fixtures.EnvironmentVariable(faultpoint.ENV))
        armed = os.path.join(self.useFixture(fixtures.TempDir()).path,
                             'point')
        self.useFixture(fixtures.EnvironmentVariable(faultpoint.FILE_ENV,
                                                     armed))
        with open(armed, 'w') as f:
            f.write('zun-pull\n')
        with mock.patch('os.kill') as kill, mock.patch('os.write'):
            faultpoint.reached('rm')            # another point: armed still
            self.assertTrue(os.path.exists(armed))
            faultpoint.reached('zun-pull')
            faultpoint.reached('zun-pull')      # taken: no second stop
        kill.assert_called_once_with(os.getpid(), signal.SIGSTOP)
        self.assertFalse(os.path.exists(armed))
        with open(armed + '.reached') as f:
            self.assertEqual('zun-pull %d\n' % os.getpid(), f.read())


class WaitStoppedTestCase(base.BaseTestCase):
    """A watcher waits for the stop itself, not only for the line before
    it: a SIGCONT sent in between is lost and the process stays stopped
    for good (a fault matrix cell once "hung" 400 s on it).
    """

    def _child(self, code):
        proc = subprocess.Popen([sys.executable, '-c', code],
                                stdout=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def test_waits_for_a_stop_that_comes_after_the_line(self):
        # The line, then a delay a loaded host could give, then the stop.
        proc = self._child(
            'import os, signal, sys, time\n'
            'sys.stdout.write("line\\n"); sys.stdout.flush()\n'
            'time.sleep(0.5)\n'
            'os.kill(os.getpid(), signal.SIGSTOP)\n')
        self.assertEqual(b'line\n', proc.stdout.readline())
        self.assertFalse(faultpoint.stopped(proc.pid))
        self.assertTrue(faultpoint.wait_stopped(proc.pid, 60))
        self.assertTrue(faultpoint.stopped(proc.pid))
        os.kill(proc.pid, signal.SIGCONT)
        self.assertEqual(0, proc.wait(60))

    def test_a_process_that_ends_or_never_stops_is_not_waited_for(self):
        proc = self._child('pass')
        proc.wait()
        self.assertFalse(faultpoint.stopped(proc.pid))
        self.assertFalse(faultpoint.wait_stopped(proc.pid, 60))
        running = self._child('import time; time.sleep(60)')
        t0 = time.monotonic()
        self.assertFalse(faultpoint.wait_stopped(running.pid, 0.2))
        self.assertLess(time.monotonic() - t0, 30)


class RuntimeFaultsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            writable_layer_mb=32, group='kata')
        self.rt = manager.Runtime()
        self.rt._images = mock.Mock()
        self.rt._images.get.return_value = mock.Mock(
            id='sha256:' + 'e' * 64, config={'Cmd': ['sh']},
            block_image='/nowhere/image.erofs', block_fs='erofs')
        self.useFixture(fixtures.MockPatch('kata_zun.guest.builder.find'))
        self.cleanup = self.useFixture(fixtures.MockPatch(
            'kata_zun.jail.launch.cleanup')).mock

    def _record(self, state):
        cdir = os.path.join(self.rt.containers_dir, CID)
        os.makedirs(cdir)
        fileutils.write_json(os.path.join(cdir, 'config.json'), {
            'id': CID, 'name': 'box', 'created': 1, 'image': {'id': 'i'},
            'vm': {}})
        fileutils.write_json(os.path.join(cdir, 'state.json'), state)
        return cdir

    def test_a_record_whose_creator_died_is_swept_by_the_next_create(self):
        # A CLI killed between mkdir and config.json (the create point).
        orphan = os.path.join(self.rt.containers_dir, 'a' * 64)
        os.makedirs(orphan)
        open(os.path.join(orphan, 'rw.img'), 'w').close()
        c = self.rt.create('busybox', name='box')
        self.assertFalse(os.path.exists(orphan))
        self.assertEqual([c.id], [x.id for x in self.rt.list()])

    def test_incomplete_records_swept_on_demand(self):
        # Found by tools/fault-matrix-zun.py (create x compute): zun
        # deleted the container, its half-made record stayed until the
        # next create on the host.
        orphan = os.path.join(self.rt.containers_dir, 'a' * 64)
        os.makedirs(orphan)
        open(os.path.join(orphan, 'rw.img'), 'w').close()
        whole = self._record({'status': 'created'})
        self.rt.sweep_incomplete()
        self.assertFalse(os.path.exists(orphan))
        self.assertTrue(os.path.exists(whole))

    def test_shim_killed_during_boot_is_explained(self):
        # state.json as the shim left it mid-boot, the shim gone.
        self._record({'status': 'created', 'shim_pid': 999999999,
                      'vm_pid': 999999998})
        c = self.rt.get(CID)
        self.assertEqual('created', c.status)
        self.assertIn('shim died before the container started', c.error)
        # A record the shim wrote its own error into keeps it.
        fileutils.write_json(os.path.join(c.dir, 'state.json'), {
            'status': 'created', 'error': 'the start was abandoned'})
        self.assertEqual('the start was abandoned', self.rt.get(CID).error)
        # A fresh record says nothing.
        fileutils.write_json(os.path.join(c.dir, 'state.json'),
                             {'status': 'created'})
        self.assertIsNone(self.rt.get(CID).error)

    def test_start_of_a_booted_sandbox_starts_it(self):
        # Its starter was killed after the boot, before the start step:
        # the next start must start it, not call it "already running".
        self._record({'status': 'created', 'shim_pid': 42})
        os.makedirs(self.rt._run_dir(CID))
        open(os.path.join(self.rt._run_dir(CID), 'shim.sock'), 'w').close()
        client = mock.Mock()
        client.call.side_effect = [{'main': 1}, {'error': None}]
        with mock.patch.object(liveness, 'pid_is_shim', return_value=True), \
                mock.patch.object(self.rt, 'connect',
                                  return_value=client), \
                mock.patch.object(self.rt, '_spawn_shim') as spawn:
            _c, got = self.rt.start(CID)
        spawn.assert_not_called()
        self.assertIs(client, got)
        self.assertEqual(['state', 'start'],
                         [c[0][0] for c in client.call.call_args_list])

    def test_start_while_another_boots_it_is_a_conflict(self):
        self._record({'status': 'created', 'shim_pid': 42})
        with mock.patch.object(liveness, 'pid_is_shim', return_value=True):
            exc = self.assertRaises(exception.Conflict, self.rt.start, CID)
        self.assertIn('being started', str(exc))

    def test_start_cleans_what_a_killed_shim_left(self):
        self._record({'status': 'exited', 'shim_pid': 5})
        with mock.patch.object(self.rt, '_spawn_shim',
                               side_effect=exception.ShimError(
                                   reason='the shim died')), \
                mock.patch.object(self.rt, '_wait_vm_gone') as wait:
            self.assertRaises(exception.ShimError, self.rt.start, CID)
        # Before the boot (a previous life's) and after the failed one.
        self.assertEqual([mock.call('kz-' + CID[:12])] * 2,
                         self.cleanup.call_args_list)
        wait.assert_called_once()

    def test_rm_waits_for_the_vm_before_removing_its_cgroup(self):
        self._record({'status': 'exited', 'vm_pid': 77})
        order = []
        alive = [True, True, False]

        def is_vm(pid, cid):
            order.append('poll')
            return alive.pop(0)
        self.cleanup.side_effect = lambda name: order.append('cleanup')
        with mock.patch.object(liveness, 'pid_is_vm', side_effect=is_vm), \
                mock.patch('time.sleep'):
            self.rt.remove(CID)
        self.assertEqual(['poll', 'poll', 'poll', 'cleanup'], order)
        self.assertEqual([], self.rt.list())

    def test_rm_right_after_stop_waits_for_the_teardown(self):
        # stop returned (status exited, recorded by the shim) while the
        # shim still powers the VM off: rm must wait for it, not refuse
        # an exited container as running (found by tools/soak.py).
        cdir = self._record({'status': 'exited', 'shim_pid': 42,
                             'exit_code': 0})
        alive = [True, True, False]

        def is_shim(pid, cid):
            return alive.pop(0) if len(alive) > 1 else alive[0]

        with mock.patch.object(liveness, 'pid_is_shim',
                               side_effect=is_shim), \
                mock.patch.object(self.rt, '_wait_vm_gone'):
            self.rt.remove(CID)
        self.assertFalse(os.path.exists(cdir))

    def test_rm_of_an_exited_container_whose_shim_stays(self):
        self._record({'status': 'exited', 'shim_pid': 42, 'exit_code': 0})
        with mock.patch.object(liveness, 'pid_is_shim', return_value=True), \
                mock.patch.object(manager, 'SHIM_TEARDOWN_WAIT', 0.1):
            exc = self.assertRaises(exception.Conflict, self.rt.remove, CID)
        self.assertIn('still shutting down', str(exc))
        # A running one is refused at once, as before.
        fileutils.write_json(os.path.join(self.rt.containers_dir, CID,
                                          'state.json'),
                             {'status': 'running', 'shim_pid': 42})
        with mock.patch.object(liveness, 'pid_is_shim', return_value=True):
            exc = self.assertRaises(exception.Conflict, self.rt.remove, CID)
        self.assertIn('stop it first', str(exc))


class ShimStarterGoneTestCase(base.BaseTestCase):

    def test_report_to_a_starter_gone_is_false_not_a_crash(self):
        r, w = os.pipe()
        os.close(r)
        self.assertFalse(shim_cmd._report(w, 'ok\n'))
        self.assertRaises(OSError, os.close, w)    # closed all the same
        r, w = os.pipe()
        self.assertTrue(shim_cmd._report(w, 'ok\n'))
        self.assertEqual(b'ok\n', os.read(r, 10))
        os.close(r)
        self.assertTrue(shim_cmd._report(None, 'ok\n'))

    def test_abandon_stops_the_vm_and_says_why(self):
        run_dir = self.useFixture(fixtures.TempDir()).path
        shim = mock.Mock(cid=CID)
        shim_cmd._abandon(shim, run_dir)
        shim.vm.stop.assert_called_once_with(0)
        kwargs = shim.save_state.call_args[1]
        self.assertEqual('created', kwargs['status'])
        self.assertIsNone(kwargs['shim_pid'])
        self.assertIn('abandoned', kwargs['error'])
        self.assertFalse(os.path.exists(run_dir))

    def test_boot_error_says_the_vm_died(self):
        shim = mock.Mock()
        shim.vm.poll.return_value = -9
        self.assertEqual('the VM exited during its boot (QEMU status -9): '
                         '[Errno 104] Connection reset by peer',
                         shim_cmd.boot_error(shim, ConnectionResetError(
                             104, 'Connection reset by peer')))
        shim.vm.poll.return_value = None
        self.assertEqual('no agent', shim_cmd.boot_error(
            shim, RuntimeError('no agent')))
        shim.vm = None
        self.assertEqual('no qemu', shim_cmd.boot_error(
            shim, RuntimeError('no qemu')))


class VmPidTestCase(base.BaseTestCase):
    """rm of a container whose shim was just killed: its QEMU, killed by
    the kernel in turn, may still be freeing its memory (no command line
    any more) while it is in the sandbox's cgroup (found by the fault
    matrix: the cgroup leaked).
    """

    def _proc(self, files):
        def fake_open(path, mode='r'):
            for suffix, data in files.items():
                if path.endswith(suffix):
                    if data is None:
                        raise FileNotFoundError(path)
                    return mock.mock_open(read_data=data)()
            raise AssertionError(path)
        return mock.patch('builtins.open', side_effect=fake_open)

    def test_running_exiting_and_gone(self):
        name = ('kz-' + CID[:12]).encode()
        with self._proc({'cmdline': b'qemu\0-name\0' + name + b'\0',
                         'cgroup': b''}):
            self.assertTrue(liveness.pid_is_vm(7, CID))
        with self._proc({'cmdline': b'', 'cgroup':
                         b'4:memory:/kata_zun/' + name + b'/vmm\n'}):
            self.assertTrue(liveness.pid_is_vm(7, CID))
        with self._proc({'cmdline': b'', 'cgroup': b'4:memory:/\n'}):
            self.assertFalse(liveness.pid_is_vm(7, CID))
        with self._proc({'cmdline': None, 'cgroup': None}):
            self.assertFalse(liveness.pid_is_vm(7, CID))
        self.assertFalse(liveness.pid_is_vm(None, CID))

    def test_a_cgroup_with_a_process_left_is_busy(self):
        procs = self.useFixture(fixtures.TempDir()).path
        busy = os.path.join(procs, 'busy')
        with open(busy, 'w') as f:
            f.write('31883\n')
        empty = os.path.join(procs, 'empty')
        open(empty, 'w').close()
        group = mock.Mock()
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            enabled=True, group='kata_jail')
        with mock.patch('os.geteuid', return_value=0), \
                mock.patch('kata_zun.jail.cgroup.for_sandbox',
                           return_value=group) as for_sandbox:
            group.procs_files.return_value = [empty, busy]
            self.assertTrue(liveness.vm_cgroup_busy(CID))
            group.procs_files.return_value = [empty, procs + '/gone']
            self.assertFalse(liveness.vm_cgroup_busy(CID))
            for_sandbox.side_effect = exception.JailError(reason='none')
            self.assertFalse(liveness.vm_cgroup_busy(CID))
        for_sandbox.assert_called_with('kata_zun', 'kz-' + CID[:12])
