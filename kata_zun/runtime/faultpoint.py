"""A test hook to stop the CLI at a named point of an operation.

The fault matrix (``tools/fault-matrix.py``) needs to kill QEMU, the shim
or the CLI itself while an operation is at a given step, not at a guessed
moment. With ``KATA_ZUN_FAULT_POINT=<name>`` in its environment, a
process that reaches :func:`reached` with that name writes one line,
``kata-zun-fault-point: <name> <pid>``, to its stderr and stops itself
(SIGSTOP): whoever watches waits until it has stopped
(:func:`wait_stopped`), does its harm, then sends SIGCONT (or SIGKILL).
The line comes before the stop: a watcher that acted on the line alone
could send its SIGCONT before the SIGSTOP took effect, and the process
would then stay stopped for good (the fault matrix met it once, as a CLI
that "hung" for 400 s). Without the variable (always, outside the
matrix) this does nothing: the hook only pauses the process that has it
in its own environment.

A long-lived process (zun-compute) cannot be given a new environment per
fault: with ``KATA_ZUN_FAULT_POINT_FILE=<path>`` in its environment, the
point named in that file (written by the matrix when it arms a cell) is
taken once: the file is removed before the process stops, so a restarted
process never stops at it again, and ``<path>.reached`` says ``<name>
<pid>`` (written atomically) for a watcher that cannot read its stderr.
"""

import os
import signal
import time

ENV = 'KATA_ZUN_FAULT_POINT'
FILE_ENV = 'KATA_ZUN_FAULT_POINT_FILE'
MARKER = b'kata-zun-fault-point: '


def reached(name):
    """Pause here if the environment names this point.

    :param name: the point's name (e.g. ``rm-cleanup``).
    :returns: None (after a SIGCONT, when paused).
    """
    armed = os.environ.get(FILE_ENV)
    if os.environ.get(ENV) != name and not (armed and _take(armed, name)):
        return
    line = ('%s %d\n' % (name, os.getpid())).encode()
    if armed:
        tmp = '%s.reached.%d' % (armed, os.getpid())
        with open(tmp, 'wb') as f:
            f.write(line)
        os.rename(tmp, armed + '.reached')
    os.write(2, MARKER + line)
    os.kill(os.getpid(), signal.SIGSTOP)


def _take(path, name):
    """:returns: True if ``path`` names this point and this process took
        it (removed the file: one stop per arming).
    """
    try:
        with open(path, 'rb') as f:
            wanted = f.read(256).decode('utf-8', 'replace').strip()
    except OSError:
        return False
    if wanted != name:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False                # another process took it first
    return True


def state(pid):
    """:returns: the one-letter state of ``pid`` (b'T': stopped, b'Z':
        a zombie), or b'' if there is no such process.
    """
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read(4096)
        return stat[stat.rindex(b')') + 2:][:1]
    except (OSError, ValueError):
        return b''


def stopped(pid):
    """:returns: True if process ``pid`` is stopped (by a signal or a
        tracer), False if it runs, exited or never was.
    """
    return state(pid) in (b'T', b't')


def wait_stopped(pid, timeout):
    """Wait until ``pid``, which said it reached a point, has stopped.

    :param pid: the process that wrote the marker line.
    :param timeout: seconds (the stop follows the line at once; a loaded
        host may delay it, never by seconds).
    :returns: True once it is stopped; False if it ended, or did not stop
        within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = state(pid)
        if now in (b'T', b't'):
            return True
        if now in (b'', b'Z', b'X') or time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
