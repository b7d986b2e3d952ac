"""Starting container processes in the guest agent: a container's main
process (into new namespaces) and a process joining a running container
(an exec, through the small spawn helper when it is there), their stdio,
confinement and user.

:class:`LaunchOps` is mixed into :class:`kata_zun.agent.guestproc.
ProcessOps`: it adds what it starts to the process table that class
serves. Standard library only.
"""

import errno
import gc
import os
import signal
import time

from kata_zun.agent import guestcaps
from kata_zun.agent import guestroot
from kata_zun.agent import guestseccomp
from kata_zun.agent import guestspawn
from kata_zun.agent import guestutil
from kata_zun.agent import protocol

_check = guestutil._check
libc = guestutil.libc
OpError = guestutil.OpError
read_file = guestutil.read_file
write_file = guestutil.write_file

DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
TIOCSCTTY = 0x540E
SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000
# What an exec joins besides the PID namespace, in this order (mount
# last: the others are found through /proc of the agent's mounts).
JOINED_NAMESPACES = ('ipc', 'uts', 'cgroup', 'mnt')
FORK_REFUSED = ('cannot fork in the container: it is at its pids limit '
                '(or out of memory)')
# Our own PID namespace (an fd), to return to after a clone into a
# container's.
_own_pidns = None
_last_cap = None


# ---------------------------------------------------------- users and groups

def _parse_db(path):
    try:
        text = read_file(path).decode('utf-8', 'replace')
    except OSError:
        return []
    return [line.split(':') for line in text.splitlines()
            if line and not line.startswith('#')]


def resolve_user(rootfs, spec):
    """Resolve a Docker-style user spec inside the container rootfs.

    :returns: (uid, gid, [supplementary gids], home)
    :raises: OpError if a name is not found.
    """
    user, _, group = (spec or '').partition(':')
    passwd = _parse_db(rootfs + '/etc/passwd')
    uid, gid, home, name = 0, 0, '/', 'root'
    entry = None
    if user:
        for fields in passwd:
            if len(fields) >= 7 and (fields[0] == user or
                                     (user.isdigit() and fields[2] == user)):
                entry = fields
                break
        if entry is None and not user.isdigit():
            raise OpError('user', 'unable to find user %s: no matching '
                          'entries in passwd file' % user)
        if entry is not None:
            name, uid, gid, home = (entry[0], int(entry[2]), int(entry[3]),
                                    entry[5] or '/')
        else:
            uid, name = int(user), None
    else:
        for fields in passwd:
            if len(fields) >= 7 and fields[2] == '0':
                home = fields[5] or '/'
                break
    groups = _parse_db(rootfs + '/etc/group')
    if group:
        for fields in groups:
            if len(fields) >= 3 and (fields[0] == group or
                                     (group.isdigit() and
                                      fields[2] == group)):
                gid = int(fields[2])
                break
        else:
            if not group.isdigit():
                raise OpError('user', 'unable to find group %s: no '
                              'matching entries in group file' % group)
            gid = int(group)
    extra = []
    if name:
        for fields in groups:
            if len(fields) >= 4 and name in fields[3].split(','):
                try:
                    extra.append(int(fields[2]))
                except ValueError:
                    pass
    return uid, gid, extra, home


def last_cap():
    """:returns: the kernel's highest capability (read once, from the
    guest's own /proc: call it first outside any container root).
    """
    global _last_cap
    if _last_cap is None:
        _last_cap = guestcaps.last_cap()
    return _last_cap


def clone_into(cgroup_fd, pidns_fd):
    """fork() with the child born in the cgroup ``cgroup_fd`` and the PID
    namespace ``pidns_fd`` (``clone3``, Linux 5.7+).

    The child runs on in Python like after os.fork (this process is
    single-threaded, so nothing is left locked); it must end with exec or
    os._exit.

    :returns: 0 in the child, the child's PID (ours) in the parent.
    :raises: OSError (EAGAIN at the cgroup's pids limit).
    """
    import ctypes
    global _own_pidns
    lib = libc()
    if _own_pidns is None:
        _own_pidns = os.open('/proc/self/ns/pid', os.O_RDONLY | os.O_CLOEXEC)
    args = (ctypes.c_uint64 * 11)()
    args[0] = CLONE_INTO_CGROUP                  # flags
    args[4] = signal.SIGCHLD                     # exit_signal
    args[10] = cgroup_fd                         # cgroup
    _check(lib.setns(pidns_fd, CLONE_NEWPID), 'setns pid')
    pid = lib.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args),
                      ctypes.c_size_t(ctypes.sizeof(args)))
    err = ctypes.get_errno()
    if pid == 0:
        return 0
    if lib.setns(_own_pidns, CLONE_NEWPID) != 0:
        # Every later child would be born in that container: stop the
        # guest rather than run on like that.
        raise SystemExit('cannot return to our PID namespace: %s' %
                         os.strerror(ctypes.get_errno()))
    if pid < 0:
        raise OSError(err, 'clone3: %s' % os.strerror(err))
    return pid


