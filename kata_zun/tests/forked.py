"""Run test code in a forked child and read back what it reports.

For code that changes the process for good (seccomp filters, dropped
capabilities, a jail): the test process itself stays untouched.
"""

import os


def run(func):
    """Fork; the child calls ``func()`` and writes the bytes it returns
    (or ``error: <exception>``) to the parent.

    :param func: callable returning bytes; runs in the child only.
    :returns: (exit code of the child, the bytes it wrote): 0 when
        ``func`` returned, 1 when it raised.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            out = func()
            code = 0
        except BaseException as exc:
            out = ('error: %r' % (exc,)).encode()
        try:
            os.write(w, out)
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b''.join(chunks)
