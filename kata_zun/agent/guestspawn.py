"""The small spawn path of exec: ``kz-spawn`` (kzspawn.c), a spawn
server or a one-shot helper started with ``posix_spawn``.

Forking the agent (a large Python process) costs, under TCG, a copy of
its page tables and a copy-on-write fault for every page the child then
touches running Python, tens of milliseconds per exec. ``posix_spawn``
is a vfork: nothing is copied, the agent waits only until the helper
executes; the helper, a small static binary, does the rest in a few
system calls (see kzspawn.c). Policy stays here: the capabilities to
keep, the seccomp program and the user are computed by the agent and
passed as arguments.

The helper is kept running as a spawn server (``kz-spawn --serve``,
started at the first exec, or by a VM template before it is saved): an
exec then costs one message on a socket
instead of a ``posix_spawn`` and the helper's exec and start, about 4 ms
of an exec's 15 under TCG. A request the server cannot take (too big, a
NUL inside) or a server that is gone falls back to the one-shot helper,
which the server restarts at the next exec.

Standard library only. When the initrd has no helper (built without a C
compiler), :func:`available` is False and the agent forks as before.
"""

import array
import errno
import os
import signal
import socket
import struct

HELPER = '/opt/kata-agent/kz-spawn'
# The helper's fds (kzspawn.c): stdio, status pipe, PID namespace,
# cgroup, ipc/uts/cgroup/mnt namespaces, root. Everything we hand over
# is first moved above them, so no dup2 overwrites a later source.
_FIRST_FREE = 11
# Most bytes read from the status pipe (a pid line plus an error text).
STATUS_MAX = 8192
# Dispositions the agent changed (Python ignores SIGPIPE and SIGXFSZ)
# that a container process must find at their defaults.
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)

# kzspawn.c's SERVE_MAX: the largest request the server reads.
SERVE_MAX = 128 * 1024
_REQUEST_HEAD = struct.Struct('=II')
# Whether exec goes through the server (tests compare both paths).
USE_SERVER = True

_available = None
_server = None


def available(path=HELPER):
    """:returns: True when the initrd carries the helper (checked once)."""
    global _available
    if _available is None:
        _available = os.access(path, os.X_OK)
    return _available


def command(argv, workdir, user, tty, privileged, keep, last_cap, prog):
    """:returns: the helper's argv (see kzspawn.c).

    :param argv: the container command (non-empty, no NUL).
    :param workdir: path in the container, '' or None for /.
    :param user: (uid, gid, [groups], home).
    :param keep: capability mask to keep.
    :param last_cap: the kernel's highest capability.
    :param prog: the seccomp program (bytes), unused if privileged.
    """
    uid, gid, groups, _home = user
    flags = ('t' if tty else '') + ('p' if privileged else '')
    return [HELPER, flags or '-', '%x' % keep, str(int(last_cap)),
            str(int(uid)), str(int(gid)),
            ','.join(str(int(g)) for g in groups), workdir or '',
            '' if privileged else prog.hex(), '--'] + list(argv)


def parse_status(data):
    """Read what the helper and the new process wrote on the status pipe.

    The helper's pid line (``\\0pid <n>\\n``) and the process's error
    text are two atomic writes in either order (the process runs as soon
    as it is cloned); the error text has no NUL.

    :param data: the bytes, up to EOF.
    :returns: (pid or None, error text or None, errno of a failed clone
              or None).
    """
    mark = data.find(b'\0pid ')
    if mark >= 0:
        end = data.find(b'\n', mark)
        try:
            pid = int(data[mark + 5:end]) if end > 0 else 0
        except ValueError:
            pid = 0
        if pid <= 0:
            return None, 'spawn failed: bad helper status', None
        rest = data[:mark] + data[end + 1:]
        return pid, rest.decode('utf-8', 'replace') or None, None
    if data.startswith(b'fail '):
        code, _, text = data[5:].partition(b' ')
        try:
            err = int(code)
        except ValueError:
            err = None
        return None, text.decode('utf-8', 'replace'), err
    return None, 'spawn failed: the helper died', None


