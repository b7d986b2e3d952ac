"""Descriptors handed to QEMU, the capped console log, QMP fd passing."""

import json
import os
import socket
import stat
import threading

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.hypervisor.qemu import handles
from kata_zun.hypervisor.qemu import qmp


class ConsoleLogTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'console.log')

    def _drain(self, chunks, max_bytes):
        host, vm = socket.socketpair()
        drain = handles.ConsoleLog(host, self.path, max_bytes)
        drain.start()
        for chunk in chunks:
            vm.sendall(chunk)
        vm.close()
        drain.join(10)
        self.assertFalse(drain.is_alive())

    def test_a_flooding_guest_cannot_fill_the_disk(self):
        # 8 MiB of console output, 64 KiB kept (plus one rotated file).
        line = b'x' * 1023 + b'\n'
        self._drain([line * 64] * 128 + [b'the last words\n'], 64 * 1024)
        sizes = [os.path.getsize(p) for p in (self.path, self.path + '.1')]
        self.assertLessEqual(max(sizes), 64 * 1024)
        with open(self.path, 'rb') as f:
            self.assertTrue(f.read().endswith(b'the last words\n'))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))

    def test_one_huge_write_keeps_its_end(self):
        self._drain([b'a' * 100000 + b'END'], 4096)
        with open(self.path, 'rb') as f:
            data = f.read()
        self.assertLessEqual(len(data), 4096)
        self.assertTrue(data.endswith(b'END'))

    def test_never_follows_a_symlink(self):
        target = os.path.join(self.dir, 'elsewhere')
        os.symlink(target, self.path)
        self._drain([b'guest text'], 4096)
        self.assertFalse(os.path.exists(target))


class OpenTestCase(base.BaseTestCase):

    def test_read_only_disk_is_opened_read_only(self):
        path = self.useFixture(fixtures.TempDir()).join('disk.img')
        with open(path, 'wb') as f:
            f.write(b'\0' * 512)
        fd = handles.open_disk(path, read_only=True)
        self.addCleanup(os.close, fd)
        self.assertRaises(OSError, os.write, fd, b'x')
        self.assertRaises(exception.HypervisorError, handles.open_disk,
                          path + '.missing', False)

    def test_listening_socket_is_private(self):
        path = self.useFixture(fixtures.TempDir()).join('qmp.sock')
        sock = handles.listening_socket(path)
        self.addCleanup(sock.close)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))


class QMPFdPassingTestCase(base.BaseTestCase):

    def test_fd_travels_with_the_command(self):
        path = self.useFixture(fixtures.TempDir()).join('qmp.sock')
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        got = {}

        def server():
            conn, _ = srv.accept()
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            for _ in range(2):
                msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
                req = json.loads(msg.splitlines()[0])
                got[req['execute']] = fds
                conn.sendall(json.dumps({'return': {},
                                         'id': req['id']}).encode() + b'\n')
            conn.close()
        thread = threading.Thread(target=server)
        thread.start()
        client = qmp.QMPClient(path)
        client.connect(5)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        client.execute('getfd', {'fdname': 'tap0'}, fds=(w,))
        os.close(w)
        client.close()
        thread.join(5)
        self.assertEqual([], got['qmp_capabilities'])
        self.assertEqual(1, len(got['getfd']))
        os.write(got['getfd'][0], b'through')      # the very same pipe
        os.close(got['getfd'][0])
        self.assertEqual(b'through', os.read(r, 10))
