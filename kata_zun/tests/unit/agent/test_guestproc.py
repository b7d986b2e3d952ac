"""The agent's process half: output frame buffers, what an exec joins."""

import os
import shutil
import tempfile

from oslotest import base

from kata_zun.agent import guest
from kata_zun.agent import guestproc
from kata_zun.agent import protocol


class OutputBufferTestCase(base.BaseTestCase):

    def test_reused_only_once_no_frame_uses_it(self):
        ops = guestproc.ProcessOps()
        first = ops._output_buffer()
        self.assertEqual(protocol.STREAM_HEAD.size + guestproc.OUTPUT_READ,
                         len(first))
        queued = memoryview(first)[:10]     # a frame waiting to go out
        first_id = id(first)
        del first                           # only the pool and the frame
        self.assertNotEqual(first_id, id(ops._output_buffer()))
        queued.release()                    # it went out
        self.assertEqual(first_id, id(ops._output_buffer()))

    def test_the_pool_is_bounded(self):
        ops = guestproc.ProcessOps()
        views = [memoryview(ops._output_buffer())
                 for _ in range(guestproc.OUTPUT_BUFFERS + 5)]
        self.assertEqual(guestproc.OUTPUT_BUFFERS, len(ops._out_pool))
        self.assertEqual(len(views), len({id(v.obj) for v in views}))


class JoinFdsTestCase(base.BaseTestCase):
    """The namespaces, root and cgroup an exec joins are opened once per
    main process. Here the "container" is this test process (its own
    /proc entries, read only) with a scratch directory as its cgroup.
    """

    def setUp(self):
        super().setUp()
        self.ops = guestproc.ProcessOps()
        self.ops.procs = {}
        self.ops.next_handle = 1
        self.c = guest.Container('c1', {})
        self.c.cgroup = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.c.cgroup)
        self.c.main = self.ops._new_proc(self.c, False, False)
        self.c.init_pid = os.getpid()

    @staticmethod
    def open_fds():
        return set(os.listdir('/proc/self/fd'))

    def test_opened_at_the_first_exec_and_kept(self):
        before = self.open_fds()
        ns_fds, root_fd, cgroup_fd = self.ops._join_fds(self.c)
        self.assertEqual({'pid', 'ipc', 'uts', 'cgroup', 'mnt'},
                         set(ns_fds))
        self.assertEqual(7, len(self.open_fds() - before))
        self.assertEqual((ns_fds, root_fd, cgroup_fd),
                         self.ops._join_fds(self.c))
        self.assertEqual(7, len(self.open_fds() - before))
        self.ops._release_join_fds(self.c)

    def test_closed_when_the_main_process_is_reaped(self):
        before = self.open_fds()
        self.ops._join_fds(self.c)
        other = self.ops._new_proc(self.c, False, False)
        self.ops._reaped(other, 0)         # an exec'd process: kept
        self.assertEqual(7, len(self.open_fds() - before))
        self.ops._reaped(self.c.main, 0)
        self.assertEqual(before, self.open_fds())
        self.assertIsNone(self.c.join_fds)

    def test_a_new_main_process_gets_its_own(self):
        before = self.open_fds()
        self.ops._join_fds(self.c)
        self.c.init_pid = os.getppid()     # a restart: another process
        ns_fds, _root, _cg = self.ops._join_fds(self.c)
        self.assertEqual(os.getppid(), self.c.join_fds[0])
        self.assertEqual(7, len(self.open_fds() - before))
        self.ops._release_join_fds(self.c)
        self.assertEqual(before, self.open_fds())

    def test_a_gone_container_leaks_nothing(self):
        before = self.open_fds()
        self.c.cgroup = os.path.join(self.c.cgroup, 'gone')
        self.assertRaises(guestproc.OpError, self.ops._join_fds, self.c)
        self.assertEqual(before, self.open_fds())
        self.assertIsNone(self.c.join_fds)


class ReadToEofTestCase(base.BaseTestCase):

    def test_bounded_and_closed(self):
        from kata_zun.agent import guestlaunch
        r, w = os.pipe()
        os.write(w, b'x' * 10000)
        os.close(w)
        self.assertEqual(b'x' * 4096, guestlaunch._read_to_eof(r, 4096))
        self.assertRaises(OSError, os.fstat, r)
