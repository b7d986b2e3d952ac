import base64
import http.server
import ssl
import threading
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import registry
from kata_zun.image.registry import manifests
from kata_zun.image.registry import transport

CONF = conf.CONF
HEX = 'b' * 64
DIGEST = 'sha256:' + HEX


class ResolveTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config

    def check(self, ref, registry_, repository, tag, digest, name, host):
        remote = registry.resolve(ref)
        self.assertEqual((registry_, repository, tag, digest),
                         (remote.registry, remote.repository, remote.tag,
                          remote.digest), ref)
        self.assertEqual(name, remote.name, ref)
        self.assertEqual(host, remote.host, ref)

    def test_docker_hub(self):
        hub = 'registry-1.docker.io'
        for ref in ('busybox', 'busybox:latest', 'library/busybox',
                    'docker.io/busybox', 'docker.io/library/busybox:latest',
                    'index.docker.io/library/busybox'):
            self.check(ref, 'docker.io', 'library/busybox', 'latest', None,
                       'busybox:latest', hub)
        self.check('bitnami/nginx:1.25', 'docker.io', 'bitnami/nginx',
                   '1.25', None, 'bitnami/nginx:1.25', hub)
        self.check('busybox@' + DIGEST, 'docker.io', 'library/busybox',
                   None, DIGEST, None, hub)
        self.check('busybox:1.36@' + DIGEST, 'docker.io', 'library/busybox',
                   '1.36', DIGEST, None, hub)
        self.assertEqual('docker.io/library/busybox:latest',
                         str(registry.resolve('busybox')))

    def test_explicit_registry(self):
        self.check('quay.io/coreos/etcd:v3', 'quay.io', 'coreos/etcd', 'v3',
                   None, 'quay.io/coreos/etcd:v3', 'quay.io')
        # No library/ for registries that are named.
        self.check('localhost:5000/app', 'localhost:5000', 'app', 'latest',
                   None, 'localhost:5000/app:latest', 'localhost:5000')
        self.assertEqual('localhost:5000/app@' + DIGEST,
                         str(registry.resolve('localhost:5000/app@' +
                                              DIGEST)))

    def test_default_registry_mirror(self):
        self.flags(default_registry='mirror.example:5000',
                   group='kata_image')
        mirror = 'mirror.example:5000'
        for ref in ('busybox', 'library/busybox:latest',
                    'docker.io/library/busybox'):
            self.check(ref, mirror, 'library/busybox', 'latest', None,
                       mirror + '/library/busybox:latest', mirror)
        self.check('team/app:2', mirror, 'team/app', '2', None,
                   mirror + '/team/app:2', mirror)
        self.check('other.example/app', 'other.example', 'app', 'latest',
                   None, 'other.example/app:latest', 'other.example')

    def test_default_registry_hub_aliases(self):
        for value in ('docker.io', 'index.docker.io',
                      'registry-1.docker.io'):
            self.flags(default_registry=value, group='kata_image')
            self.assertEqual('docker.io', registry.default_registry())

    def test_invalid(self):
        for ref in ('', 'Busybox', 'busybox@sha256:12', 'a//b', 'x:'):
            self.assertRaises(exception.InvalidReference, registry.resolve,
                              ref)

    def test_qualified_name(self):
        self.assertIsNone(registry.qualified_name('busybox'))
        self.flags(default_registry='10.0.0.1:5000', group='kata_image')
        full = '10.0.0.1:5000/library/busybox:latest'
        self.assertEqual(full, registry.qualified_name('busybox'))
        self.assertEqual(full, registry.qualified_name('busybox:latest'))
        self.assertEqual('10.0.0.1:5000/ns/app:v1',
                         registry.qualified_name('ns/app:v1'))
        for ref in (full, 'busybox@' + DIGEST, 'Bad',
                    'quay.io/x/y'):
            self.assertIsNone(registry.qualified_name(ref), ref)


