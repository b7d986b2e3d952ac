"""Container processes in the guest agent: the process table, their
output and input, exits, exec and signals (starting them:
:mod:`kata_zun.agent.guestlaunch`).

:class:`ProcessOps` is mixed into :class:`kata_zun.agent.guest.Agent`: it
holds the process table (``procs``, ``fd_owner``, ``pid_proc``) the
agent's poll loop serves. Standard library only.
"""

import os
import select
import signal
import struct
import sys
import time

from kata_zun.agent import guestlaunch
from kata_zun.agent import guestutil
from kata_zun.agent import protocol

_num = guestutil._num
_str = guestutil._str
_strlist = guestutil._strlist
OpError = guestutil.OpError
resolve_user = guestlaunch.resolve_user

# Output is read in big chunks from 1 MiB pipes: under TCG every pass
# through the Python loop is expensive, bytes are not. Defined by the
# protocol: the host's frame limit ([kata_agent] max_frame_bytes) is
# bounded below by the frames these reads make.
OUTPUT_READ = protocol.OUTPUT_READ
# Reads of one output in a row while the host link keeps up.
OUTPUT_BURST = 4
# Output frame buffers kept for reuse (OUTPUT_READ each): enough for the
# frames queued for the host while output streams.
OUTPUT_BUFFERS = 6
# How long a reaped process may keep its output pipes open (a daemonized
# grandchild holding them) before its exit is reported anyway.
EXIT_DRAIN_GRACE = 2.0

TIOCSWINSZ = 0x5414


# ----------------------------------------------------------------- processes

class Process(object):
    def __init__(self, handle, container, tty, stdin):
        self.handle = handle
        self.container = container
        self.tty = tty
        self.wants_stdin = stdin
        self.pid = None
        self.master = None            # pty master (tty mode)
        self.stdin_fd = None          # pipe write end (interactive)
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.out_fds = {}             # fd -> frame type
        self.status = None            # (exit_code, signal) once reaped
        self.reaped_at = None
        self.reported = False


