"""A test hook to stop the CLI at a named point of an operation.

The fault matrix (``tools/fault-matrix.py``) needs to kill QEMU, the shim
or the CLI itself while an operation is at a given step, not at a guessed
moment. With ``KATA_ZUN_FAULT_POINT=<name>`` in its environment, a
process that reaches :func:`reached` with that name writes one line,
``kata-zun-fault-point: <name> <pid>``, to its stderr and stops itself
(SIGSTOP): whoever watches does its harm, then sends SIGCONT (or
SIGKILL). Without the variable (always, outside the matrix) this does
nothing: the hook only pauses the process that has it in its own
environment.
"""

import os
import signal

ENV = 'KATA_ZUN_FAULT_POINT'
MARKER = b'kata-zun-fault-point: '


def reached(name):
    """Pause here if the environment names this point.

    :param name: the point's name (e.g. ``rm-cleanup``).
    :returns: None (after a SIGCONT, when paused).
    """
    if os.environ.get(ENV) != name:
        return
    os.write(2, MARKER + ('%s %d\n' % (name, os.getpid())).encode())
    os.kill(os.getpid(), signal.SIGSTOP)