class WWWAuthenticateTestCase(base.BaseTestCase):

    def test_docker_hub(self):
        header = ('Bearer realm="https://auth.docker.io/token",'
                  'service="registry.docker.io",'
                  'scope="repository:library/busybox:pull"')
        self.assertEqual(
            [('bearer', {'realm': 'https://auth.docker.io/token',
                         'service': 'registry.docker.io',
                         'scope': 'repository:library/busybox:pull'})],
            registry.parse_www_authenticate(header))

    def test_commas_and_escapes_in_quotes(self):
        header = (r'bearer  Realm = "https://a/t?x=1,y=2" , '
                  r'scope="repository:a/b:pull,push", error="say \"hi\""')
        self.assertEqual(
            [('bearer', {'realm': 'https://a/t?x=1,y=2',
                         'scope': 'repository:a/b:pull,push',
                         'error': 'say "hi"'})],
            registry.parse_www_authenticate(header))

    def test_several_challenges(self):
        header = ('Basic realm="Registry Realm", charset=UTF-8, '
                  'Bearer realm="https://t/token",service=reg')
        self.assertEqual(
            [('basic', {'realm': 'Registry Realm', 'charset': 'UTF-8'}),
             ('bearer', {'realm': 'https://t/token', 'service': 'reg'})],
            registry.parse_www_authenticate(header))

    def test_odd_input(self):
        self.assertEqual([], registry.parse_www_authenticate(''))
        self.assertEqual([('basic', {})],
                         registry.parse_www_authenticate('Basic'))
        self.assertEqual([('bearer', {})],
                         registry.parse_www_authenticate('Bearer realm='))
        self.assertEqual([('negotiate', {}), ('x', {})],
                         registry.parse_www_authenticate('Negotiate, x'))
        # An unterminated quote stops the parse without an exception.
        self.assertEqual([('bearer', {})],
                         registry.parse_www_authenticate('Bearer realm="x'))


class ManifestChecksTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config

    def manifest(self, nlayers=1, size=10, layer_type=None):
        layer_type = layer_type or 'application/vnd.oci.image.layer.v1.tar'
        return {'config': {'mediaType':
                           'application/vnd.oci.image.config.v1+json',
                           'digest': DIGEST, 'size': 100},
                'layers': [{'mediaType': layer_type, 'digest': DIGEST,
                            'size': size}] * nlayers}

    def test_platform(self):
        index = {'manifests': [
            {'digest': 'a', 'platform': {'os': 'linux',
                                         'architecture': 'arm64'}},
            {'digest': 'b', 'platform': {'os': 'linux',
                                         'architecture': 'amd64'}}]}
        self.assertEqual('b', manifests.select_platform(index, 'x')['digest'])
        del index['manifests'][1]
        e = self.assertRaises(exception.ImageError,
                              manifests.select_platform, index, 'img')
        self.assertIn('img has no linux/amd64 image (it has linux/arm64)',
                      str(e))

    def test_limits(self):
        config, layers = manifests.check_manifest(self.manifest(2), 'x')
        self.assertEqual(100, config['size'])
        self.assertEqual(2, len(layers))
        self.flags(max_layers=1, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded,
                          manifests.check_manifest, self.manifest(2), 'x')
        self.flags(max_unpacked_mb=1, group='kata_image')
        self.assertRaises(exception.ImageLimitExceeded,
                          manifests.check_manifest,
                          self.manifest(1, size=2 * 1024 * 1024), 'x')

    def test_bad_layers(self):
        e = self.assertRaises(
            exception.ImageError, manifests.check_manifest,
            self.manifest(layer_type='application/vnd.oci.image.layer.v1'
                                     '.tar+zstd'), 'x')
        self.assertIn('zstd', str(e))
        e = self.assertRaises(exception.ImageError, manifests.check_manifest,
                              self.manifest(layer_type='text/plain'), 'x')
        self.assertIn("unsupported media type 'text/plain'", str(e))
        doc = self.manifest()
        doc['layers'][0] = dict(doc['layers'][0], size=-1)
        self.assertRaises(exception.ImageError, manifests.check_manifest,
                          doc, 'x')


class ProxyTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        for name in ('HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'http_proxy',
                     'https_proxy', 'no_proxy'):
            self.useFixture(fixtures.EnvironmentVariable(name))

    def test_none_by_default(self):
        self.assertIsNone(registry.proxy_for('https', 'r.example:5000'))

    def test_environment(self):
        self.useFixture(fixtures.EnvironmentVariable(
            'HTTPS_PROXY', 'http://u%40x:p%3Aw@proxy.example:3128'))
        self.useFixture(fixtures.EnvironmentVariable(
            'NO_PROXY', 'mirror.example,.internal'))
        p = registry.proxy_for('https', 'r.example:5000')
        self.assertEqual(('proxy.example', 3128), (p.host, p.port))
        self.assertEqual('Basic ' + base64.b64encode(b'u@x:p:w').decode(),
                         p.authorization)
        self.assertIsNone(registry.proxy_for('http', 'r.example:5000'))
        self.assertIsNone(registry.proxy_for('https', 'mirror.example'))
        self.assertIsNone(registry.proxy_for('https', 'reg.internal:443'))

    def test_options_win_over_environment(self):
        self.useFixture(fixtures.EnvironmentVariable(
            'HTTP_PROXY', 'http://env.example:1'))
        self.flags(http_proxy='conf.example:8080', group='kata_image')
        p = registry.proxy_for('http', 'r.example')
        self.assertEqual(('conf.example', 8080, None),
                         (p.host, p.port, p.authorization))
        # An empty option turns the environment's proxy off.
        self.flags(http_proxy='', group='kata_image')
        self.assertIsNone(registry.proxy_for('http', 'r.example'))
        self.flags(http_proxy='http://conf.example:8080',
                   no_proxy='r.example', group='kata_image')
        self.assertIsNone(registry.proxy_for('http', 'r.example'))

    def test_only_http_proxies(self):
        self.flags(https_proxy='socks5://p.example:1080', group='kata_image')
        e = self.assertRaises(registry.RegistryError, registry.proxy_for,
                              'https', 'r.example')
        self.assertIn('not an http:// proxy URL', str(e))


class RetryDelayTestCase(base.BaseTestCase):

    def test_backoff_and_retry_after(self):
        self.assertEqual([0.5, 1.0, 2.0, 8.0],
                         [transport.retry_delay(n) for n in (1, 2, 3, 9)])
        resp = mock.Mock()
        resp.getheader.return_value = '3'
        self.assertEqual(3.0, transport.retry_delay(1, resp))
        resp.getheader.return_value = '86400'
        self.assertEqual(transport.MAX_RETRY_AFTER,
                         transport.retry_delay(1, resp))
        # An HTTP date is not worth parsing: back off as usual.
        resp.getheader.return_value = 'Wed, 21 Oct 2026 07:28:00 GMT'
        self.assertEqual(1.0, transport.retry_delay(2, resp))