class ProcessOps(guestlaunch.LaunchOps):
    """The process half of the agent (a mixin of ``Agent``)."""

    def _drain_signals(self):
        try:
            while os.read(self.sig_r, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.pid_proc.pop(pid, None)
            if proc is not None:
                self._reaped(proc, status)

    def _reaped(self, proc, status):
        if proc is proc.container.main:
            self._release_join_fds(proc.container)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            proc.status = (128 + sig, sig)
        else:
            proc.status = (os.WEXITSTATUS(status), 0)
        proc.reaped_at = time.monotonic()
        on_exit = getattr(proc, 'on_exit', None)
        if on_exit is not None:
            proc.on_exit = None
            on_exit()

    def _proc_event(self, fd, ev):
        proc = self.fd_owner[fd]
        if fd == proc.stdin_fd and ev & (select.POLLOUT | select.POLLERR):
            self._write_stdin(proc)
        if fd in proc.out_fds and ev & (select.POLLIN | select.POLLHUP |
                                        select.POLLERR):
            self._read_output(proc, fd)

    def _read_output(self, proc, fd):
        # While the port takes everything at once, read on: a pass
        # through the poll loop costs more under TCG than a read, and a
        # full read means more is waiting. Bounded, so that one busy
        # process does not hold up the others for long.
        for _ in range(OUTPUT_BURST):
            buf = self._output_buffer()
            try:
                frame = protocol.read_stream(fd, proc.out_fds[fd],
                                             proc.handle, buf)
            except BlockingIOError:
                return
            except OSError:
                frame = None           # EIO: pty closed by the last user
            if not frame:
                break
            full = len(frame) == len(buf)
            # One buffer, header included: the port takes at most 32 KiB
            # a write, and a separate header would cost a write (and a
            # virtqueue buffer, and a wake-up of the host) of its own.
            self.chan.send(frame)
            del frame
            if not full or self.chan.pending_out:
                return
        else:
            return
        del self.fd_owner[fd]
        del proc.out_fds[fd]
        if fd == proc.master:
            proc.master = None
            proc.stdin_fd = None
        os.close(fd)

    def _output_buffer(self):
        """:returns: a frame buffer no queued frame uses: one of a few
        kept for reuse, else a new one. A new bytearray is zeroed (or
        fresh pages faulted in) first, which under TCG costs about as
        much as copying the output once more.
        """
        pool = self.__dict__.setdefault('_out_pool', [])
        for buf in pool:
            # Held by the pool, this loop and getrefcount only: no view
            # of it (a queued frame) is left.
            if sys.getrefcount(buf) <= 3:
                return buf
        buf = bytearray(protocol.STREAM_HEAD.size + OUTPUT_READ)
        if len(pool) < OUTPUT_BUFFERS:
            pool.append(buf)
        return buf

    def _write_stdin(self, proc):
        fd = proc.stdin_fd
        try:
            while proc.stdin_buf:
                n = os.write(fd, proc.stdin_buf[:65536])
                del proc.stdin_buf[:n]
        except BlockingIOError:
            return
        except OSError:
            proc.stdin_buf.clear()
            proc.stdin_eof = True
        if proc.stdin_eof and not proc.stdin_buf:
            if proc.master is None:
                self.fd_owner.pop(fd, None)
                os.close(fd)
                proc.stdin_fd = None
            else:
                # A tty has no half-close: send EOT like a terminal would.
                try:
                    os.write(fd, b'\x04')
                except OSError:
                    pass
                proc.stdin_eof = False
                proc.stdin_fd = None

    def _report_exits(self):
        now = time.monotonic()
        for proc in list(self.procs.values()):
            if proc.reported or proc.reaped_at is None:
                continue
            if proc.out_fds and not self.chan.pending_out:
                # Most processes closed their output as they exited: read
                # it to the end now rather than a pass of the loop later
                # (a pass costs more than a read under TCG).
                for fd in list(proc.out_fds):
                    self._read_output(proc, fd)
            if proc.out_fds and now < proc.reaped_at + EXIT_DRAIN_GRACE:
                continue
            for fd in list(proc.out_fds):
                self._read_output(proc, fd)
                if fd in proc.out_fds:
                    del self.fd_owner[fd]
                    del proc.out_fds[fd]
                    os.close(fd)
            if proc.stdin_fd is not None:
                self.fd_owner.pop(proc.stdin_fd, None)
                if proc.stdin_fd != proc.master:
                    os.close(proc.stdin_fd)
                proc.stdin_fd = None
            proc.reported = True
            event = {'event': 'exit', 'proc': proc.handle,
                     'container': proc.container.id,
                     'exit_code': proc.status[0], 'signal': proc.status[1],
                     'oom_killed': False}
            if proc is proc.container.main:
                event['oom_killed'] = self._oom_killed(proc.container)
                self._kill_all(proc.container)
            self.chan.send(protocol.encode_json(protocol.EVENT, event))
            del self.procs[proc.handle]

    def _new_proc(self, c, tty, stdin):
        proc = Process(self.next_handle, c, tty, stdin)
        self.next_handle += 1
        self.procs[proc.handle] = proc
        return proc

    def op_exec(self, args):
        c = self._container(args)
        if c.init_pid is None or c.init_pid not in self.pid_proc:
            raise OpError('state', 'container is not running')
        argv = _strlist(args, 'argv', required=True)
        user = c.user
        if args.get('user'):
            user = resolve_user(c.rootfs, _str(args, 'user', maxlen=256))
        env = self._env(c.spec['env'] + _strlist(args, 'env'), user)
        proc = self._new_proc(c, bool(args.get('tty')),
                              bool(args.get('stdin')))
        error = self._spawn(c, proc, argv, env,
                            _str(args, 'workdir') or c.spec['workdir'],
                            user, join=True)
        return {'proc': proc.handle, 'pid': proc.pid, 'error': error}

    def op_signal(self, args):
        handle = _num(args, 'proc', minimum=1)
        sig = int(_num(args, 'signal', signal.SIGTERM, minimum=1))
        if sig >= signal.NSIG:
            raise OpError('invalid', 'bad signal')
        proc = self.procs.get(handle)
        if proc is None or proc.pid is None or proc.reaped_at:
            raise OpError('notfound', 'no such running process')
        os.kill(proc.pid, sig)
        return {}

    def op_resize(self, args):
        proc = self.procs.get(_num(args, 'proc', minimum=1))
        if proc is None or proc.master is None:
            raise OpError('notfound', 'no such process with a tty')
        rows = int(_num(args, 'rows', 24, minimum=1))
        cols = int(_num(args, 'cols', 80, minimum=1))
        import fcntl
        fcntl.ioctl(proc.master, TIOCSWINSZ,
                    struct.pack('HHHH', min(rows, 65535), min(cols, 65535),
                                0, 0))
        return {}
