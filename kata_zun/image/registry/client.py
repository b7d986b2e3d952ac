"""A client of one repository of one registry (the OCI distribution API,
Docker v2): requests, redirects, retries, authentication (basic and
bearer tokens, whose realm must be trusted with the credentials), and
the manifest and blob fetches a pull makes.
"""

import base64
import contextlib
import hashlib
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image import reference
from kata_zun.image.registry import errors
from kata_zun.image.registry import manifests
from kata_zun.image.registry import names
from kata_zun.image.registry import transport
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_SMALL_BODY = 1024 * 1024  # tokens, error documents
BLOB_ATTEMPTS = 3
CHUNK = 1024 * 1024

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CHALLENGE = re.compile(r'[\s,]*(%s)(?=[\s,]|\Z)' % _TOKEN)
_PARAM = re.compile(r'[\s,]*(%s)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))'
                    % _TOKEN)
_CONTENT_RANGE = re.compile(r'bytes (\d+)-')


def parse_www_authenticate(value):
    """Parse a ``WWW-Authenticate`` header (RFC 7235).

    :returns: list of ``(scheme, params)``, the scheme lowercase, the
        parameter names lowercase, quoted values unescaped.
    """
    challenges = []
    pos = 0
    while True:
        match = _CHALLENGE.match(value, pos)
        if not match:
            return challenges
        params = {}
        challenges.append((match.group(1).lower(), params))
        pos = match.end()
        while True:
            match = _PARAM.match(value, pos)
            if not match:
                break
            quoted = match.group(2)
            params[match.group(1).lower()] = (
                match.group(3) if quoted is None
                else re.sub(r'\\(.)', r'\1', quoted))
            pos = match.end()


def _configured_credentials(registry):
    path = CONF.kata_image.credentials_file
    if not path:
        return None
    try:
        doc = fileutils.read_json(path)
        entry = doc.get(registry) if isinstance(doc, dict) else None
    except (OSError, ValueError) as e:
        raise errors.RegistryAuthError(
            registry=registry, reason='cannot read %s: %s' % (path, e))
    return entry if isinstance(entry, dict) else None


def _error_detail(resp):
    """The first error of a registry's error document, if any."""
    try:
        doc = json.loads(transport.read(resp, MAX_SMALL_BODY))
        err = doc.get('errors', [doc])[0]
        text = ': '.join(str(err[k]) for k in ('code', 'message')
                         if err.get(k))
        return text or str(doc.get('details') or doc.get('error') or '')
    except (ValueError, TypeError, AttributeError, LookupError,
            errors.RegistryError):
        return ''


