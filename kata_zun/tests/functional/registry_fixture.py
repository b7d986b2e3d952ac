"""Registries for the pull tests, all on 127.0.0.1.

:class:`Registry` runs the real ``docker-registry`` (distribution 2.8 of
the Debian package) with its own storage, config and port in one of four
modes: ``http`` (anonymous, plain HTTP), ``basic`` (htpasswd, bcrypt),
``tls`` (anonymous HTTPS, the certificate signed by a CA made here) and
``token`` (bearer tokens from :class:`TokenIssuer`, a small token server
signing JWTs with ``openssl dgst``).  Images are pushed with ``skopeo``.

:class:`FakeRegistry` is a stdlib HTTP server serving given manifests and
blobs, and misbehaving on request: wrong content, cut connections,
ignored Range requests.
"""

import base64
import gzip
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import fixtures

from kata_zun.image import busybox

SERVICE = 'kata-zun-test-registry'
ISSUER = 'kata-zun-test-issuer'
USER, PASSWORD = 'alice', 's3cret pass'
MT_OCI_INDEX = busybox.MT_OCI_INDEX
MT_OCI_MANIFEST = busybox.MT_OCI_MANIFEST


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def stop_process(proc):
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def make_ca(directory):
    """A CA and a server certificate for 127.0.0.1 and localhost.

    :returns: (CA file, server certificate file, server key file).
    """
    ca_key, ca = (os.path.join(directory, n) for n in ('ca.key', 'ca.pem'))
    key, csr, cert, ext = (os.path.join(directory, n) for n in (
        'server.key', 'server.csr', 'server.pem', 'server.ext'))
    run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
         '-keyout', ca_key, '-out', ca, '-days', '2',
         '-subj', '/CN=kata-zun test CA',
         '-addext', 'basicConstraints=critical,CA:TRUE',
         '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
    run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
         '-out', csr, '-subj', '/CN=127.0.0.1'])
    with open(ext, 'w') as f:
        f.write('basicConstraints=CA:FALSE\n'
                'keyUsage=critical,digitalSignature,keyEncipherment\n'
                'extendedKeyUsage=serverAuth\n'
                'subjectAltName=IP:127.0.0.1,DNS:localhost\n'
                'authorityKeyIdentifier=keyid,issuer\n'
                'subjectKeyIdentifier=hash\n')
    run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', ca_key,
         '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext])
    return ca, cert, key


