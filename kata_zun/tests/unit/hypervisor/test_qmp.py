import json
import os
import socket
import threading
import time

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.hypervisor.qemu import qmp

GREETING = {'QMP': {'version': {'qemu': {'major': 7, 'minor': 2,
                                         'micro': 22}},
                    'capabilities': []}}


class FakeQMP:
    """A QMP server in a thread; ``script(server)`` plays one session."""

    def __init__(self, path, script, greeting=GREETING):
        self.received = []
        self._greeting = greeting
        self._script = script
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._conn = None
        self._file = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self._conn, _ = self._listener.accept()
        self._file = self._conn.makefile('rb')
        try:
            if self._greeting is not None:
                self.send(self._greeting)
                caps = self.recv()
                self.send({'return': {}, 'id': caps['id']})
            self._script(self)
        except (OSError, ValueError):
            pass

    def send(self, obj):
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self._conn.sendall(raw + b'\n')

    def recv(self):
        msg = json.loads(self._file.readline())
        self.received.append(msg)
        return msg

    def close(self):
        for obj in (self._file, self._conn, self._listener):
            if obj is not None:
                obj.close()


class QMPClientTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(30, gentle=True))
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'qmp.sock')

    def _server(self, script, **kwargs):
        server = FakeQMP(self.path, script, **kwargs)
        self.addCleanup(server.close)
        return server

    def _client(self):
        client = qmp.QMPClient(self.path, max_events=2)
        self.addCleanup(client.close)
        return client

    def test_handshake_and_command(self):
        def script(srv):
            msg = srv.recv()
            srv.send({'return': {'status': 'running'}, 'id': msg['id']})

        server = self._server(script)
        client = self._client()
        self.assertEqual(GREETING['QMP'], client.connect(timeout=5))
        self.assertEqual({'status': 'running'},
                         client.execute('query-status', timeout=5))
        server.thread.join(5)
        self.assertEqual('qmp_capabilities', server.received[0]['execute'])
        self.assertEqual('query-status', server.received[1]['execute'])
        self.assertNotIn('arguments', server.received[1])

    def test_arguments_events_and_stale_replies(self):
        def script(srv):
            msg = srv.recv()
            for n in range(3):
                srv.send({'event': 'E%d' % n, 'data': {},
                          'timestamp': {'seconds': 1, 'microseconds': 0}})
            srv.send({'return': 'stale', 'id': msg['id'] - 1})
            srv.send({'return': {'ok': msg['arguments']}, 'id': msg['id']})

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        self.assertEqual({'ok': {'a': 1}},
                         client.execute('x-cmd', {'a': 1}, timeout=5))
        # Bounded: only the newest two events are kept.
        self.assertEqual(['E1', 'E2'], [e['event'] for e in client.events])

    def test_error_reply_keeps_session(self):
        def script(srv):
            msg = srv.recv()
            srv.send({'error': {'class': 'GenericError', 'desc': 'nope'},
                      'id': msg['id']})
            msg = srv.recv()
            srv.send({'return': {}, 'id': msg['id']})

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        exc = self.assertRaises(qmp.QMPCommandError, client.execute, 'cont')
        self.assertEqual(('cont', 'GenericError', 'nope'),
                         (exc.cmd, exc.error_class, exc.desc))
        self.assertIsInstance(exc, exception.HypervisorError)
        self.assertIn('GenericError: nope', str(exc))
        self.assertEqual({}, client.execute('stop'))

    def test_oversized_line(self):
        def script(srv):
            srv.recv()
            chunk = b'x' * 65536
            for _ in range(qmp.MAX_LINE // len(chunk) + 2):
                srv._conn.sendall(chunk)

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        self.assertRaises(qmp.QMPProtocolError, client.execute, 'x',
                          timeout=10)
        self.assertFalse(client.connected)

    def test_server_closes(self):
        def script(srv):
            srv.recv()
            srv._conn.shutdown(socket.SHUT_RDWR)

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        exc = self.assertRaises(qmp.QMPConnectError, client.execute, 'quit')
        self.assertIn('closed', str(exc))
        self.assertRaises(qmp.QMPConnectError, client.execute, 'x')

    def test_timeout(self):
        done = threading.Event()

        def script(srv):
            srv.recv()
            done.wait(10)

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        started = time.monotonic()
        self.assertRaises(qmp.QMPTimeout, client.execute, 'x', timeout=0.2)
        self.assertLess(time.monotonic() - started, 2)
        self.assertFalse(client.connected)
        done.set()

    def test_bad_greeting_and_bad_json(self):
        self._server(lambda srv: None, greeting={'hello': 1})
        self.assertRaises(qmp.QMPProtocolError, self._client().connect,
                          timeout=5)

    def test_bad_json(self):
        def script(srv):
            srv.recv()
            srv.send(b'{not json')

        self._server(script)
        client = self._client()
        client.connect(timeout=5)
        self.assertRaises(qmp.QMPProtocolError, client.execute, 'x')

    def test_connect_retries_until_socket_appears(self):
        timer = threading.Timer(0.3, lambda: self._server(lambda srv: None))
        timer.start()
        self.addCleanup(timer.cancel)
        self._client().connect(timeout=5)

    def test_connect_gives_up(self):
        client = self._client()
        exc = self.assertRaises(qmp.QMPConnectError, client.connect,
                                timeout=0.2)
        self.assertIn('not ready within', str(exc))
        started = time.monotonic()
        self.assertRaises(qmp.QMPConnectError, client.connect, timeout=10,
                          retry_while=lambda: False)
        self.assertLess(time.monotonic() - started, 1)
        self.assertRaises(qmp.QMPConnectError, client.execute, 'x')

    def test_error_hierarchy(self):
        for cls in (qmp.QMPConnectError, qmp.QMPTimeout,
                    qmp.QMPCommandError, qmp.QMPProtocolError):
            self.assertTrue(issubclass(cls, qmp.QMPError))
        self.assertTrue(issubclass(qmp.QMPError, exception.HypervisorError))
