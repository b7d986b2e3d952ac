"""Hand a jailed clone its template's RAM, shared and sealed.

See :mod:`kata_zun.hypervisor.ramholder` for why a sealed memfd and who
keeps it. :func:`open_ram` gives the caller a read-only descriptor of
the sealed memfd of one template, starting the template's holder when
there is none (one at a time: ``holder.lock`` in the template's
directory). QEMU inherits the descriptor and maps it private
(``/proc/self/fd/N``, see :class:`..qemu.argv.SealedMemory`).

What ``holder.json`` says is checked, never trusted: the descriptor
opened through ``/proc/<pid>/fd/<fd>`` must be the inode the holder
recorded, in the process that started at the recorded time (a pid
reused by another process fails), of the template's RAM size and
carrying every seal of :data:`ramholder.SEALS` (a file that is not a
sealed memfd fails).
"""

import fcntl
import os
import stat
import subprocess
import sys
import time

from kata_zun.hypervisor import ramholder
from kata_zun.hypervisor import template
from kata_zun.runtime import fileutils

HOLDER_LOCK = 'holder.lock'
HOLDER_LOG = 'holder.log'
HOLDER_JSON_MAX = 4096


class SealedRamError(template.TemplateError):
    """A template's sealed RAM cannot be had (the clone then loads the
    whole RAM from the full state instead).
    """
    msg_fmt = 'sealed template RAM: %(reason)s'


def _int(info, name):
    value = info.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError('holder.json: bad %s' % name)
    return value


def from_holder(template_dir, size):
    """:returns: a read-only descriptor of the template's sealed RAM
        from its running holder, or None when there is no usable holder.
    """
    try:
        info = fileutils.read_json(
            os.path.join(template_dir, ramholder.HOLDER),
            limit=HOLDER_JSON_MAX)
        if not isinstance(info, dict):
            return None
        pid, num = _int(info, 'pid'), _int(info, 'fd')
        dev, ino = _int(info, 'dev'), _int(info, 'ino')
        started = _int(info, 'start')
        if _int(info, 'size') != size:
            return None
    except (OSError, ValueError):
        return None
    try:
        fd = os.open('/proc/%d/fd/%d' % (pid, num),
                     os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        good = (stat.S_ISREG(st.st_mode) and st.st_dev == dev and
                st.st_ino == ino and st.st_size == size and
                fcntl.fcntl(fd, ramholder.F_GET_SEALS) & ramholder.SEALS ==
                ramholder.SEALS and
                # Checked after the open: the pid could have been reused
                # just before it.
                ramholder.start_time(pid) == started)
    except OSError:
        good = False    # F_GET_SEALS: EINVAL on what is not a memfd
    if not good:
        os.close(fd)
        return None
    return fd


def open_ram(template_dir, size, timeout):
    """Get the sealed RAM of the template in ``template_dir``.

    :param size: the guest RAM size in bytes.
    :param timeout: seconds to wait for another starter or for a new
        holder to copy the RAM (bounded by the RAM's size).
    :returns: a read-only, close-on-exec descriptor the caller closes.
    :raises: SealedRamError
    """
    fd = from_holder(template_dir, size)
    if fd is not None:
        return fd
    deadline = time.monotonic() + timeout
    try:
        lock = os.open(os.path.join(template_dir, HOLDER_LOCK),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC |
                       os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SealedRamError(reason='%s: %s' % (template_dir, exc))
    try:
        if not fileutils.poll_flock(lock, deadline):
            raise SealedRamError(reason='another start holds %s for more '
                                 'than %d s' % (HOLDER_LOCK, timeout))
        fd = from_holder(template_dir, size)
        if fd is None:
            _start_holder(template_dir, size, deadline)
            fd = from_holder(template_dir, size)
        if fd is None:
            raise SealedRamError(reason='the holder of %s started but '
                                 'cannot be opened' % template_dir)
        return fd
    finally:
        os.close(lock)


def _start_holder(template_dir, size, deadline):
    try:
        os.unlink(os.path.join(template_dir, ramholder.HOLDER))
    except FileNotFoundError:
        pass
    argv = [sys.executable, '-m', 'kata_zun.hypervisor.ramholder',
            template_dir, str(size)]
    log_path = os.path.join(template_dir, HOLDER_LOG)
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                      os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log,
                                    close_fds=True, start_new_session=True)
        finally:
            os.close(log)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SealedRamError(reason='cannot start its holder: %s' % exc)
    try:
        status = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SealedRamError(reason='its holder did not publish it in time')
    if status != 0:
        raise SealedRamError(reason='its holder failed: %s' % (
            fileutils.tail(log_path, 1000) or 'status %s' % status))
