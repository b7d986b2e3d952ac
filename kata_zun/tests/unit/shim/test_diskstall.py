"""A VM that QEMU stopped on a full host file system ("io-error")."""

import os
from unittest import mock

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.shim import diskstall
from kata_zun.shim import server


class DiskStallTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        shim = server.Shim.__new__(server.Shim)
        shim.state_dir = self.dir
        shim.cid = 'c' * 64
        shim.timers, shim.pending, shim.waiters = [], {}, []
        shim.exited = shim.finished = shim.manually_stopped = False
        shim.logw = None
        shim.state = {'status': 'running'}
        shim.vm = mock.Mock()
        shim.vm.poll.return_value = None
        shim.vm.query_status.return_value = {'status': 'running'}
        shim._stop_vm = mock.Mock()
        self.shim = shim
        self.free = diskstall.RESUME_FREE_BYTES
        self.useFixture(fixtures.MockPatch(
            'kata_zun.shim.diskstall.host_free_bytes',
            side_effect=lambda path: self.free))

    def _tick(self):
        self.shim.timers = []
        self.shim._watch_disks()

    def test_a_running_vm_is_left_alone(self):
        self._tick()
        self.assertFalse(self.shim.vm.resume.called)
        self.assertFalse(self.shim.io_stalled)
        self.assertEqual(1, len(self.shim.timers))      # checked again

    def test_resumed_once_the_host_has_room(self):
        self.shim.vm.query_status.return_value = {'status': 'io-error'}
        self.free = diskstall.RESUME_FREE_BYTES - 1
        self._tick()
        self.assertTrue(self.shim.io_stalled)
        self.assertFalse(self.shim.vm.resume.called)
        self.free = diskstall.RESUME_FREE_BYTES
        self._tick()
        self.shim.vm.resume.assert_called_once_with()
        self.shim.vm.query_status.return_value = {'status': 'running'}
        self._tick()
        self.assertFalse(self.shim.io_stalled)
        self.assertFalse(self.shim.exited)
        self.assertFalse(self.shim._stop_vm.called)

    def test_a_paused_vm_is_not_resumed(self):
        self.shim.vm.query_status.return_value = {'status': 'paused'}
        self._tick()
        self.assertFalse(self.shim.vm.resume.called)

    def test_a_stop_asked_for_while_stalled_stops_the_vm(self):
        self.shim.vm.query_status.return_value = {'status': 'io-error'}
        self.free = 0
        self.shim.manually_stopped = True
        waiter = mock.Mock()
        responses = []
        self.shim._respond = lambda client, rid, result=None, error=None: \
            responses.append((client, rid, result))
        self.shim.waiters = [(waiter, 3, None)]
        self._tick()
        self.shim._stop_vm.assert_called_once_with()
        self.assertEqual(('exited', 137, diskstall.STALL_ERROR),
                         (self.shim.state['status'],
                          self.shim.state['exit_code'],
                          self.shim.state['error']))
        self.assertEqual([(waiter, 3, {'exited': True, 'exit_code': 137,
                                       'oom_killed': False,
                                       'error': diskstall.STALL_ERROR})],
                         responses)
        self.assertFalse(self.shim.vm.resume.called)

    def test_qmp_trouble_is_not_fatal(self):
        self.shim.vm.query_status.side_effect = exception.HypervisorError(
            reason='QMP gone')
        self._tick()
        self.assertEqual(1, len(self.shim.timers))
        self.shim.finished = True
        self._tick()
        self.assertEqual([], self.shim.timers)

    def test_any_trouble_and_vms_without_a_run_state_keep_the_shim(self):
        # (found by test_shim_hostile_guest: its fake VM has no QMP, and
        # the timer's AttributeError ended the shim's loop)
        self.shim.vm.query_status.side_effect = KeyError('surprise')
        self._tick()
        self.assertEqual(1, len(self.shim.timers))
        del self.shim.timers[:]
        del self.shim.vm.query_status
        self._tick()
        self.assertEqual(1, len(self.shim.timers))
        self.assertFalse(self.shim.vm.resume.called)

    def test_a_state_that_cannot_be_written_is_written_later(self):
        path = os.path.join(self.dir, 'state.json')
        fileutils.write_json(path, {'status': 'running'})
        with mock.patch.object(server.fileutils, 'write_json',
                               side_effect=OSError(28, 'No space left')):
            self.shim.save_state(status='exited', exit_code=3)
        self.assertTrue(self.shim.state_unsaved)
        # The record on disk is the old one, whole.
        self.assertEqual({'status': 'running'}, fileutils.read_json(path))
        self.assertEqual([], [n for n in os.listdir(self.dir)
                              if n.startswith('.tmp')])
        self._tick()
        self.assertFalse(self.shim.state_unsaved)
        self.assertEqual({'status': 'exited', 'exit_code': 3},
                         fileutils.read_json(path))

    def test_the_room_kept_lets_the_exit_status_be_written(self):
        room = os.path.join(self.dir, diskstall.ROOM_FILE)
        self.assertTrue(diskstall.keep_room(self.dir))
        self.assertEqual(diskstall.ROOM_BYTES, os.stat(room).st_size)
        # Really allocated, not a hole: freeing it gives room back.
        self.assertGreaterEqual(os.stat(room).st_blocks * 512,
                                diskstall.ROOM_BYTES)
        real_write = fileutils.write_json
        calls = []

        def write(path, obj):
            calls.append(os.path.exists(room))
            if os.path.exists(room):
                raise OSError(28, 'No space left on device')
            real_write(path, obj)
        with mock.patch.object(server.fileutils, 'write_json',
                               side_effect=write):
            self.shim.save_state(status='exited', exit_code=137)
        self.assertEqual([True, False], calls)
        self.assertFalse(self.shim.state_unsaved)
        self.assertEqual(137, fileutils.read_json(os.path.join(
            self.dir, 'state.json'))['exit_code'])
        # Taken again once the host has room.
        self.free = 0
        self._tick()
        self.assertFalse(os.path.exists(room))
        self.free = diskstall.RESUME_FREE_BYTES
        self._tick()
        self.assertTrue(os.path.exists(room))

    def test_other_write_errors_do_not_give_the_room(self):
        self.assertTrue(diskstall.keep_room(self.dir))
        with mock.patch.object(server.fileutils, 'write_json',
                               side_effect=OSError(13, 'denied')):
            self.shim.save_state(status='exited')
        self.assertTrue(self.shim.state_unsaved)
        self.assertTrue(os.path.exists(os.path.join(
            self.dir, diskstall.ROOM_FILE)))


class HostFreeBytesTestCase(base.BaseTestCase):

    def test_free_bytes_of_the_file_system(self):
        path = self.useFixture(fixtures.TempDir()).path
        with mock.patch('os.statvfs', return_value=mock.Mock(
                f_bavail=10, f_frsize=4096, f_bfree=99)) as statvfs:
            self.assertEqual(40960, diskstall.host_free_bytes(path))
        statvfs.assert_called_once_with(path)
