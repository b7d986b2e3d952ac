"""An entry point for the shim fork server's tests: it reports, as JSON
on the descriptor its first argument names, what the process the server
forked for it got from its starter.
"""

import json
import os
import resource
import signal
import sys


def main(argv):
    fd = int(argv[0])
    open_fds = []
    for n in range(64):
        try:
            os.fstat(n)
            open_fds.append(n)
        except OSError:
            pass
    with open('/proc/self/cmdline', 'rb') as f:
        cmdline = f.read().rstrip(b'\0').decode()
    report = {
        'argv': sys.argv, 'env': dict(os.environ), 'umask': os.umask(0),
        'cwd': os.getcwd(), 'fds': open_fds,
        'stdin': os.readlink('/proc/self/fd/0'),
        'stdout': [os.fstat(1).st_dev, os.fstat(1).st_ino],
        'nofile': list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        'cmdline': cmdline,
        'sigterm_default': signal.getsignal(signal.SIGTERM) ==
        signal.SIG_DFL,
        'inheritable': os.get_inheritable(fd)}
    os.write(fd, json.dumps(report).encode())
    os.close(fd)
    return int(argv[1]) if len(argv) > 1 else 0
