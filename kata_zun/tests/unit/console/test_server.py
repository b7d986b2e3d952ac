"""The console server over loopback, with a scripted shim behind it."""

import json
import os
import socket
import struct
import tempfile
import threading
import time
import types

import fixtures
from oslotest import base

from kata_zun.agent import protocol
from kata_zun.console import server as console_server
from kata_zun.console import streams
from kata_zun.console import websocket as ws
from kata_zun import exception
from kata_zun.shim import client as shim_client

CID = 'c' * 32
MAIN = 1


class FakeShim(object):
    """A shim API socket: exec'd processes echo stdin as output.

    A process receiving ``exit N`` exits with N; stdin EOF exits 0; any
    signal exits 128 + signal.
    """

    def __init__(self, path):
        self.path = path
        self.calls = []
        self.next_proc = 5
        self.exit_on_eof = True
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        decoder = protocol.Decoder()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for frame in decoder.feed(data):
                    self._frame(conn, frame)
        except OSError:
            pass
        finally:
            conn.close()

    def _exit(self, conn, proc, code):
        conn.sendall(protocol.encode_json(protocol.EVENT, {
            'event': 'exit', 'proc': proc, 'exit_code': code}))

    def _frame(self, conn, frame):
        if frame.type == protocol.HELLO:
            conn.sendall(protocol.encode_json(protocol.HELLO,
                                              {'version': 1}))
        elif frame.type == protocol.STDIN:
            proc, data = frame.stream()
            if not data:
                if self.exit_on_eof:
                    self._exit(conn, proc, 0)
                return
            if data.startswith(b'exit '):
                return self._exit(conn, proc, int(data.split()[1]))
            conn.sendall(protocol.encode_stream(protocol.STDOUT, proc,
                                                b'out:' + data))
        elif frame.type == protocol.REQUEST:
            msg = frame.json()
            op, args = msg['op'], msg['args']
            self.calls.append((op, args))
            result = {}
            if op == 'exec':
                result = {'proc': self.next_proc}
                self.next_proc += 1
            elif op == 'state':
                result = {'main': MAIN}
            elif op == 'attach':
                result = {'exited': False}
            conn.sendall(protocol.encode_json(protocol.RESPONSE, {
                'id': msg['id'], 'result': result}))
            if op == 'exec':
                conn.sendall(protocol.encode_stream(
                    protocol.STDOUT, result['proc'], b'$ '))
            if op == 'signal':
                self._exit(conn, args['proc'], 128 + args['signal'])

    def close(self):
        # Wake the accept thread first: after a bare close() it stayed
        # blocked in accept(), and a later test's TCP server in the same
        # process (test_export_glance) lost connections, reset unanswered.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


class FakeRuntime(object):
    def __init__(self, path):
        self.path = path
        self.status = 'running'

    def get(self, cid):
        if cid != CID:
            raise exception.ContainerNotFound(ref=cid)
        return types.SimpleNamespace(id=cid, status=self.status,
                                     shim_alive=True)

    def connect(self, c):
        return shim_client.ShimClient(self.path, timeout=5)

    def exec_client(self, cid, argv, tty=False, stdin=False):
        client = self.connect(self.get(cid))
        result = client.call('exec', {'argv': argv, 'tty': tty,
                                      'stdin': stdin})
        return client, result['proc'], None

    def call(self, cid, op, args=None):
        with self.connect(self.get(cid)) as client:
            return client.call(op, args or {})


class ServerTestBase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(30, gentle=True))
        tmp = tempfile.mkdtemp(prefix='kzc', dir='/tmp')
        self.addCleanup(os.rmdir, tmp)
        path = os.path.join(tmp, 's')
        self.addCleanup(os.unlink, path)
        self.shim = FakeShim(path)
        self.addCleanup(self.shim.close)
        self.rt = FakeRuntime(path)
        self.server = console_server.ConsoleServer(
            self.rt, '127.0.0.1', 0, ttl=60, max_connections=4).start()
        self.addCleanup(self.server.stop)
        self.patch = self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.console.server.HANGUP_AFTER', 0.2))

    def connect(self):
        s = socket.create_connection(('127.0.0.1', self.server.port))
        s.settimeout(10)
        self.addCleanup(s.close)
        return s

    def request(self, data):
        s = self.connect()
        s.sendall(data)
        return self.read_all(s)

    @staticmethod
    def read_all(s):
        out = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk

    @staticmethod
    def read_head(s):
        data = b''
        while b'\r\n\r\n' not in data:
            chunk = s.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    def status(self, data):
        return int(data.split(b' ', 2)[1])


