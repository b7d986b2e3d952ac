"""Starting a sandbox's shim and waiting for its VM.

The shim is a daemon of its own (it outlives the CLI and zun-compute):
forked by the shim fork server when one runs (:mod:`kata_zun.shim.
forkserver`), else started as a new interpreter that double-forks. It
reports on a pipe once its VM is up or has failed.
"""

import os
import select
import subprocess
import sys
import time

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import admission
from kata_zun.shim import forkserver

CONF = conf.CONF

# Bytes kept of a shim's ready message (``ok`` or one line of error).
_READY_MAX = 64 * 1024


def launch(c, run_dir, pod=False):
    """Start the shim of ``c``, through the fork server when there is one.

    :returns: the read end of its ready pipe.
    """
    def argv(ready_fd):
        words = [sys.executable, '-m', 'kata_zun.cmd.shim',
                 '--state-dir', c.dir, '--run-dir', run_dir,
                 '--ready-fd', str(ready_fd)] + (['--pod'] if pod else [])
        for path in CONF.config_file or []:
            words += ['--config-file', path]
        return words

    run_path = CONF.kata.run_path
    if CONF.kata.shim_forkserver:
        read_fd, write_fd = os.pipe()
        if forkserver.spawn(run_path, argv(write_fd), read_fd,
                            write_fd):
            return read_fd
        os.close(read_fd)
    read_fd, write_fd = os.pipe()
    try:
        # The shim daemonizes (double fork): this child exits at once,
        # so neither the CLI nor zun-compute keeps a zombie.
        proc = subprocess.Popen(argv(write_fd), pass_fds=(write_fd,),
                                stdin=subprocess.DEVNULL,
                                close_fds=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    proc.wait()
    if CONF.kata.shim_forkserver:
        # For the next start.
        forkserver.ensure(run_path, CONF.kata_jail.cgroup_parent
                          if CONF.kata_jail.enabled else None)
    return read_fd


def spawn(c, run_dir, pod=False):
    """Start the shim of ``c`` and wait until its VM is up.

    The shim writes one message on its ready pipe, ``ok`` or why it
    failed, and closes it; the pipe closing without ``ok`` means it died.

    :param c: the container (or pod) record.
    :param run_dir: the sandbox's directory of sockets.
    :param pod: the shim of a pod (several containers).
    :raises: InsufficientResources (host admission refused the VM),
        ShimError (it failed, died, or did not come up within
        ``[kata] shim_start_timeout``).
    """
    read_fd = launch(c, run_dir, pod)
    message = b''
    deadline = time.monotonic() + CONF.kata.shim_start_timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exception.ShimError(
                    reason='the VM did not come up within %s s' %
                    CONF.kata.shim_start_timeout)
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            # One line is all a shim has to say: keep no more than that
            # of whatever else it writes until it closes the pipe.
            message = (message + chunk)[:_READY_MAX]
    finally:
        os.close(read_fd)
    text = message.decode('utf-8', 'replace').strip()
    if text.startswith(admission.REFUSED):
        raise exception.InsufficientResources(
            text[len(admission.REFUSED):])
    if text != 'ok':
        raise exception.ShimError(reason=text or 'the shim died while '
                                  'starting; see %s' %
                                  os.path.join(c.dir, 'shim.log'))