def exec_path(argv, env):
    """execve ``argv[0]`` searched in the container's PATH.

    os.execvpe is no use here: it imports modules lazily, and after the
    chroot into the container the guest's stdlib is out of sight.

    :returns: the OSError of the best candidate (only if all failed).
    """
    name = argv[0]
    if '/' in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or '.', name)
                      for d in env.get('PATH', DEFAULT_PATH).split(':')]
    error = None
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            # Like execvp: remember a "found but not runnable" error over
            # a plain "not here".
            if error is None or exc.errno != errno.ENOENT:
                error = exc
    return error or OSError(errno.ENOENT, 'not found')


def _read_to_eof(fd, limit):
    """:returns: what the pipe ``fd`` holds up to its end of file, at most
    ``limit`` bytes of it (the rest is read and dropped); ``fd`` is
    closed.
    """
    data = b''
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data
            data += chunk[:limit - len(data)]
    finally:
        os.close(fd)


class LaunchOps(object):
    """The spawning half of the agent's processes (a mixin of
    ``ProcessOps``).
    """

    @staticmethod
    def _env(env, user):
        merged = {}
        for item in env:
            key, sep, value = item.partition('=')
            if key and sep:
                merged[key] = value
        merged.setdefault('PATH', DEFAULT_PATH)
        merged.setdefault('HOME', user[3])
        merged.setdefault('HOSTNAME', '')
        return merged

    def _spawn(self, c, proc, argv, env, workdir, user, join):
        """Fork a container process. A process joining a running
        container (``join``) is made by :meth:`_spawn_joined`. A main
        process: an intermediate child creates the namespaces and forks
        the real process, which then reparents to us (PID 1) so we reap
        it like any other child.

        :returns: None, or the exec error text (the process then exits
                  126/127 like Docker reports it).
        """
        last_cap()                     # read here, outside any root
        if join:
            return self._spawn_joined(c, proc, argv, env, workdir, user)
        child_io, parent_fds, close_after = self._stdio(proc)
        pid_r, pid_w = os.pipe()
        err_pipe_r, err_pipe_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                os.close(pid_r)
                os.close(err_pipe_r)
                self._child(c, proc, argv, env, workdir, user, child_io,
                            pid_w, err_pipe_w)
            except BaseException as exc:
                try:
                    os.write(err_pipe_w, ('%s' % exc).encode()[:4000])
                except BaseException:
                    pass
            os._exit(126)
        for fd in close_after + [pid_w, err_pipe_w]:
            os.close(fd)
        raw = _read_to_eof(pid_r, 16)
        _, istatus = os.waitpid(child, 0)
        error = _read_to_eof(err_pipe_r, 4096)
        for fd in parent_fds:
            self.fd_owner[fd] = proc
        text = error.decode('utf-8', 'replace')
        if not raw:
            # The intermediate failed before forking: no process exists.
            return self._not_started(proc, text or 'spawn failed')
        return self._started(proc, int(raw), text)

    def _spawn_joined(self, c, proc, argv, env, workdir, user):
        """Fork a process into a running container in one step (exec,
        the hot path).

        No intermediate process: a fork of this (large) interpreter is
        the dearest step under TCG, so there is exactly one. ``clone3``
        with ``CLONE_INTO_CGROUP`` makes the child in the container's
        cgroup, charged against its pids limit from birth (at the limit
        the clone fails like any fork in the container would); our own
        ``pid_for_children`` namespace is switched to the container's
        around the clone, so the child is in its PID namespace and still
        our child (we reap it like the main process). The child then
        joins the other namespaces and the root and confines itself
        exactly as :meth:`_child` does.

        :returns: None, or the spawn or exec error text (the process then
                  exits 126/127 like Docker reports it).
        """
        ns_fds, root_fd, cgroup_fd = self._join_fds(c)
        if not c.spec['privileged']:
            guestseccomp.compiled()    # once, here, not in every child
        if guestspawn.available():
            return self._spawn_small(c, proc, argv, env, workdir, user,
                                     ns_fds, root_fd, cgroup_fd)
        child_io, parent_fds, close_after = self._stdio(proc)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = clone_into(cgroup_fd, ns_fds['pid'])
        except OSError as exc:
            pid = None
            if exc.errno in (errno.EAGAIN, errno.ENOMEM):
                text = FORK_REFUSED
            else:
                text = 'spawn failed: %s' % exc
        if pid == 0:
            code = 126
            try:
                # A collection would walk (and so copy) every page of
                # objects shared with us; this process lives a few ms.
                gc.disable()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(err_r)
                for ns in JOINED_NAMESPACES:
                    _check(libc().setns(ns_fds[ns], 0), 'setns %s' % ns)
                os.fchdir(root_fd)
                os.chroot('.')
                self._become(c, proc, argv, env, workdir, user, child_io,
                             err_w)
            except BaseException as exc:
                try:
                    os.write(err_w, ('%s' % exc).encode()[:4000])
                except BaseException:
                    pass
            os._exit(code)
        for fd in close_after + [err_w]:
            os.close(fd)
        for fd in parent_fds:
            self.fd_owner[fd] = proc
        if pid is None:
            os.close(err_r)
            return self._not_started(proc, text)
        # Until the exec (the pipe is close-on-exec) or an error.
        error = _read_to_eof(err_r, 4096)
        return self._started(proc, pid, error.decode('utf-8', 'replace'))

    def _join_fds(self, c):
        """What a process joining the running container ``c`` enters:
        its namespaces, root and cgroup, opened at its first exec and
        kept until its main process is reaped (:meth:`_release_join_fds`).
        Under TCG, opening the seven of them cost about as much as a
        tenth of an exec round trip.

        :returns: ({namespace: fd}, root fd, cgroup fd)
        :raises: OpError when the container is not running.
        """
        held = c.join_fds
        if held is not None and held[0] == c.init_pid:
            return held[1:]
        self._release_join_fds(c)
        ns_fds = {}
        fds = []
        try:
            for ns in ('pid',) + JOINED_NAMESPACES:
                ns_fds[ns] = os.open('/proc/%d/ns/%s' % (c.init_pid, ns),
                                     os.O_RDONLY | os.O_CLOEXEC)
                fds.append(ns_fds[ns])
            root_fd = os.open('/proc/%d/root' % c.init_pid,
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(root_fd)
            cgroup_fd = os.open(c.cgroup, os.O_RDONLY | os.O_DIRECTORY |
                                os.O_CLOEXEC)
        except OSError:
            for fd in fds:
                os.close(fd)
            raise OpError('state', 'container is not running')
        c.join_fds = (c.init_pid, ns_fds, root_fd, cgroup_fd)
        return ns_fds, root_fd, cgroup_fd

    @staticmethod
    def _release_join_fds(c):
        """Close what :meth:`_join_fds` holds for ``c``: held past its
        main process, they would keep its namespaces and mounts alive.
        """
        held, c.join_fds = c.join_fds, None
        if held is not None:
            for fd in list(held[1].values()) + [held[2], held[3]]:
                os.close(fd)

    def _spawn_small(self, c, proc, argv, env, workdir, user, ns_fds,
                     root_fd, cgroup_fd):
        """:meth:`_spawn_joined` through the small helper
        (:mod:`kata_zun.agent.guestspawn`): the same process, without a
        fork of this interpreter.

        :returns: None, or the spawn or exec error text.
        """
        privileged = c.spec['privileged']
        cmd = guestspawn.command(
            argv, workdir, user, proc.tty, privileged,
            guestcaps.mask(guestcaps.DEFAULT_CAPS), last_cap(),
            b'' if privileged else guestseccomp.compiled())
        child_io, parent_fds, close_after = self._stdio(proc)
        try:
            pid, error, err = guestspawn.spawn(cmd, env, tuple(child_io) + (
                ns_fds['pid'], cgroup_fd, ns_fds['ipc'], ns_fds['uts'],
                ns_fds['cgroup'], ns_fds['mnt'], root_fd))
        finally:
            for fd in close_after:
                os.close(fd)
        for fd in parent_fds:
            self.fd_owner[fd] = proc
        if pid is None:
            return self._not_started(
                proc, FORK_REFUSED if guestspawn.refused(err) else error)
        return self._started(proc, pid, error)

    def _not_started(self, proc, text):
        """No process was made: ``proc`` ends as exit 126 with ``text``
        on its stderr.

        :returns: ``text``
        """
        proc.status = (126, 0)
        proc.reaped_at = time.monotonic()
        self._stderr_note(proc, text)
        return text

    def _started(self, proc, pid, error):
        """``proc`` runs as ``pid``; ``error`` is what it wrote before it
        could exec (then it exits 126/127), or empty.

        :returns: ``error`` or None
        """
        proc.pid = pid
        self.pid_proc[pid] = proc
        self._drain_signals()          # it may be gone already
        if error:
            self._stderr_note(proc, error)
            return error
        return None

    def _stdio(self, proc):
        """Make the pipes (or pty) of a new process.

        :returns: (the child's stdin/stdout/stderr fds, our ends, fds to
                  close once the child has them)
        """
        parent_fds = []
        if proc.tty:
            master, slave = os.openpty()
            child_io = (slave, slave, slave)
            proc.master = master
            proc.out_fds = {master: protocol.STDOUT}
            if proc.wants_stdin:
                proc.stdin_fd = master
            parent_fds = [master]
            close_after = [slave]
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            import fcntl
            for fd in (out_r, err_r):
                try:
                    fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    pass
            if proc.wants_stdin:
                in_r, in_w = os.pipe()
                proc.stdin_fd = in_w
                parent_fds.append(in_w)
            else:
                in_r = os.open('/dev/null', os.O_RDONLY)
            child_io = (in_r, out_w, err_w)
            proc.out_fds = {out_r: protocol.STDOUT, err_r: protocol.STDERR}
            parent_fds += [out_r, err_r]
            close_after = [in_r, out_w, err_w]
        for fd in parent_fds:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        return child_io, parent_fds, close_after

    def _spawn_helper(self, c, proc, func, inner, extra_caps=()):
        """Fork a helper chrooted into the container's root: whatever
        the image holds (symlinks included), the helper cannot reach out.

        The helper handles untrusted bytes (archives from the user, files
        from the container) as root: it gets a container's default
        capabilities (plus ``extra_caps``), no_new_privs and the seccomp
        filter, whatever the container's own mode.
        """
        import tarfile  # noqa: F401  (imported before the chroot)
        lib = libc()                   # ctypes too, before the chroot
        child_io, parent_fds, close_after = self._stdio(proc)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for target, fd in enumerate(child_io):
                    os.dup2(fd, target)
                os.closerange(3, 65536)
                os.chroot(c.rootfs)
                os.chdir('/')
                guestcaps.confine(lib, False, extra=extra_caps)
                func(inner)
                code = 0
            except BaseException as exc:
                try:
                    os.write(2, ('%s\n' % exc).encode()[:4000])
                except BaseException:
                    pass
            os._exit(code)
        for fd in close_after:
            os.close(fd)
        for fd in parent_fds:
            self.fd_owner[fd] = proc
        proc.pid = pid
        self.pid_proc[pid] = proc

    def _stderr_note(self, proc, text):
        # Sent after the reply: the host subscribes to a process's output
        # when it learns its handle from that reply.
        self.after_reply.append(protocol.encode_stream(
            protocol.STDERR, proc.handle, (text + '\n').encode()))

    def _child(self, c, proc, argv, env, workdir, user, child_io, pid_w,
               err_w):
        """Runs in the intermediate child of a container's main process:
        new namespaces, then the real process forked in them. Never
        returns normally.
        """
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        write_file(c.cgroup + '/cgroup.procs', str(os.getpid()))
        # The cgroup namespace after joining the container's cgroup: its
        # processes see that cgroup as their root.
        _check(libc().unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                              CLONE_NEWPID | CLONE_NEWCGROUP), 'unshare')
        try:
            pid = os.fork()
        except BlockingIOError:
            raise OSError(errno.EAGAIN, FORK_REFUSED)
        if pid:
            os.write(pid_w, str(pid).encode())
            os._exit(0)
        os.close(pid_w)
        guestroot.enter(c, c.spec['privileged'])
        self._become(c, proc, argv, env, workdir, user, child_io, err_w)

    def _become(self, c, proc, argv, env, workdir, user, child_io, err_w):
        """Runs in the new process, in the container's namespaces and
        root: stdio, session, confinement, user, then exec. Never
        returns.
        """
        os.setsid()
        for target, fd in enumerate(child_io):
            os.dup2(fd, target)
        if proc.tty:
            import fcntl
            fcntl.ioctl(0, TIOCSCTTY, 0)
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 65536)
        uid, gid, groups, _home = user
        if workdir and not os.path.isdir(workdir):
            try:
                os.makedirs(workdir, exist_ok=True)
            except OSError:
                pass
        # Docker's defaults (or everything, privileged) from here on:
        # capabilities, no_new_privs, the seccomp filter.
        guestcaps.confine(libc(), c.spec['privileged'], last=last_cap())
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        try:
            os.chdir(workdir or '/')
        except OSError as exc:
            os.write(err_w, ('chdir to cwd (%r) set in config.json failed: '
                             '%s' % (workdir, exc.strerror)).encode())
            os._exit(126)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT,
                    signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        exc = exec_path(argv, env)
        code = 127 if exc.errno == errno.ENOENT else 126
        what = ('executable file not found in $PATH'
                if code == 127 and '/' not in argv[0] else exc.strerror)
        os.write(err_w, ('exec: "%s": %s' % (argv[0], what)).encode())
        os._exit(code)