class DockerApiTest(ServerTestBase):

    def test_version_and_ping(self):
        data = self.request(b'GET /version HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertEqual(200, self.status(data))
        body = json.loads(data.partition(b'\r\n\r\n')[2])
        self.assertEqual(console_server.API_VERSION, body['ApiVersion'])
        data = self.request(b'GET /v1.41/version HTTP/1.1\r\n\r\n')
        self.assertEqual(200, self.status(data))
        data = self.request(b'GET /_ping HTTP/1.1\r\n\r\n')
        self.assertTrue(data.endswith(b'\r\n\r\nOK'))

    def test_errors(self):
        for request, status in (
                (b'GET /nope HTTP/1.1\r\n\r\n', 404),
                (b'POST /version HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
                 405),
                (b'GET /v1.41/exec/%s/start HTTP/1.1\r\n\r\n' % (
                    b'a' * 64), 405),
                (b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                 b'Content-Length: 2\r\n\r\n{}' % (b'a' * 64), 404),
                (b'POST /v1.41/exec/../start HTTP/1.1\r\n'
                 b'Content-Length: 2\r\n\r\n{}', 404),
                (b'GET /v1.41/exec/%s/json HTTP/1.1\r\n\r\n' % (
                    b'a' * 64), 404),
                (b'garbage\r\n\r\n', 400),
                (b'GET / HTTP/3\r\n\r\n', 505)):
            data = self.request(request)
            self.assertEqual(status, self.status(data), request)
            self.assertIn(b'"message"', data)

    def test_bad_exec_bodies(self):
        for body in (b'[', b'[]', b'{"Detach": true}', b'{"Tty": "yes"}'):
            exec_id = self.server.add_exec(CID, ['sh'])
            data = self.request(
                b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                b'Content-Length: %d\r\n\r\n%s' % (
                    exec_id.encode(), len(body), body))
            self.assertEqual(400, self.status(data), body)

    def start(self, exec_id, tty=True):
        body = json.dumps({'Tty': tty, 'Detach': False}).encode()
        s = self.connect()
        s.sendall(b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                  b'Connection: Upgrade\r\nUpgrade: tcp\r\n'
                  b'Content-Type: application/json\r\n'
                  b'Content-Length: %d\r\n\r\n%s' % (
                      exec_id.encode(), len(body), body))
        head = self.read_head(s)
        self.assertTrue(head.startswith(b'HTTP/1.1 101 UPGRADED\r\n'), head)
        self.assertIn(b'Upgrade: tcp', head)
        return s

    def test_exec_stream(self):
        exec_id = self.server.add_exec(CID, ['sh', '-i'])
        self.server.resize_exec(exec_id, 30, 100)
        s = self.start(exec_id)
        self.assertEqual(b'$ ', s.recv(2))
        s.sendall(b'hello')
        self.assertEqual(b'out:hello', s.recv(100))
        self.server.resize_exec(exec_id, 40, 120)
        s.sendall(b'exit 3')
        self.assertEqual(b'', self.read_all(s))
        info = self.server.registry.get_exec(exec_id).inspect()
        self.assertEqual(3, info['ExitCode'])
        ops = [c for c in self.shim.calls if c[0] in ('exec', 'resize')]
        self.assertEqual([
            ('exec', {'argv': ['sh', '-i'], 'tty': True, 'stdin': True}),
            ('resize', {'proc': 5, 'rows': 30, 'cols': 100}),
            ('resize', {'proc': 5, 'rows': 40, 'cols': 120})], ops)
        # Single use.
        s = self.connect()
        s.sendall(b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                  b'Content-Length: 0\r\n\r\n' % exec_id.encode())
        self.assertEqual(409, self.status(self.read_all(s)))

    def test_exec_stream_multiplexed_without_tty(self):
        exec_id = self.server.add_exec(CID, ['cat'])
        s = self.start(exec_id, tty=False)
        s.sendall(b'x')
        data = b''
        while len(data) < 8 + 2 + 8 + 5:
            data += s.recv(100)
        self.assertEqual(struct.pack('>BxxxL', 1, 2) + b'$ ' +
                         struct.pack('>BxxxL', 1, 5) + b'out:x', data)

    def test_peer_gone_hangs_up(self):
        exec_id = self.server.add_exec(CID, ['sh'])
        s = self.start(exec_id)
        s.recv(2)
        # A process that ignores the EOF of a half-close gets SIGHUP once
        # the grace time (0.2 s here) is over.
        self.shim.exit_on_eof = False
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(b'', self.read_all(s))
        self.assertEqual(129, self.server.registry.get_exec(
            exec_id).exit_code)
        self.assertIn(('signal', {'proc': 5, 'signal': 1}),
                      self.shim.calls)

    def test_eof_ends_stdin(self):
        exec_id = self.server.add_exec(CID, ['sh'])
        s = self.start(exec_id)
        s.recv(2)
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(b'', self.read_all(s))
        self.assertEqual(0, self.server.registry.get_exec(
            exec_id).exit_code)
        self.assertNotIn('signal', [c[0] for c in self.shim.calls])

    def test_container_not_running(self):
        exec_id = self.server.add_exec(CID, ['sh'])
        self.rt.status = 'exited'
        data = self.request(b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                            b'Content-Length: 0\r\n\r\n' % exec_id.encode())
        self.assertEqual(409, self.status(data))
        self.assertIn(b'not running', data)

    def test_unexpected_error_is_a_500_and_the_server_lives_on(self):
        exec_id = self.server.add_exec(CID, ['sh'])
        self.rt.get = None            # TypeError when called
        data = self.request(b'POST /v1.41/exec/%s/start HTTP/1.1\r\n'
                            b'Content-Length: 0\r\n\r\n' % exec_id.encode())
        self.assertEqual(500, self.status(data))
        data = self.request(b'GET /_ping HTTP/1.1\r\n\r\n')
        self.assertEqual(200, self.status(data))

    def test_connection_limit_and_recovery(self):
        idle = [self.connect() for _ in range(4)]
        s = self.connect()
        self.assertEqual(503, self.status(self.read_all(s)))
        for c in idle:
            c.close()
        # Slots come back once those connections are done.
        for _ in range(50):
            try:
                data = self.request(b'GET /_ping HTTP/1.1\r\n\r\n')
            except ConnectionResetError:
                # Still full: the 503 closed the connection with our
                # request unread, which resets it.
                data = b''
            if data and self.status(data) == 200:
                break
            time.sleep(0.05)
        self.assertEqual(200, self.status(data))


class AttachTest(ServerTestBase):

    KEY = 'dGhlIHNhbXBsZSBub25jZQ=='

    def handshake(self, url=None, extra=b''):
        url = url or self.server.attach_url(CID)
        path = url.split('/', 3)[3]
        s = self.connect()
        s.sendall(b'GET /%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
                  b'Connection: keep-alive, Upgrade\r\n'
                  b'Sec-WebSocket-Version: 13\r\n'
                  b'Sec-WebSocket-Key: %s\r\n%s\r\n' % (
                      path.encode(), self.KEY.encode(), extra))
        return s, self.read_head(s)

    def frames(self, s, parser, count):
        frames = []
        while len(frames) < count:
            data = s.recv(65536)
            if not data:
                break
            frames += parser.feed(data)
        return frames

    def test_attach_session(self):
        url = self.server.attach_url(CID)
        self.assertTrue(url.startswith('ws://127.0.0.1:%d/attach/%s?token='
                                       % (self.server.port, CID)))
        s, head = self.handshake(url, b'Sec-WebSocket-Protocol: binary, '
                                      b'base64\r\n')
        self.assertTrue(head.startswith(b'HTTP/1.1 101 '), head)
        self.assertIn(b'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=',
                      head)
        self.assertIn(b'Sec-WebSocket-Protocol: binary', head)
        parser = ws.FrameParser(require_mask=False)
        mask = b'\x0f\x0e\x0d\x0c'
        s.sendall(ws.encode_frame(ws.OP_TEXT, b'ab', fin=False, mask=mask) +
                  ws.encode_frame(ws.OP_PING, b'hb', mask=mask) +
                  ws.encode_frame(ws.OP_CONT, b'cd', mask=mask))
        frames = self.frames(s, parser, 3)
        self.assertEqual([(ws.OP_PONG, b'hb'), (ws.OP_BINARY, b'out:ab'),
                          (ws.OP_BINARY, b'out:cd')],
                         [(f.opcode, f.payload) for f in frames])
        s.sendall(ws.encode_frame(ws.OP_CLOSE, ws.close_payload(1000),
                                  mask=mask))
        frames = self.frames(s, parser, 1)
        self.assertEqual(ws.OP_CLOSE, frames[0].opcode)
        self.assertEqual(b'', self.read_all(s))
        # The token was single-use.
        s, head = self.handshake(url)
        self.assertIn(b' 403 ', head)

    def test_main_process_exit_closes(self):
        s, head = self.handshake()
        parser = ws.FrameParser(require_mask=False)
        s.sendall(ws.encode_frame(ws.OP_BINARY, b'exit 4', mask=b'abcd'))
        frames = self.frames(s, parser, 1)
        self.assertEqual(ws.OP_CLOSE, frames[0].opcode)
        self.assertEqual((1000, 'container exited with code 4'),
                         ws.parse_close(frames[0].payload))

    def test_protocol_error_closes_with_its_code(self):
        s, head = self.handshake()
        parser = ws.FrameParser(require_mask=False)
        s.sendall(ws.encode_frame(ws.OP_BINARY, b'unmasked'))
        frames = self.frames(s, parser, 1)
        self.assertEqual(ws.CLOSE_PROTOCOL_ERROR,
                         ws.parse_close(frames[0].payload)[0])
        # Detached: the main process got nothing and was not signalled.
        self.assertNotIn('signal', [c[0] for c in self.shim.calls])

    def test_refused_handshakes(self):
        s, head = self.handshake('ws://h:1/attach/%s?token=%s' % (
            CID, '0' * 64))
        self.assertIn(b' 403 ', head)
        s, head = self.handshake('ws://h:1/attach/%s' % CID)
        self.assertIn(b' 403 ', head)
        s, head = self.handshake('ws://h:1/attach/xyz?token=a')
        self.assertIn(b' 404 ', head)
        url = self.server.attach_url(CID)
        path = url.split('/', 3)[3].encode()
        for request, status in (
                (b'POST /%s HTTP/1.1\r\nContent-Length: 0\r\n\r\n' % path,
                 405),
                (b'GET /%s HTTP/1.1\r\n\r\n' % path, 426),
                (b'GET /%s HTTP/1.1\r\nUpgrade: websocket\r\n'
                 b'Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\n'
                 b'\r\n' % path, 426),
                (b'GET /%s HTTP/1.1\r\nUpgrade: websocket\r\n'
                 b'Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'
                 b'Sec-WebSocket-Key: short\r\n\r\n' % path, 400)):
            data = self.request(request)
            self.assertEqual(status, self.status(data), request)
        # Malformed handshakes did not spend the token.
        s, head = self.handshake(url)
        self.assertIn(b' 101 ', head)
        self.rt.status = 'exited'
        s, head = self.handshake()
        self.assertIn(b' 409 ', head)


class HelpersTest(base.BaseTestCase):

    def test_tty_size(self):
        self.assertEqual((24, 80), console_server.tty_size('24', 80))
        for h, w in ((None, 1), ('a', 1), (0, 1), (1, 70000)):
            self.assertRaises(ValueError, console_server.tty_size, h, w)

    def test_from_conf(self):
        opts = types.SimpleNamespace(listen_host=None, listen_port=2375,
                                     token_ttl=5, max_connections=3,
                                     max_connections_per_project=2,
                                     tls_cert_file=None, tls_key_file=None,
                                     tls_ca_file=None,
                                     tls_exec_client_cert=False)
        conf = types.SimpleNamespace(kata_console=opts, my_ip='10.0.0.5')
        s = console_server.from_conf(None, conf)
        self.assertEqual(('10.0.0.5', 2375, '10.0.0.5'),
                         (s.host, s.port, s.advertise_host))
        self.assertEqual(2, s.projects.limit)
        self.assertIsNone(s.ssl_context)
        opts.listen_host = '::'
        s = console_server.from_conf(None, conf)
        self.assertEqual(('::', '10.0.0.5'), (s.host, s.advertise_host))
        conf = types.SimpleNamespace(kata_console=opts)
        opts.listen_host = 'fd00::1'
        s = console_server.from_conf(None, conf)
        s.port = 1
        self.assertIn('ws://[fd00::1]:1/attach/', s.attach_url(CID))

    def test_from_conf_tls_settings_refused_clearly(self):
        opts = types.SimpleNamespace(listen_host='127.0.0.1',
                                     listen_port=2375, token_ttl=5,
                                     max_connections=3,
                                     max_connections_per_project=2,
                                     tls_cert_file=None, tls_key_file=None,
                                     tls_ca_file=None,
                                     tls_exec_client_cert=False)
        conf = types.SimpleNamespace(kata_console=opts)
        missing = os.path.join(tempfile.gettempdir(), 'kz-no-such.pem')
        for change, message in (
                ({'tls_cert_file': missing}, 'go together'),
                ({'tls_key_file': missing}, 'go together'),
                ({'tls_ca_file': missing}, 'needs tls_cert_file'),
                ({'tls_exec_client_cert': True}, 'needs tls_ca_file'),
                ({'tls_cert_file': missing, 'tls_key_file': missing},
                 'cannot be used')):
            for name, value in change.items():
                setattr(opts, name, value)
            exc = self.assertRaises(exception.KataZunException,
                                    console_server.from_conf, None, conf)
            self.assertIn(message, str(exc))
            for name in change:
                setattr(opts, name, False if name.startswith('tls_exec')
                        else None)

    def test_raw_stream_write_to_a_closed_peer(self):
        a, b = socket.socketpair()
        b.close()
        stream = streams.RawStream(a)
        self.assertRaises(streams.PeerGone, stream.write, b'x' * 100000)
        a.close()