class TokenIssuer(fixtures.Fixture):
    """A token server in Docker Hub's style (GET ?service=&scope=).

    Valid basic credentials get every action they ask for; anonymous
    requests get ``pull`` when ``anonymous_pull``; bad credentials a 401.
    JWTs are RS256, signed by ``openssl dgst`` with a key whose
    self-signed certificate is the registry's ``rootcertbundle``.
    """

    def __init__(self, anonymous_pull=True):
        super().__init__()
        self.anonymous_pull = anonymous_pull
        self.requests = []

    def _setUp(self):
        directory = self.useFixture(fixtures.TempDir()).path
        self.key = os.path.join(directory, 'token.key')
        self.cert = os.path.join(directory, 'token.pem')
        run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', self.key, '-out', self.cert, '-days', '2',
             '-subj', '/CN=kata-zun token issuer'])
        self.der = run(['openssl', 'x509', '-in', self.cert, '-outform',
                        'DER']).stdout
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                issuer.handle(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.address = '127.0.0.1:%d' % self.server.server_address[1]
        self.realm = 'http://%s/token' % self.address
        thread = threading.Thread(target=self.server.serve_forever,
                                  daemon=True)
        thread.start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def sign(self, claims):
        header = {'typ': 'JWT', 'alg': 'RS256',
                  'x5c': [base64.b64encode(self.der).decode('ascii')]}
        payload = '%s.%s' % (_b64url(json.dumps(header).encode()),
                             _b64url(json.dumps(claims).encode()))
        signature = run(['openssl', 'dgst', '-sha256', '-sign', self.key],
                        input=payload.encode()).stdout
        return '%s.%s' % (payload, _b64url(signature))

    def handle(self, req):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        auth = req.headers.get('Authorization')
        self.requests.append({'query': query, 'auth': auth})
        user = None
        if auth:
            expected = 'Basic ' + base64.b64encode(
                ('%s:%s' % (USER, PASSWORD)).encode()).decode()
            if auth != expected:
                body = json.dumps({'details': 'incorrect username or '
                                              'password'}).encode()
                req.send_response(401)
                req.send_header('Content-Type', 'application/json')
                req.send_header('Content-Length', str(len(body)))
                req.end_headers()
                req.wfile.write(body)
                return
            user = USER
        access = []
        for scope in query.get('scope', []):
            kind, _, rest = scope.partition(':')
            name, _, actions = rest.rpartition(':')
            granted = actions.split(',') if user else (
                ['pull'] if self.anonymous_pull and 'pull' in actions
                else [])
            access.append({'type': kind, 'name': name, 'actions': granted})
        now = int(time.time())
        token = self.sign({'iss': ISSUER, 'sub': user or '',
                           'aud': query.get('service', [''])[0],
                           'exp': now + 300, 'nbf': now - 10, 'iat': now,
                           'jti': uuid.uuid4().hex, 'access': access})
        body = json.dumps({'token': token, 'expires_in': 300}).encode()
        req.send_response(200)
        req.send_header('Content-Type', 'application/json')
        req.send_header('Content-Length', str(len(body)))
        req.end_headers()
        req.wfile.write(body)


class Registry(fixtures.Fixture):
    """The real docker-registry on 127.0.0.1 (see the module doc)."""

    MODES = ('http', 'basic', 'tls', 'token')

    def __init__(self, mode='http'):
        super().__init__()
        assert mode in self.MODES
        self.mode = mode
        self.ca_file = None
        self.issuer = None

    def _setUp(self):
        self.dir = self.useFixture(fixtures.TempDir()).path
        os.mkdir(os.path.join(self.dir, 'data'))
        self.port = free_port()
        self.address = '127.0.0.1:%d' % self.port
        config = [
            'version: 0.1',
            'log: {level: warn}',
            'storage:',
            '  filesystem: {rootdirectory: %s}' % os.path.join(
                self.dir, 'data'),
            '  delete: {enabled: true}',
            'http:',
            '  addr: %s' % self.address,
            '  secret: kata-zun-test-secret',
        ]
        if self.mode == 'tls':
            self.ca_file, cert, key = make_ca(self.dir)
            config += ['  tls: {certificate: %s, key: %s}' % (cert, key)]
        if self.mode == 'basic':
            htpasswd = os.path.join(self.dir, 'htpasswd')
            with open(htpasswd, 'wb') as f:
                f.write(run(['htpasswd', '-Bbn', USER, PASSWORD]).stdout)
            config += ['auth:', '  htpasswd: {realm: kata-zun, path: %s}'
                       % htpasswd]
        if self.mode == 'token':
            self.issuer = self.useFixture(TokenIssuer())
            config += ['auth:', '  token:',
                       '    realm: %s' % self.issuer.realm,
                       '    service: %s' % SERVICE,
                       '    issuer: %s' % ISSUER,
                       '    rootcertbundle: %s' % self.issuer.cert]
        path = os.path.join(self.dir, 'config.yml')
        with open(path, 'w') as f:
            f.write('\n'.join(config) + '\n')
        self.log = open(os.path.join(self.dir, 'registry.log'), 'w+b')
        self.addCleanup(self.log.close)
        self.proc = subprocess.Popen(['docker-registry', 'serve', path],
                                     stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.addCleanup(self._stop)
        self._wait_ready()

    def _stop(self):
        stop_process(self.proc)

    def _wait_ready(self):
        scheme = 'https' if self.mode == 'tls' else 'http'
        context = (ssl.create_default_context(cafile=self.ca_file)
                   if self.ca_file else None)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen('%s://%s/v2/' % (scheme, self.address),
                                       timeout=2, context=context).close()
                return
            except urllib.error.HTTPError:
                return  # 401: up, wants credentials
            except OSError:
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError('docker-registry did not start: %s'
                                       % self.log.read()[-2000:])
                time.sleep(0.1)

    def push(self, source, repo_tag, copy_all=False, docker_format=False):
        """Push with skopeo.

        :param source: a skopeo source, e.g. ``oci-archive:/x.tar``.
        :param repo_tag: e.g. ``library/busybox:latest``.
        """
        argv = ['skopeo', '--insecure-policy', 'copy', '--quiet',
                '--dest-tls-verify=false']
        if self.ca_file:
            argv[-1] = '--dest-cert-dir=%s' % self._cert_dir()
        if self.mode in ('basic', 'token'):
            argv += ['--dest-creds', '%s:%s' % (USER, PASSWORD)]
        if copy_all:
            argv.append('--all')
        if docker_format:
            argv += ['--format', 'v2s2']
        argv += [source, 'docker://%s/%s' % (self.address, repo_tag)]
        run(argv)

    def _cert_dir(self):
        directory = os.path.join(self.dir, 'certs.d')
        if not os.path.isdir(directory):
            os.mkdir(directory)
            with open(self.ca_file, 'rb') as src, open(
                    os.path.join(directory, 'ca.crt'), 'wb') as dst:
                dst.write(src.read())
        return directory


class TinyProxy(fixtures.Fixture):
    """The real ``tinyproxy`` (Debian package) on 127.0.0.1.

    ``credentials``: (user, password) it demands (Proxy-Authorization),
    or None.  :meth:`requests` reads, from its log, the requests it
    served: ``CONNECT host:port`` or ``GET http://...``.
    """

    def __init__(self, credentials=None):
        super().__init__()
        self.credentials = credentials

    def _setUp(self):
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.port = free_port()
        self.address = '127.0.0.1:%d' % self.port
        self.log_path = os.path.join(self.dir, 'tinyproxy.log')
        config = ['Port %d' % self.port, 'Listen 127.0.0.1',
                  'Timeout 60', 'MaxClients 20', 'Allow 127.0.0.1',
                  'LogFile "%s"' % self.log_path, 'LogLevel Connect',
                  'PidFile "%s"' % os.path.join(self.dir, 'pid')]
        # No ConnectPort line: CONNECT to any port (the registries of the
        # tests listen on random ports).
        if self.credentials:
            config.append('BasicAuth %s %s' % self.credentials)
        path = os.path.join(self.dir, 'tinyproxy.conf')
        with open(path, 'w') as f:
            f.write('\n'.join(config) + '\n')
        out = open(os.path.join(self.dir, 'stdout.log'), 'wb')
        self.addCleanup(out.close)
        # -d: stay in the foreground, so the fixture owns the process.
        self.proc = subprocess.Popen(['tinyproxy', '-d', '-c', path],
                                     stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL)
        self.addCleanup(self._stop)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.port), 1).close()
                return
            except OSError:
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    raise RuntimeError('tinyproxy did not start: %s' %
                                       self.requests())
                time.sleep(0.05)

    def _stop(self):
        stop_process(self.proc)

    @property
    def url(self):
        if self.credentials:
            return 'http://%s:%s@%s' % (self.credentials + (self.address,))
        return 'http://' + self.address

    def requests(self):
        """The request lines tinyproxy logged."""
        try:
            with open(self.log_path, errors='replace') as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            match = re.search(r'Request \(file descriptor \d+\): (.*)$',
                              line)
            if match:
                out.append(match.group(1))
        return out


