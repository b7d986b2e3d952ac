"""A disk image is locked for the life of the VM that holds it."""

import os
import subprocess
import sys

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.hypervisor.qemu import handles


class DiskLockTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'vol.img')
        with open(self.path, 'wb') as f:
            f.truncate(1 << 20)

    def test_one_writer_or_many_readers(self):
        writer = handles.open_disk(self.path, False)
        try:
            for read_only in (False, True):
                exc = self.assertRaises(exception.HypervisorError,
                                        handles.open_disk, self.path,
                                        read_only)
                self.assertIn('in use by another VM', str(exc))
        finally:
            os.close(writer)
        readers = [handles.open_disk(self.path, True) for _ in range(3)]
        try:
            self.assertRaises(exception.HypervisorError, handles.open_disk,
                              self.path, False)
        finally:
            for fd in readers:
                os.close(fd)
        os.close(handles.open_disk(self.path, False))

    def test_the_lock_follows_the_descriptor_into_the_child(self):
        # QEMU inherits the fd: the lock holds while it runs, after the
        # opener closed its own copy.
        fd = handles.open_disk(self.path, False)
        child = subprocess.Popen(
            [sys.executable, '-c', 'import sys; sys.stdin.read()'],
            stdin=subprocess.PIPE, pass_fds=(fd,))
        os.close(fd)
        try:
            self.assertRaises(exception.HypervisorError, handles.open_disk,
                              self.path, True)
        finally:
            child.communicate(b'', timeout=30)
        os.close(handles.open_disk(self.path, True))
