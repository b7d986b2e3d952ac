"""The console server against a real VM, driven by the clients zun uses.

zun-wsproxy reaches interactive exec with docker-py
(``APIClient(...).exec_start(exec_id, socket=True, tty=True)``) and attach
with websocket-client: the same libraries drive the console here, with
the container started by the real CLI (no zun).
"""

import os
import socket
import ssl
import subprocess
import time
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture

from kata_zun import conf
from kata_zun.console import server as console_server
from kata_zun.runtime import manager
from kata_zun.tests.functional import base
from kata_zun.tests.functional import registry_fixture


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


def _client_cert(directory, name, ca, ca_key):
    """A client certificate (clientAuth) signed by ``ca``.

    :returns: (certificate file, key file).
    """
    key, csr, cert, ext = (os.path.join(directory, name + n) for n in (
        '.key', '.csr', '.pem', '.ext'))
    subprocess.run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
                    '-keyout', key, '-out', csr, '-subj', '/CN=' + name],
                   check=True, capture_output=True)
    with open(ext, 'w') as f:
        f.write('basicConstraints=CA:FALSE\n'
                'keyUsage=critical,digitalSignature,keyEncipherment\n'
                'extendedKeyUsage=clientAuth\n')
    subprocess.run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca,
                    '-CAkey', ca_key, '-CAcreateserial', '-out', cert,
                    '-days', '2', '-extfile', ext],
                   check=True, capture_output=True)
    return cert, key


def _drain(sock):
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class _ConsoleBase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        conf.CONF([], project='kata-zun',
                  default_config_files=[self.conf_file])
        self.addCleanup(cfg.conf.reset)
        self.rt = manager.Runtime()
        self.cid = self.kz('run', '-d', '-i', '-t', '--name', 'c1',
                           'busybox', 'sh', check=0).text.strip()


class ConsoleTlsTestCase(_ConsoleBase):
    """zun-wsproxy's side of a TLS console, as zun 18 does it: exec with
    docker-py on an https:// URL (the server checked against the CA
    bundle of python-requests, no client certificate), attach with
    websocket-client on wss:// with [docker] ca_file, cert_file and
    key_file (websocketclient.WebSocketClient).
    """

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.ca, cert, key = registry_fixture.make_ca(tmp)
        self.server_pair = (cert, key)
        ca_key = os.path.join(tmp, 'ca.key')
        self.client = _client_cert(tmp, 'wsproxy', self.ca, ca_key)
        other = os.path.join(tmp, 'other')
        os.mkdir(other)
        other_ca, _c, _k = registry_fixture.make_ca(other)
        self.stranger = _client_cert(other, 'stranger', other_ca,
                                     os.path.join(other, 'ca.key'))
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(tls_cert_file=cert, tls_key_file=key,
                        tls_ca_file=self.ca, listen_host='127.0.0.1',
                        listen_port=0, group='kata_console')
        self.console = console_server.from_conf(self.rt, conf.CONF).start()
        self.addCleanup(self.console.stop)
        self.port = self.console.port

    def _tls_client_context(self, cert=None):
        # What zun's WebSocketClient.connect() builds for wss://.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca)
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx

    def test_exec_over_https_with_docker_py(self):
        import docker
        # zun-wsproxy: APIClient(base_url=[docker] docker_remote_api_url);
        # its requests session trusts REQUESTS_CA_BUNDLE.
        self.useFixture(fixtures.EnvironmentVariable('REQUESTS_CA_BUNDLE',
                                                     self.ca))
        client = docker.APIClient(
            base_url='https://127.0.0.1:%d' % self.port, timeout=30)
        exec_id = self.console.add_exec(self.cid, ['sh'], project='p1')
        tsock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        sock.sendall(b'echo tl$((5*5))s; exit 4\n')
        self.assertIn(b'tl25s', _drain(sock))
        sock.close()
        self.assertEqual(4, client.exec_inspect(exec_id)['ExitCode'])
        # The session's slot is given back once its thread is done.
        deadline = time.monotonic() + 30
        while self.console.projects.held('p1'):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)

    def test_attach_over_wss_with_websocket_client(self):
        import websocket
        url = self.console.attach_url(self.cid, project='p1')
        self.assertTrue(url.startswith('wss://127.0.0.1:%d/' % self.port))
        ws = websocket.create_connection(
            url, sslopt={'context': self._tls_client_context(self.client)},
            skip_utf8_validation=True, timeout=60)
        ws.send(b'echo wss$((40+2))ok\n')
        _read_until(ws.recv, b'wss42ok')
        ws.close()
        self.assertEqual('running', self.rt.get(self.cid).status)

    def test_plain_and_unauthenticated_clients_are_refused(self):
        import docker
        import requests
        import websocket
        url = self.console.attach_url(self.cid)
        # Plain websocket and plain HTTP on the TLS port: nothing served.
        self.assertRaises((websocket.WebSocketException, OSError),
                          websocket.create_connection,
                          url.replace('wss:', 'ws:'), timeout=20)
        self.assertRaises(requests.exceptions.RequestException,
                          requests.get,
                          'http://127.0.0.1:%d/version' % self.port,
                          timeout=20)
        plain = docker.APIClient(base_url='tcp://127.0.0.1:%d' % self.port,
                                 timeout=20, version='1.41')
        exec_id = self.console.add_exec(self.cid, ['sh'])
        self.assertRaises((requests.exceptions.RequestException,
                           docker.errors.DockerException),
                          plain.exec_start, exec_id, socket=True, tty=True)
        # TLS that does not trust our certificate (python-requests'
        # own bundle): refused by the client.
        self.assertRaises(requests.exceptions.SSLError, requests.get,
                          'https://127.0.0.1:%d/version' % self.port,
                          timeout=20, verify=True)
        # Attach without a client certificate: 403, the token unspent.
        exc = self.assertRaises(
            websocket.WebSocketBadStatusException,
            websocket.create_connection, url,
            sslopt={'context': self._tls_client_context()}, timeout=20)
        self.assertEqual(403, exc.status_code)
        # A client certificate of another CA: no TLS session at all.
        self.assertRaises(
            (ssl.SSLError, OSError, websocket.WebSocketException),
            websocket.create_connection, url,
            sslopt={'context': self._tls_client_context(self.stranger)},
            timeout=20)
        # The real client still gets in with the same URL.
        ws = websocket.create_connection(
            url, sslopt={'context': self._tls_client_context(self.client)},
            timeout=60)
        ws.close()
        self.assertEqual('running', self.rt.get(self.cid).status)

    def test_exec_client_certificate_when_required(self):
        import docker
        console = console_server.ConsoleServer(
            self.rt, '127.0.0.1', 0, ttl=60,
            ssl_context=console_server.tls_context(*self.server_pair,
                                                   ca_file=self.ca),
            client_cert_for=('attach', 'exec')).start()
        self.addCleanup(console.stop)
        url = 'https://127.0.0.1:%d' % console.port
        exec_id = console.add_exec(self.cid, ['sh'])
        # python-requests lets REQUESTS_CA_BUNDLE override a session's
        # CA: trust ours that way, as zun-wsproxy must.
        self.useFixture(fixtures.EnvironmentVariable('REQUESTS_CA_BUNDLE',
                                                     self.ca))
        # zun-wsproxy's way: no client certificate.
        anonymous = docker.APIClient(base_url=url, timeout=30,
                                     version='1.41')
        exc = self.assertRaises(docker.errors.APIError,
                                anonymous.exec_start, exec_id, socket=True,
                                tty=True)
        self.assertEqual(403, exc.response.status_code)
        client = docker.APIClient(
            base_url=url, timeout=30, version='1.41',
            tls=docker.tls.TLSConfig(client_cert=self.client,
                                     ca_cert=self.ca, verify=True))
        # The refused request did not spend the exec id.
        tsock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        sock.sendall(b'echo ce$((2+2))rt; exit 0\n')
        self.assertIn(b'ce4rt', _drain(sock))
        sock.close()

    def test_silent_tls_client_is_cut_off(self):
        with mock.patch.object(console_server, 'HEAD_TIMEOUT', 1.0):
            s = socket.create_connection(('127.0.0.1', self.port))
            s.settimeout(30)
            start = time.monotonic()
            # No ClientHello ever: the server hangs up by itself.
            self.assertEqual(b'', s.recv(1))
            self.assertLess(time.monotonic() - start, 25)
            s.close()
        # Its slot is free again.
        deadline = time.monotonic() + 10
        while self.console._slots._value != self.console.max_connections:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)


