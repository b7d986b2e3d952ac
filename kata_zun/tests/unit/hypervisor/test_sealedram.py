"""Sealed template RAM: the holder, and what a starter accepts from it.

These run the real holder process (``python -m
kata_zun.hypervisor.ramholder``) on a small RAM file; no VM is involved.
"""

import errno
import fcntl
import mmap
import os
import subprocess
import sys
import time

import fixtures
from oslotest import base

from kata_zun.hypervisor import ramholder
from kata_zun.hypervisor import sealedram
from kata_zun.runtime import fileutils

SIZE = 4 * 1024 * 1024


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return ramholder.start_time(pid) is not None


class SealCopyTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.ram = os.path.join(self.dir, 'ram')
        with open(self.ram, 'wb') as f:
            f.truncate(SIZE)
            f.seek(8192)
            f.write(b'kernel text')
            f.seek(SIZE - 4096)
            f.write(b'\x01' * 4096)
            f.seek(65536)
            f.write(bytes(4096 * 4))        # zero pages, allocated

    def test_same_content_only_data_pages_allocated(self):
        fd = ramholder.seal_copy(self.ram, SIZE)
        self.addCleanup(os.close, fd)
        with open(self.ram, 'rb') as f:
            self.assertEqual(f.read(), os.pread(fd, SIZE + 1, 0))
        # Two data pages; holes and zero pages stay holes.
        self.assertLessEqual(os.fstat(fd).st_blocks * 512, 2 * 4096)

    def test_every_change_is_refused_even_to_root(self):
        fd = ramholder.seal_copy(self.ram, SIZE)
        self.addCleanup(os.close, fd)
        self.assertEqual(ramholder.SEALS,
                         fcntl.fcntl(fd, ramholder.F_GET_SEALS))
        rw = os.open('/proc/self/fd/%d' % fd, os.O_RDWR)  # as QEMU does
        self.addCleanup(os.close, rw)
        for attempt in (
                lambda: os.pwrite(rw, b'x', 0),
                lambda: os.ftruncate(rw, SIZE // 2),
                lambda: os.ftruncate(rw, SIZE * 2),
                lambda: os.posix_fallocate(rw, SIZE, 4096),
                lambda: fcntl.fcntl(rw, ramholder.F_ADD_SEALS, 0),
                lambda: mmap.mmap(rw, SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)):
            self.assertRaises(OSError, attempt)
        self.assertEqual(b'kernel text', os.pread(fd, 11, 8192))
        # A private mapping is writable; its writes stay its own.
        m = mmap.mmap(rw, SIZE, mmap.MAP_PRIVATE,
                      mmap.PROT_READ | mmap.PROT_WRITE)
        m[8192:8197] = b'EVIL!'
        self.assertEqual(b'EVIL!', m[8192:8197])
        m.close()
        self.assertEqual(b'kernel text', os.pread(fd, 11, 8192))

    def test_punching_a_hole_is_refused(self):
        import ctypes
        fd = ramholder.seal_copy(self.ram, SIZE)
        self.addCleanup(os.close, fd)
        libc = ctypes.CDLL(None, use_errno=True)
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        self.assertEqual(-1, libc.fallocate(fd, 3, ctypes.c_long(8192),
                                            ctypes.c_long(4096)))
        self.assertEqual(errno.EPERM, ctypes.get_errno())
        self.assertEqual(b'kernel text', os.pread(fd, 11, 8192))

    def test_wrong_size_or_kind_is_refused(self):
        self.assertRaises(ramholder.HolderError, ramholder.seal_copy,
                          self.ram, SIZE * 2)
        os.symlink(self.ram, os.path.join(self.dir, 'link'))
        self.assertRaises(OSError, ramholder.seal_copy,
                          os.path.join(self.dir, 'link'), SIZE)
        self.assertRaises(ramholder.HolderError, ramholder.seal_copy,
                          self.dir, SIZE)


class HolderTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.tmpl = os.path.join(self.root, 'a1b2c3d4e5f60718')
        os.mkdir(self.tmpl, 0o700)
        with open(os.path.join(self.tmpl, 'ram'), 'wb') as f:
            f.truncate(SIZE)
            f.seek(4096)
            f.write(b'template page')
        self.holders = set()
        self.addCleanup(self._stop_holder)

    def _holder_pid(self):
        try:
            return fileutils.read_json(
                os.path.join(self.tmpl, ramholder.HOLDER))['pid']
        except (OSError, ValueError, KeyError):
            return None

    def _stop_holder(self):
        # Only holders this test saw start (a lying holder.json may name
        # anyone, this process included).
        for pid in self.holders:
            if pid and _alive(pid):
                os.kill(pid, 15)

    def _open(self):
        fd = sealedram.open_ram(self.tmpl, SIZE, 30)
        self.holders.add(self._holder_pid())
        return fd

    def _wait_gone(self, pid, seconds=ramholder.POLL * 5):
        deadline = time.monotonic() + seconds
        while _alive(pid):
            self.assertLess(time.monotonic(), deadline,
                            'holder %d still alive' % pid)
            time.sleep(0.05)

    def test_open_starts_one_holder_and_reuses_it(self):
        fd = self._open()
        self.addCleanup(os.close, fd)
        self.assertEqual(b'template page', os.pread(fd, 13, 4096))
        self.assertEqual(os.O_RDONLY, fcntl.fcntl(fd, fcntl.F_GETFL) & 3)
        pid = self._holder_pid()
        self.assertTrue(_alive(pid))
        # Not a child of ours: its own session, reaped by its parent.
        self.assertNotEqual(os.getsid(0), os.getsid(pid))
        again = self._open()
        self.addCleanup(os.close, again)
        self.assertEqual(pid, self._holder_pid())
        self.assertTrue(os.path.samestat(os.fstat(fd), os.fstat(again)))

    def test_holder_ends_with_its_template(self):
        fd = self._open()
        os.close(fd)
        pid = self._holder_pid()
        gone = self.tmpl + '.retired-1'
        os.rename(self.tmpl, gone)
        self._wait_gone(pid)

    def test_a_dead_holder_is_replaced(self):
        os.close(self._open())
        first = self._holder_pid()
        os.kill(first, 9)
        self._wait_gone(first)
        self.assertIsNone(sealedram.from_holder(self.tmpl, SIZE))
        fd = self._open()
        self.addCleanup(os.close, fd)
        self.assertNotEqual(first, self._holder_pid())
        self.assertEqual(b'template page', os.pread(fd, 13, 4096))

    def test_a_holder_that_fails_says_why(self):
        os.unlink(os.path.join(self.tmpl, 'ram'))
        exc = self.assertRaises(sealedram.SealedRamError,
                                sealedram.open_ram, self.tmpl, SIZE, 30)
        self.assertIn('ram', str(exc))
        self.assertIsNone(self._holder_pid())

    def _lie(self, **change):
        os.close(self._open())
        path = os.path.join(self.tmpl, ramholder.HOLDER)
        info = fileutils.read_json(path)
        info.update(change)
        fileutils.write_json(path, info)
        return info

    def test_lying_holder_files_are_not_trusted(self):
        # Another process's descriptor: ours, a regular file, not sealed.
        plain = os.open(os.path.join(self.tmpl, 'ram'), os.O_RDONLY)
        self.addCleanup(os.close, plain)
        st = os.fstat(plain)
        for change in (
                {'size': SIZE * 2},
                {'ino': 1},
                {'start': 1},
                {'fd': 9999},
                {'pid': 2 ** 22 + 1},
                {'pid': 'self'},
                {'pid': True},
                {'pid': os.getpid(), 'fd': plain, 'dev': st.st_dev,
                 'ino': st.st_ino,
                 'start': ramholder.start_time(os.getpid())}):
            self._lie(**change)
            self.assertIsNone(sealedram.from_holder(self.tmpl, SIZE),
                              change)

    def test_hostile_holder_files_are_bounded(self):
        path = os.path.join(self.tmpl, ramholder.HOLDER)
        for content in (b'', b'garbage', b'[' * 100000 + b']' * 100000,
                        b'{"pid": 1}' + b' ' * (8 * 1024 * 1024), b'[]',
                        b'{"pid": -1, "fd": -1}'):
            with open(path, 'wb') as f:
                f.write(content)
            self.assertIsNone(sealedram.from_holder(self.tmpl, SIZE))
        os.unlink(path)
        os.symlink('/etc/passwd', path)
        self.assertIsNone(sealedram.from_holder(self.tmpl, SIZE))
        os.unlink(path)
        # A starter replaces what it cannot use.
        fd = self._open()
        self.addCleanup(os.close, fd)
        self.assertEqual(b'template page', os.pread(fd, 13, 4096))

    def test_command_line(self):
        out = subprocess.run(
            [sys.executable, '-m', 'kata_zun.hypervisor.ramholder', 'x'],
            capture_output=True)
        self.assertEqual(2, out.returncode)
        self.assertIn(b'usage', out.stderr)
