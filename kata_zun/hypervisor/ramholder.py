"""The holder of one VM template's sealed RAM (stdlib only: one small
process per template).

A jailed QEMU must never be able to change a template's RAM: every later
clone would start from what it wrote. QEMU 7.2 opens a RAM file
read-write even to map it private, so a jailed clone cannot be given the
template's RAM file. It can be given a *sealed memfd*: a memfd with
``F_SEAL_WRITE``, ``F_SEAL_SHRINK``, ``F_SEAL_GROW`` and ``F_SEAL_SEAL``
may be opened read-write by whoever holds it, and mapped private
copy-on-write, but nobody, root included, can write, truncate, grow or
punch a hole in it, nor lift the seals. Its pages are shared by every
clone that maps it until a clone writes one (then that clone gets its
own copy).

A memfd lives as long as a descriptor or a mapping of it. This process
makes it (:func:`seal_copy`), says where it is in ``holder.json`` in the
template's directory and keeps it until the template is removed (the
directory is gone or replaced) or it is told to stop (SIGTERM).
:mod:`kata_zun.hypervisor.sealedram` starts it and opens the memfd
through ``/proc/<pid>/fd/<fd>``.

``python -m kata_zun.hypervisor.ramholder <template dir> <size>``: the
process forks once; the child, in a session of its own, makes and
publishes the memfd; the parent exits 0 once it is published, 1 if the
child failed (its reason is on stderr). The starter so reaps only the
parent and knows the outcome without polling.
"""

import errno
import fcntl
import os
import signal
import stat
import sys
import time

from kata_zun.runtime import fileutils

MEMFD_NAME = 'kz-template-ram'
HOLDER = 'holder.json'
RAM = 'ram'
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_WRITE = 0x8
SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
PAGE = 4096
CHUNK = 1024 * 1024
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_PAGE = bytes(PAGE)
# How often the holder looks whether its template is still there.
POLL = 2.0


class HolderError(Exception):
    """The sealed RAM cannot be made."""


def seal_copy(ram_path, size):
    """Copy a template's RAM file into a new sealed memfd.

    Only pages that hold data are written: holes and zero pages stay
    holes, which read as zero and cost no memory until a clone reads
    them.

    :param ram_path: the template's RAM file.
    :param size: its expected size in bytes.
    :returns: the memfd (close-on-exec), sealed with :data:`SEALS`.
    :raises: HolderError, OSError
    """
    src = os.open(ram_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise HolderError('%s is not a regular file of %d bytes'
                              % (ram_path, size))
        fd = os.memfd_create(MEMFD_NAME,
                             os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            _copy_data(src, fd, size)
            fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(src)
    return fd


def _copy_data(src, dst, size):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return          # only a hole is left
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            chunk = os.pread(src, min(CHUNK, end - start), start)
            if not chunk:
                raise HolderError('the RAM file shrank while copied')
            if chunk != _ZERO_CHUNK[:len(chunk)]:
                _write_pages(dst, chunk, start)
            start += len(chunk)
        offset = end


def _write_pages(dst, chunk, offset):
    view = memoryview(chunk)
    for pos in range(0, len(chunk), PAGE):
        page = view[pos:pos + PAGE]
        if page != _ZERO_PAGE[:len(page)]:
            done = 0
            while done < len(page):
                done += os.pwrite(dst, page[done:], offset + pos + done)


def start_time(pid):
    """:returns: the start time of ``pid`` (clock ticks since boot,
        field 22 of /proc/<pid>/stat), which tells a process from a
        later one that reuses its pid; None if it is gone.
    """
    fields = fileutils.proc_stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, TypeError, ValueError):
        return None


def hold(template_dir, size, ready=None):
    """Make the sealed RAM of the template in ``template_dir``, publish
    it in ``holder.json`` and keep it while the template exists.

    :param ready: a pipe's write end, written to and closed once
        published.
    :returns: None once the template is gone or SIGTERM came.
    :raises: HolderError, OSError
    """
    here = os.stat(template_dir)
    fd = seal_copy(os.path.join(template_dir, RAM), size)
    st = os.fstat(fd)
    pid = os.getpid()
    fileutils.write_json(os.path.join(template_dir, HOLDER), {
        'pid': pid, 'fd': fd, 'dev': st.st_dev, 'ino': st.st_ino,
        'size': size, 'start': start_time(pid)}, limit=4096)
    if ready is not None:
        os.write(ready, b'1')
        os.close(ready)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        time.sleep(POLL)
        try:
            if not os.path.samestat(here, os.stat(template_dir)):
                return
        except FileNotFoundError:
            return


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write('usage: ramholder TEMPLATE_DIR SIZE\n')
        return 2
    rfd, wfd = os.pipe()
    if os.fork():
        os.close(wfd)
        published = os.read(rfd, 1) == b'1'
        os._exit(0 if published else 1)
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        hold(argv[0], int(argv[1]), ready=wfd)
    except (HolderError, OSError, ValueError) as exc:
        # stderr is the starter's log of this template.
        sys.stderr.write('ramholder %s: %s\n' % (argv[0], exc))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