def write_index_layout(directory, platforms, tag='latest'):
    """Write an OCI layout whose ``tag`` is a multi-platform index.

    :param platforms: dict architecture -> list of layers (lists of
        :class:`busybox.Entry`), all linux.
    :returns: the digest of the index.
    """
    blobs = os.path.join(directory, 'blobs', 'sha256')
    os.makedirs(blobs)

    def put(media_type, data, **extra):
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest[7:]), 'wb') as f:
            f.write(data)
        return dict(mediaType=media_type, digest=digest, size=len(data),
                    **extra)

    def dumps(doc):
        return json.dumps(doc, sort_keys=True).encode()

    manifests = []
    for arch, layers in sorted(platforms.items()):
        tars = [busybox.layer_tar(layer) for layer in layers]
        config = busybox.image_config(
            ['sha256:' + hashlib.sha256(t).hexdigest() for t in tars])
        config['architecture'] = arch
        manifest = {'schemaVersion': 2, 'mediaType': MT_OCI_MANIFEST,
                    'config': put(busybox.MT_OCI_CONFIG, dumps(config)),
                    'layers': [put(busybox.MT_OCI_LAYER_GZIP,
                                   gzip.compress(t, mtime=0))
                               for t in tars]}
        manifests.append(put(MT_OCI_MANIFEST, dumps(manifest),
                             platform={'os': 'linux',
                                       'architecture': arch}))
    index = put(MT_OCI_INDEX, dumps({'schemaVersion': 2,
                                     'mediaType': MT_OCI_INDEX,
                                     'manifests': manifests}),
                annotations={'org.opencontainers.image.ref.name': tag})
    with open(os.path.join(directory, 'oci-layout'), 'w') as f:
        json.dump({'imageLayoutVersion': '1.0.0'}, f)
    with open(os.path.join(directory, 'index.json'), 'w') as f:
        json.dump({'schemaVersion': 2, 'manifests': [index]}, f)
    return index['digest']