def spawn(cmd, env, fds, helper=HELPER):
    """Start the process: through the spawn server when it can take the
    request, else through a one-shot helper with ``fds`` as its fds 0, 1,
    2, 4, 5... and a status pipe as fd 3; wait until the process has
    exec'd or failed.

    :param cmd: from :func:`command`.
    :param env: the process's environment (dict).
    :param fds: (stdin, stdout, stderr, pidns, cgroup, ipc, uts,
                cgroupns, mnt, root), all ours and left open.
    :param helper: the helper's path.
    :returns: :func:`parse_status`'s triple.
    """
    packet = _request(cmd, env) if USE_SERVER else None
    if packet is not None:
        sock = _server_socket(helper)
        if sock is not None:
            result = _spawn_served(sock, packet, fds)
            if result is not None:
                return result
    st_r, st_w = os.pipe2(os.O_CLOEXEC)
    moved = []
    try:
        sources = []
        for fd in fds[:3] + (st_w,) + tuple(fds[3:]):
            if fd < _FIRST_FREE:
                import fcntl
                fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE)
                moved.append(fd)
            sources.append(fd)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target)
                   for target, fd in enumerate(sources)]
        try:
            os.posix_spawn(helper, cmd, env, file_actions=actions,
                           setsigdef=_SIGDEF)
        except (OSError, ValueError) as exc:
            return (None, 'spawn failed: %s' % exc,
                    getattr(exc, 'errno', None))
    finally:
        os.close(st_w)
        for fd in moved:
            os.close(fd)
    return parse_status(_read_status(st_r))


def _read_status(st_r):
    """:returns: what the status pipe holds up to EOF (bounded); the
    pipe is closed.
    """
    try:
        data = b''
        while len(data) < STATUS_MAX:
            try:
                chunk = os.read(st_r, STATUS_MAX - len(data))
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
    finally:
        os.close(st_r)
    return data


def _request(cmd, env):
    """:returns: the server's request packet for ``cmd`` and ``env``
    (see kzspawn.c), or None when the server cannot take it: too big, or
    a NUL inside a string (the one-shot path refuses that with its own
    error).
    """
    args = [os.fsencode(a) for a in cmd[1:]]
    entries = [os.fsencode(k) + b'=' + os.fsencode(v)
               for k, v in env.items()]
    body = b'\0'.join(args + entries) + b'\0'
    if body.count(b'\0') != len(args) + len(entries) or \
            _REQUEST_HEAD.size + len(body) > SERVE_MAX:
        return None
    return _REQUEST_HEAD.pack(len(args), len(entries)) + body


def _server_socket(helper):
    """:returns: our end of the spawn server's socket, the server
    started if it is not running; None if it cannot be started.
    """
    global _server
    if _server is not None:
        return _server
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    null = os.open('/dev/null', os.O_RDWR | os.O_CLOEXEC)
    import fcntl
    # Above the fds posix_spawn places (see spawn).
    far = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE)
    theirs.close()
    try:
        os.posix_spawn(helper, [helper, '--serve'], {}, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
            (os.POSIX_SPAWN_DUP2, null, 2), (os.POSIX_SPAWN_DUP2, far, 3)],
            setsigdef=_SIGDEF)
    except (OSError, ValueError):
        ours.close()
        return None
    finally:
        os.close(far)
        os.close(null)
    _server = ours
    return ours


def start_server(helper=HELPER):
    """Start the spawn server ahead of the first exec (a VM template does
    it before it is saved: every clone then has one running).

    :returns: True when a server runs.
    """
    return bool(USE_SERVER and available(helper) and
                _server_socket(helper) is not None)


def stop_server():
    """Close our end: the server reads end of file and exits (the
    caller reaps it like any child).
    """
    global _server
    if _server is not None:
        _server.close()
        _server = None


def _spawn_served(sock, packet, fds):
    """:returns: :func:`parse_status`'s triple, or None when the server
    is gone before it took the request (the caller falls back).
    """
    st_r, st_w = os.pipe2(os.O_CLOEXEC)
    sent = tuple(fds[:3]) + (st_w,) + tuple(fds[3:])
    try:
        sock.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                 array.array('i', sent))])
    except OSError:
        os.close(st_r)
        os.close(st_w)
        stop_server()
        return None
    os.close(st_w)
    # A server that died after taking it leaves nothing on the pipe:
    # parse_status reports the spawn failed, and the next exec starts a
    # new server.
    data = _read_status(st_r)
    if not data:
        stop_server()
    return parse_status(data)


def refused(err):
    """:returns: True when a failed clone means the container is at its
    pids limit (or out of memory).
    """
    return err in (errno.EAGAIN, errno.ENOMEM)