class ConsoleProjectCapTestCase(_ConsoleBase):
    """One project cannot take every console slot."""

    def setUp(self):
        super().setUp()
        self.console = console_server.ConsoleServer(
            self.rt, '127.0.0.1', 0, ttl=60, max_connections=4,
            max_per_project=2).start()
        self.addCleanup(self.console.stop)
        self.base_url = 'tcp://127.0.0.1:%d' % self.console.port

    def _exec(self, project):
        import docker
        exec_id = self.console.add_exec(self.cid, ['sh'], project=project)
        client = docker.APIClient(base_url=self.base_url, timeout=30)
        tsock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        self.addCleanup(sock.close)
        sock.sendall(b'echo up$((1+1))\n')
        _read_until(lambda: sock.recv(65536), b'up2')
        return exec_id, sock

    def test_project_at_its_cap_is_refused_others_get_in(self):
        import docker
        import websocket
        held = [self._exec('project-a') for _ in range(2)]
        self.assertEqual(2, self.console.projects.held('project-a'))
        # Project A at its cap: exec and attach refused (503) at once ...
        exec_id = self.console.add_exec(self.cid, ['sh'],
                                        project='project-a')
        client = docker.APIClient(base_url=self.base_url, timeout=30)
        exc = self.assertRaises(docker.errors.APIError, client.exec_start,
                                exec_id, socket=True, tty=True)
        self.assertEqual(503, exc.response.status_code)
        self.assertIn('project project-a', str(exc))
        exc = self.assertRaises(
            websocket.WebSocketBadStatusException,
            websocket.create_connection,
            self.console.attach_url(self.cid, project='project-a'),
            timeout=20)
        self.assertEqual(503, exc.status_code)
        # ... while project B still gets in, for exec and attach.
        self._exec('project-b')
        ws = websocket.create_connection(
            self.console.attach_url(self.cid, project='project-b'),
            timeout=60)
        ws.send_binary(b'echo b$((2*3))b\n')
        _read_until(ws.recv, b'b6b')
        ws.close()
        # A's refused exec id was not spent: it works once A has room.
        _eid, sock = held[0]
        sock.sendall(b'exit 0\n')
        _drain(sock)
        deadline = time.monotonic() + 30
        while self.console.projects.held('project-a') > 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        tsock = client.exec_start(exec_id, socket=True, tty=True)
        sock = getattr(tsock, '_sock', tsock)
        sock.settimeout(60)
        sock.sendall(b'echo again; exit 0\n')
        self.assertIn(b'again', _drain(sock))
        sock.close()