class Client(object):
    """One repository of one registry.

    Requests go over HTTPS (system CAs plus ``[kata_image] ca_file``), or
    plain HTTP for hosts listed in ``insecure_registries``.  Like Docker,
    a loopback registry (``localhost``, 127.0.0.0/8, ``::1``) needs no
    configuration: HTTPS is tried first (its certificate is verified all
    the same) and a TLS failure falls back to plain HTTP; for any other
    host a plain HTTP answer to HTTPS is an error that names the option
    allowing it, and is not retried.  Every request
    opens its own connection, so threads may share a client.  A 401
    answer is met once per request with the scheme it asks for: a bearer
    token from its realm (with basic credentials when there are some) or
    basic credentials.
    """

    def __init__(self, registry, repository, credentials=None,
                 host_credentials=True):
        """:param credentials: dict with ``username`` and ``password``;
            by default those of ``credentials_file`` for the registry.
        :param host_credentials: False when the pull is a Zun project's:
            ``credentials_file`` is then used only for registries listed
            in ``[kata_image] shared_credentials_registries``.
        """
        self.registry = registry
        self.repository = repository
        self.host = names.api_host(registry)
        # Loopback registries start with HTTPS too and fall back to plain
        # HTTP when the answer is not TLS (see _send), as Docker does.
        self.scheme = ('http' if transport.plain_http_first(registry)
                       else 'https')
        creds = credentials
        if not creds and (host_credentials or registry in
                          CONF.kata_image.shared_credentials_registries):
            creds = _configured_credentials(registry)
        self._basic = None
        if creds:
            if not all(isinstance(creds.get(k), str)
                       for k in ('username', 'password')):
                raise errors.RegistryAuthError(
                    registry=registry,
                    reason='the credentials need a username and a password')
            pair = '%s:%s' % (creds['username'], creds['password'])
            self._basic = 'Basic ' + base64.b64encode(
                pair.encode('utf-8')).decode('ascii')
        self._authorization = None
        # time.monotonic() by which the whole pull must be done.
        self.deadline = None
        try:
            self._context = transport.ssl_context()
        except (OSError, ssl.SSLError) as e:
            raise errors.RegistryError(registry=registry, reason='cannot load '
                                       '[kata_image] ca_file: %s' % e)

    def recv_timeout(self):
        """Seconds one receive may wait: ``registry_timeout``, not past
        the deadline.

        :raises: errors.PullTimeout once the deadline has passed.
        """
        timeout = CONF.kata_image.registry_timeout
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise errors.PullTimeout(registry=self.registry,
                                     seconds=CONF.kata_image.pull_timeout)
        return min(timeout, left)

    def _response(self, sock, *args, **kwargs):
        return http.client.HTTPResponse(transport.DeadlineSocket(sock, self),
                                        *args, **kwargs)

    def _error(self, reason, cls=errors.RegistryError):
        return cls(registry=self.registry, reason=reason)

    def _url(self, kind, ref):
        return '%s://%s/v2/%s/%s/%s' % (self.scheme, self.host,
                                        self.repository, kind, ref)

    def _send(self, url, headers):
        """GET ``url``, following redirects.

        :returns: (connection, response); the caller closes the first.
        """
        headers = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ('http', 'https') or (
                    parts.scheme == 'http' and
                    not transport.plain_http_allowed(parts.netloc)):
                raise self._error(
                    'refusing %s: plain HTTP only goes to loopback hosts '
                    'and hosts in [kata_image] insecure_registries' % url)
            path = parts.path or '/'
            if parts.query:
                path += '?' + parts.query
            conn, path, via = self._connection(parts, path, headers)
            try:
                conn.request('GET', path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if self._fall_back_to_http(parts, e):
                    url = 'http' + url[len('https'):]
                    continue
                raise self._connection_failed(url, parts, via, e)
            resp.url_netloc, resp.url_path = parts.netloc, parts.path
            resp.via = via
            location = resp.getheader('Location')
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return conn, resp
            conn.close()
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).netloc != parts.netloc:
                # Credentials stay with the host they are for.
                headers.pop('Authorization', None)
        raise self._error('too many redirects from %s' % url)

    def _fall_back_to_http(self, parts, error):
        """Whether to repeat over plain HTTP a request whose HTTPS
        connection failed: only for a loopback host and a TLS failure
        other than an untrusted certificate (a server that speaks TLS
        does not speak plain HTTP on the same port).  The client then
        keeps plain HTTP for the registry: one failed handshake a pull.
        """
        if (parts.scheme != 'https' or
                not transport.is_loopback(parts.hostname) or
                not isinstance(error, ssl.SSLError) or
                isinstance(error, ssl.SSLCertVerificationError)):
            return False
        LOG.info('Registry %s: no TLS on loopback host %s (%s): using '
                 'plain HTTP', self.registry, parts.netloc, error)
        if parts.netloc == self.host:
            self.scheme = 'http'
        return True

    def _connection_failed(self, url, parts, via, error):
        """:returns: the :class:`errors.ConnectionFailed` of a request."""
        reason = 'GET %s%s: %s' % (url, via, error)
        if parts.scheme == 'https' and transport.speaks_plain_http(error):
            reason += (': %s answers in plain HTTP, not HTTPS; to pull '
                       'from it over plain HTTP, add "%s" to [kata_image] '
                       'insecure_registries' % (parts.netloc, parts.netloc))
        failed = errors.ConnectionFailed(registry=self.registry, reason=reason)
        # Nothing listens, no such name, a certificate we do not trust,
        # a TLS protocol failure (e.g. a plain HTTP server), or the proxy
        # refused the tunnel: another try would get the same answer.
        failed.retryable = not (
            isinstance(error, (ConnectionRefusedError, socket.gaierror,
                               ssl.SSLCertVerificationError))
            or transport.tls_protocol_error(error)
            or str(error).startswith('Tunnel connection failed'))
        return failed

    def _connection(self, parts, path, headers):
        """A connection for one request, through a proxy if one is set:
        a CONNECT tunnel for HTTPS (TLS stays end to end, the proxy sees
        no credentials of the registry), the absolute URL for HTTP.

        :returns: (connection, request target, text for messages).
        """
        timeout = self.recv_timeout()
        proxy = transport.proxy_for(parts.scheme, parts.netloc)
        headers.pop('Proxy-Authorization', None)
        if parts.scheme == 'https':
            host = proxy.host if proxy else parts.hostname
            port = proxy.port if proxy else parts.port
            conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                               context=self._context)
            if proxy:
                conn.set_tunnel(parts.hostname, parts.port or 443, headers={
                    'Proxy-Authorization': proxy.authorization}
                    if proxy.authorization else None)
        elif proxy:
            conn = http.client.HTTPConnection(proxy.host, proxy.port,
                                              timeout=timeout)
            path = '%s://%s%s' % (parts.scheme, parts.netloc, path)
            if proxy.authorization:
                headers['Proxy-Authorization'] = proxy.authorization
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                              timeout=timeout)
        conn.response_class = self._response
        return conn, path, ' (via proxy %s)' % proxy.display if proxy else ''

    def _send_retrying(self, url, headers):
        """:meth:`_send`, repeated when it is worth it.

        After a lost connection or an answer that asks for it (429, 5xx),
        up to ``registry_retries`` times.
        """
        retries = CONF.kata_image.registry_retries
        for attempt in range(1, retries + 2):
            try:
                conn, resp = self._send(url, headers)
            except errors.ConnectionFailed as e:
                if attempt > retries or not e.retryable:
                    raise
                delay, why = transport.retry_delay(attempt), str(e)
            else:
                if (resp.status not in transport.RETRY_STATUSES or
                        attempt > retries):
                    return conn, resp
                delay, why = (transport.retry_delay(attempt, resp),
                              'HTTP %d' % resp.status)
                conn.close()
            LOG.warning('Registry %s: %s; retry %d of %d in %.1f s',
                        self.registry, why, attempt, retries, delay)
            time.sleep(min(delay, self.recv_timeout()))
            self.recv_timeout()

    @contextlib.contextmanager
    def _get(self, url, headers=None):
        """GET an API URL, authenticating when the registry asks."""
        headers = dict(headers or {})
        for attempt in (1, 2):
            if self._authorization:
                headers['Authorization'] = self._authorization
            conn, resp = self._send_retrying(url, headers)
            if resp.status != 401 or attempt == 2:
                break
            challenge = resp.getheader('WWW-Authenticate') or ''
            conn.close()
            self._authenticate(challenge)
        try:
            yield resp
        finally:
            conn.close()

    def _authenticate(self, header):
        challenges = dict(reversed(parse_www_authenticate(header)))
        if 'bearer' in challenges:
            self._authorization = 'Bearer ' + self._token(
                challenges['bearer'])
        elif 'basic' in challenges and self._basic:
            self._authorization = self._basic
        elif 'basic' in challenges:
            raise self._error('the registry needs credentials (--username '
                              'or [kata_image] credentials_file)',
                              errors.RegistryAuthError)
        else:
            raise self._error('unsupported challenge %r' % header,
                              errors.RegistryAuthError)

    def _realm_trusted(self, realm):
        """Whether the credentials may go to token server ``realm``.

        The challenge comes from whatever host answered (a redirect may
        have led elsewhere) and names any URL: only the registry's own
        host, Docker Hub's token server for Docker Hub, and the hosts
        of ``[kata_image] token_realm_hosts`` get them.
        """
        parts = urllib.parse.urlsplit(realm)
        try:
            port = parts.port or {'http': 80, 'https': 443}.get(parts.scheme)
        except ValueError:
            return False
        netloc = '%s:%s' % ((parts.hostname or '').lower(), port)
        own = urllib.parse.urlsplit('%s://%s' % (self.scheme, self.host))
        trusted = {'%s:%s' % (own.hostname.lower(), own.port or {
            'http': 80, 'https': 443}[self.scheme])}
        if self.registry == names.HUB:
            trusted.add(names.HUB_AUTH + ':443')
        for host in CONF.kata_image.token_realm_hosts:
            host = host.lower()
            trusted.add(host if ':' in host else host + ':443')
        return netloc in trusted

    def _token(self, params):
        realm = params.get('realm')
        if not realm:
            raise self._error('bearer challenge without realm',
                              errors.RegistryAuthError)
        if self._basic and not self._realm_trusted(realm):
            raise self._error(
                'the registry sends the credentials to token server %s, '
                'not its own host: list that host in [kata_image] '
                'token_realm_hosts if it is the registry\'s' % realm,
                errors.RegistryAuthError)
        query = {}
        if params.get('scope') or self.repository:
            query['scope'] = (params.get('scope') or
                              'repository:%s:pull' % self.repository)
        if params.get('service'):
            query['service'] = params['service']
        url = '%s%s%s' % (realm, '&' if '?' in realm else '?',
                          urllib.parse.urlencode(sorted(query.items())))
        conn, resp = self._send_retrying(
            url, {'Authorization': self._basic} if self._basic else {})
        try:
            if resp.status != 200:
                detail = _error_detail(resp)
                raise self._error('token server %s answered %d%s' % (
                    realm, resp.status, ': ' + detail if detail else ''),
                    errors.RegistryAuthError)
            data = transport.read_limited(
                resp, MAX_SMALL_BODY, 'token response')
        finally:
            conn.close()
        try:
            doc = json.loads(data)
            token = doc.get('token') or doc.get('access_token')
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._error('no token from %s' %
                              realm, errors.RegistryAuthError)
        return token

    def _check(self, resp, what, missing=None):
        if resp.status in (200, 206):
            return
        detail = _error_detail(resp)
        detail = ' (%s)' % detail if detail else ''
        if resp.status == 404 and missing:
            raise missing
        if resp.status == 407:
            raise self._error('%s: the proxy wants credentials (HTTP 407%s): '
                              'give them in the proxy URL, '
                              'http://user:password@host:port' % (
                                  what, resp.via))
        if resp.status in (401, 403):
            raise self._error(
                'access to %s denied%s: the repository does not exist or '
                'needs other credentials' % (self.repository, detail),
                errors.RegistryAuthError)
        raise self._error('%s: HTTP %d%s' % (what, resp.status, detail))

    def login(self):
        """Check the client's credentials like ``docker login``: the API
        root (``/v2/``), with a token of no scope where the registry
        uses tokens.

        :raises: errors.RegistryAuthError (refused), errors.RegistryError
        """
        url = '%s://%s/v2/' % (self.scheme, self.host)
        with self._get(url) as resp:
            if resp.status == 200:
                return
            if resp.status in (401, 403):
                detail = _error_detail(resp)
                raise self._error('login refused (HTTP %d%s)' % (
                    resp.status, ': ' + detail if detail else ''),
                    errors.RegistryAuthError)
            raise self._error('%s: HTTP %d' % (url, resp.status))

    def get_manifest(self, ref, name):
        """Fetch a manifest or index by tag or digest.

        :param name: the image, for messages.
        :returns: :class:`Manifest`
        :raises: ImageNotFound, ImageError, errors.RegistryError
        """
        what = 'manifest %s' % ref
        with self._get(self._url('manifests', ref),
                       {'Accept': manifests.MANIFEST_ACCEPT}) as resp:
            self._check(resp, what, exception.ImageNotFound(ref=name))
            data = transport.read_limited(
                resp, CONF.kata_image.max_manifest_bytes, what)
            content_type = (resp.getheader('Content-Type') or ''
                            ).split(';')[0].strip()
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        if reference.is_digest(ref) and digest != ref:
            raise errors.bad('digest mismatch of %s: got %s' % (what, digest))
        doc = archive.parse_json(data, what)
        if not isinstance(doc, dict):
            raise errors.bad('%s is not an object' % what)
        media_type = doc.get('mediaType') or content_type
        if media_type not in archive.MANIFEST_TYPES + archive.INDEX_TYPES:
            raise errors.bad('%s has unsupported media type %r' % (
                what, media_type))
        return manifests.Manifest(digest, media_type, data, doc)

    def fetch_blob(self, desc, path, report=None, abort=None):
        """Download a blob to ``path``, checking its size and digest.

        A lost connection is resumed with a Range request, or restarted
        when the registry answers with the whole blob.

        :param desc: the blob's descriptor (``digest``, ``size``).
        :param report: optional callable(done_bytes, restarted_at).
        :param abort: optional threading.Event that stops the download.
        :raises: ImageError (truncated, too large, digest mismatch),
            errors.RegistryError
        """
        digest, size = desc['digest'], desc['size']
        url = self._url('blobs', digest)
        sha = hashlib.sha256()
        done, error = 0, None
        with open(path, 'wb') as f:
            for attempt in range(1, BLOB_ATTEMPTS + 1):
                headers = {'Range': 'bytes=%d-' % done} if done else {}
                try:
                    with self._get(url, headers) as resp:
                        self._check(resp, 'blob %s' % digest, self._error(
                            'blob %s is missing' % digest))
                        match = _CONTENT_RANGE.match(
                            resp.getheader('Content-Range') or '')
                        if resp.status != 206 or not match or int(
                                match.group(1)) != done:
                            if done and report:
                                report(0, done)
                            f.seek(0)
                            f.truncate()
                            sha, done = hashlib.sha256(), 0
                        while done < size:
                            if abort is not None and abort.is_set():
                                raise errors.bad(
                                    'download of %s aborted' % digest)
                            chunk = transport.read(
                                resp, min(CHUNK, size - done), True)
                            if not chunk:
                                break
                            sha.update(chunk)
                            f.write(chunk)
                            done += len(chunk)
                            if report:
                                report(done, None)
                        if done == size and transport.read(resp, 1):
                            raise errors.bad(
                                'blob %s is larger than its %d bytes' % (
                                    digest, size))
                except errors.ConnectionFailed as e:
                    error = e
                    LOG.warning('Download of %s broke at %d of %d bytes '
                                '(attempt %d): %s', digest, done, size,
                                attempt, e)
                if done == size:
                    break
            if done != size:
                raise errors.bad(
                    'truncated blob %s: %d of %d bytes after %d attempts%s' % (
                        digest, done, size, BLOB_ATTEMPTS,
                        ' (%s)' % error if error else ''))
        if 'sha256:' + sha.hexdigest() != digest:
            raise errors.bad('digest mismatch of blob %s: got sha256:%s'
                             % (digest, sha.hexdigest()))