class FakeRegistry(fixtures.Fixture):
    """A stdlib HTTP registry serving ``manifests`` and ``blobs``.

    ``manifests``: {(repository, reference): (media type, bytes)};
    ``blobs``: {digest: bytes}; ``behaviour``: {digest: mode} where mode
    is ``corrupt`` (flip the last byte), ``cut`` (always close after half
    the blob), ``cut-once`` (only the first time; Range requests are
    honoured), ``cut-once-norange`` (Range requests are ignored) or
    ``stall-once`` (send half, then wait for ``release``).  ``requests``
    records (path, Range header) pairs.  ``transient``: {path: [status or
    (status, Retry-After)]}, answers given (and used up) before the real
    one.

    Hostile modes: behaviour ``drip`` sends a blob one byte every 50 ms;
    ``drip_headers`` True sends every answer's headers that way.
    ``challenge``: a ``WWW-Authenticate`` value answered (401) to API
    requests without ``Bearer <token>``; ``/token`` hands out ``token``;
    ``redirects``: {path: URL} answered with 307.  ``authorizations``
    records (path, Authorization header) of every request.
    """

    def __init__(self):
        super().__init__()
        self.manifests = {}
        self.blobs = {}
        self.behaviour = {}
        self.transient = {}
        self.requests = []
        self.authorizations = []
        self.challenge = None
        self.token = 'fake-token'
        self.redirects = {}
        self.drip_headers = False
        self.release = threading.Event()
        self._cuts = set()

    def _setUp(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_GET(self):
                fake.handle(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.address = '127.0.0.1:%d' % self.server.server_address[1]
        thread = threading.Thread(target=self.server.serve_forever,
                                  daemon=True)
        thread.start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.addCleanup(self.release.set)

    def add_image(self, repository, tag, manifest, media_type, blobs):
        """Serve a manifest (a dict) and its blobs ({digest: bytes})."""
        data = json.dumps(manifest).encode()
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        self.manifests[(repository, tag)] = (media_type, data)
        self.manifests[(repository, digest)] = (media_type, data)
        self.blobs.update(blobs)
        return digest

    def _send(self, req, status, body, headers=(), length=None):
        req.send_response(status)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header('Content-Length', str(
            len(body) if length is None else length))
        req.send_header('Connection', 'close')
        req.end_headers()
        req.wfile.write(body)
        req.close_connection = True

    def _drip(self, req, data):
        """Send ``data`` a byte every 50 ms, until the client leaves."""
        try:
            for i in range(len(data)):
                if self.release.wait(0.05):
                    return
                req.wfile.write(data[i:i + 1])
                req.wfile.flush()
        except OSError:
            pass
        req.close_connection = True

    def handle(self, req):
        path = urllib.parse.urlsplit(req.path).path
        self.requests.append((path, req.headers.get('Range')))
        self.authorizations.append((path, req.headers.get('Authorization')))
        if self.drip_headers:
            return self._drip(req, b'HTTP/1.1 200 OK\r\n' +
                              b'X-Slow: ' + b'a' * 60000 + b'\r\n')
        if path in self.redirects:
            return self._send(req, 307, b'', [('Location',
                                               self.redirects[path])])
        if path == '/token':
            return self._send(req, 200, json.dumps(
                {'token': self.token}).encode(),
                [('Content-Type', 'application/json')])
        if self.challenge and req.headers.get('Authorization') != (
                'Bearer ' + self.token):
            return self._send(req, 401, b'{"errors": []}', [
                ('WWW-Authenticate', self.challenge)])
        if self.transient.get(path):
            answer = self.transient[path].pop(0)
            status, retry_after = (answer if isinstance(answer, tuple)
                                   else (answer, None))
            return self._send(req, status, b'{"errors": []}', [
                ('Retry-After', str(retry_after))] if retry_after else [])
        parts = path.split('/')
        if parts[:2] != ['', 'v2'] or len(parts) < 5:
            return self._send(req, 404, b'{}')
        repository, kind, ref = '/'.join(parts[2:-2]), parts[-2], parts[-1]
        if kind == 'manifests' and (repository, ref) in self.manifests:
            media_type, data = self.manifests[(repository, ref)]
            return self._send(req, 200, data, [('Content-Type', media_type)])
        if kind != 'blobs' or ref not in self.blobs:
            return self._send(req, 404, json.dumps({'errors': [{
                'code': 'MANIFEST_UNKNOWN' if kind == 'manifests'
                else 'BLOB_UNKNOWN', 'message': 'unknown'}]}).encode())
        data = self.blobs[ref]
        mode = self.behaviour.get(ref)
        if mode == 'corrupt':
            data = data[:-1] + bytes([data[-1] ^ 1])
        start = 0
        rng = req.headers.get('Range')
        if rng and mode != 'cut-once-norange':
            start = int(rng.split('=')[1].split('-')[0])
        headers = [('Content-Type', 'application/octet-stream')]
        status = 200
        if start:
            status = 206
            headers.append(('Content-Range', 'bytes %d-%d/%d' % (
                start, len(data) - 1, len(data))))
        body = data[start:]
        if mode == 'drip':
            req.send_response(status)
            for name, value in headers:
                req.send_header(name, value)
            req.send_header('Content-Length', str(len(body)))
            req.end_headers()
            return self._drip(req, body)
        if mode == 'cut' or (mode in ('cut-once', 'cut-once-norange',
                                      'stall-once') and
                             ref not in self._cuts):
            self._cuts.add(ref)
            # Promise everything, send half, (wait and) hang up.
            self._send(req, status, body[:len(body) // 2], headers,
                       length=len(body))
            if mode == 'stall-once':
                req.wfile.flush()
                self.release.wait(60)
            return
        self._send(req, status, body, headers)