class LoopbackTestCase(base.BaseTestCase):

    def test_is_loopback(self):
        for host in ('localhost', 'LOCALHOST', '127.0.0.1', '127.1.2.3',
                     '::1', '[::1]'):
            self.assertTrue(registry.is_loopback(host), host)
        for host in ('', None, 'example.com', 'localhost.example.com',
                     '128.0.0.1', '10.0.0.1', '::2', '0.0.0.0',
                     '127.0.0.1.nip.io', 'registry'):
            self.assertFalse(registry.is_loopback(host), host)

    def test_plain_http_allowed(self):
        self.useFixture(config_fixture.Config(CONF)).config(
            insecure_registries=['reg.example:5000'], group='kata_image')
        for netloc in ('reg.example:5000', '127.0.0.1:5000', 'localhost',
                       '[::1]:5000'):
            self.assertTrue(transport.plain_http_allowed(netloc), netloc)
        for netloc in ('reg.example', 'reg.example:5001', 'other:5000'):
            self.assertFalse(transport.plain_http_allowed(netloc), netloc)
        # Configured: plain HTTP at once; loopback: HTTPS first.
        self.assertEqual('http', registry.Client('reg.example:5000',
                                                 'a/b').scheme)
        self.assertEqual('https', registry.Client('127.0.0.1:5000',
                                                  'a/b').scheme)

    def test_tls_error_classes(self):
        plain = ssl.SSLError(1, '[SSL: WRONG_VERSION_NUMBER] wrong version '
                                'number (_ssl.c:992)')
        plain.reason = 'WRONG_VERSION_NUMBER'
        newer = ssl.SSLError(1, '[SSL] record layer failure (_ssl.c:1000)')
        other = ssl.SSLError(1, '[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] ...')
        other.reason = 'SSLV3_ALERT_HANDSHAKE_FAILURE'
        for e in (plain, newer):
            self.assertTrue(transport.speaks_plain_http(e))
            self.assertTrue(transport.tls_protocol_error(e))
        self.assertFalse(transport.speaks_plain_http(other))
        self.assertTrue(transport.tls_protocol_error(other))
        for e in (ssl.SSLEOFError(8, 'EOF occurred in violation of '
                                     'protocol'),
                  ssl.SSLCertVerificationError(1, 'verify failed'),
                  ConnectionResetError(), OSError('x')):
            self.assertFalse(transport.tls_protocol_error(e), e)
            self.assertFalse(transport.speaks_plain_http(e), e)


class PlainHTTPServerTestCase(base.BaseTestCase):
    """A plain HTTP registry on 127.0.0.1, reached with HTTPS first."""

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.flags(registry_retries=3, group='kata_image')
        self.connections = []
        test = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self):
                test.connections.append(self.client_address)
                super().setup()

            def do_GET(self):
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.address = '127.0.0.1:%d' % server.server_address[1]
        self.sleep = self.useFixture(fixtures.MockPatch(
            'kata_zun.image.registry.client.time.sleep')).mock

    def get(self, client):
        conn, resp = client._send_retrying(
            client._url('manifests', 'latest'), {})
        try:
            return resp.status, resp.read()
        finally:
            conn.close()

    def test_loopback_falls_back_to_plain_http(self):
        client = registry.Client(self.address, 'library/busybox')
        self.assertEqual((200, b'{"ok": true}'), self.get(client))
        # One TLS attempt, then plain HTTP, kept for the next requests.
        self.assertEqual(2, len(self.connections))
        self.assertEqual('http', client.scheme)
        self.assertEqual((200, b'{"ok": true}'), self.get(client))
        self.assertEqual(3, len(self.connections))
        self.sleep.assert_not_called()

    def test_other_host_gets_a_hint_and_no_retry(self):
        # The host is classified as remote: its traffic stays here.
        self.useFixture(fixtures.MockPatch(
            'kata_zun.image.registry.transport.is_loopback',
            return_value=False))
        client = registry.Client(self.address, 'library/busybox')
        e = self.assertRaises(registry.RegistryError, self.get, client)
        self.assertIn('%s answers in plain HTTP, not HTTPS' % self.address,
                      str(e))
        self.assertIn('add "%s" to [kata_image] insecure_registries'
                      % self.address, str(e))
        self.assertFalse(e.retryable)
        self.assertEqual(1, len(self.connections))
        self.sleep.assert_not_called()
        # Listed: plain HTTP at once.
        self.flags(insecure_registries=[self.address], group='kata_image')
        client = registry.Client(self.address, 'library/busybox')
        self.assertEqual((200, b'{"ok": true}'), self.get(client))
        self.assertEqual(2, len(self.connections))

    def test_plain_http_redirect_refused_for_other_hosts(self):
        self.useFixture(fixtures.MockPatch(
            'kata_zun.image.registry.transport.is_loopback',
            return_value=False))
        client = registry.Client('reg.example', 'library/busybox')
        e = self.assertRaises(registry.RegistryError, client._send,
                              'http://%s/v2/' % self.address, {})
        self.assertIn('plain HTTP only goes to loopback hosts and hosts in '
                      '[kata_image] insecure_registries', str(e))
        self.assertEqual([], self.connections)
