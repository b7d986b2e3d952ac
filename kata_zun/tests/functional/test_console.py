"""The console server against a real VM, driven by the clients zun uses.

zun-wsproxy reaches interactive exec with docker-py
(``APIClient(...).exec_start(exec_id, socket=True, tty=True)``) and attach
with websocket-client: the same libraries drive the console here, with
the container started by the real CLI (no zun).
"""

import socket
import time

from oslo_config import fixture as config_fixture

from kata_zun import conf
from kata_zun.console import server as console_server
from kata_zun.runtime import manager
from kata_zun.tests.functional import base


def _read_until(recv, marker, timeout=60):
    data = b''
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError('%r not seen in %r' % (marker, data))
        chunk = recv()
        if not chunk:
            raise AssertionError('closed before %r: %r' % (marker, data))
        data += chunk
    return data


class ConsoleTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        conf.CONF([], project='kata-zun',
                  default_config_files=[self.conf_file])
        self.addCleanup(cfg.conf.reset)
        self.rt = manager.Runtime()
        self.console = console_server.ConsoleServer(
            self.rt, '127.0.0.1', 0, ttl=60).start()
        self.addCleanup(self.console.stop)
        self.cid = self.kz('run', '-d', '-i', '-t', '--name', 'c1',
                           'busybox', 'sh', check=0).text.strip()
        self.base_url = 'tcp://127.0.0.1:%d' % self.console.port

    def _docker(self):
        import docker
        return docker.APIClient(base_url=self.base_url, timeout=30)

    def test_interactive_exec_with_docker_py(self):
        import docker
        exec_id = self.console.add_exec(self.cid, ['sh'])
        # zunclient resizes right after connecting to zun-wsproxy, often
        # before the process exists: the size is applied when it starts.
        self.console.resize_exec(exec_id, 33, 101)
        client = self._docker()
        # What zun-wsproxy does (websocketproxy._new_exec_client).
        tsock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        sock.sendall(b'stty size; echo ex$((6*7))ec; exit 3\n')
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        self.assertIn(b'ex42ec', data)
        self.assertIn(b'33 101', data)
        info = client.exec_inspect(exec_id)
        self.assertEqual(3, info['ExitCode'])
        self.assertFalse(info['Running'])
        # An exec id opens one session only.
        self.assertRaises(docker.errors.APIError, client.exec_start,
                          exec_id, socket=True, tty=True)
        self.assertRaises(docker.errors.NotFound, client.exec_start,
                          'f' * 64, socket=True, tty=True)

    def test_exec_resize_while_running_and_peer_hangup(self):
        exec_id = self.console.add_exec(self.cid, ['sh'])
        tsock = self._docker().exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        sock.sendall(b'echo rea$((1))dy\n')
        _read_until(lambda: sock.recv(65536), b'rea1dy')
        self.console.resize_exec(exec_id, 12, 34)
        sock.sendall(b'stty size\n')
        _read_until(lambda: sock.recv(65536), b'12 34')
        # The peer goes away: the shell sees EOF (^D on a tty) and ends.
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        deadline = time.monotonic() + 30
        while self.console.registry.get_exec(exec_id).state != 'exited':
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.2)

    def test_attach_with_websocket_client(self):
        import websocket
        url = self.console.attach_url(self.cid)
        # What zun-wsproxy does (websocketclient.WebSocketClient).
        ws = websocket.create_connection(url, skip_utf8_validation=True,
                                         timeout=60)
        # zun-wsproxy forwards the user's bytes in text frames.
        ws.send(b'echo att$((40+2))ached\n')
        _read_until(ws.recv, b'att42ached')
        ws.send_binary(b'stty size\n')
        self.rt.call(self.cid, 'resize', {'rows': 21, 'cols': 77})
        ws.send_binary(b'stty size\n')
        _read_until(ws.recv, b'21 77')
        ws.close()
        # Detaching left the container running; the token was single-use.
        self.assertEqual('running', self.rt.get(self.cid).status)
        self.assertRaises(websocket.WebSocketBadStatusException,
                          websocket.create_connection, url)
        # Attach again, and see the container exit through the socket.
        ws = websocket.create_connection(self.console.attach_url(self.cid),
                                         timeout=60)
        ws.send_binary(b'exit 7\n')
        data = b''
        while True:
            try:
                opcode, payload = ws.recv_data(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.assertEqual(1000, int.from_bytes(payload[:2], 'big'))
                self.assertIn(b'code 7', payload)
                break
            data += payload
        ws.close()
        deadline = time.monotonic() + 30
        while self.rt.get(self.cid).status != 'exited':
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.2)
        self.assertEqual(7, self.rt.get(self.cid).exit_code)

    def test_bad_requests_are_refused_clearly(self):
        import requests
        import websocket
        base = 'http://127.0.0.1:%d' % self.console.port
        exc = self.assertRaises(
            websocket.WebSocketBadStatusException,
            websocket.create_connection, 'ws://127.0.0.1:%d/attach/%s'
            '?token=%s' % (self.console.port, self.cid, 'a' * 64))
        self.assertEqual(403, exc.status_code)
        r = requests.get(self.console.attach_url(self.cid).replace(
            'ws:', 'http:'), timeout=10)
        self.assertEqual(426, r.status_code)
        r = requests.get(base + '/nope', timeout=10)
        self.assertEqual(404, r.status_code)
        self.assertIn('message', r.json())
        r = requests.get(base + '/v1.41/exec/%s/start' % ('a' * 64),
                         timeout=10)
        self.assertEqual(405, r.status_code)
        r = requests.get(base + '/version', timeout=10)
        self.assertEqual(200, r.status_code)
        self.assertIn('ApiVersion', r.json())
        # A command that does not exist: the reason shows in the stream.
        exec_id = self.console.add_exec(self.cid, ['no-such-command'])
        client = self._docker()
        sock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(sock, '_sock', sock)
        sock.settimeout(60)
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertIn(b'executable file not found', data)
        self.assertEqual(127, client.exec_inspect(exec_id)['ExitCode'])
        # A request head that never ends is cut off.
        s = socket.create_connection(('127.0.0.1', self.console.port))
        s.sendall(b'GET /version HTTP/1.1\r\n' + b'X-A: b\r\n' * 3000)
        s.settimeout(10)
        self.assertIn(b' 431 ', s.recv(4096))
        s.close()
