"""Pull images from registries: the OCI distribution API (Docker v2).

:func:`pull` (behind :meth:`ImageStore.pull`) resolves a reference like
Docker, fetches the manifest (an index or manifest list is narrowed to
linux/amd64), downloads the config and the layers, a few at a time, into
an OCI image layout in a work directory of the store, and loads that
layout like an archive: one code path unpacks every image.  Nothing is
trusted: documents are bounded, every blob is bounded by the size of its
descriptor and checked against its digest, and the loader checks it all
again.  A connection lost mid-blob resumes with an HTTP Range request
(or restarts when the registry ignores it).  A pull that fails or
crashes leaves only its work directory, which the store removes.

Names: ``busybox`` is ``library/busybox:latest`` in the default registry
(``[kata_image] default_registry``: Docker Hub or a mirror of it), and
Docker Hub names (``docker.io/...``) go there too.  The image is tagged
with its full name (``mirror:5000/library/busybox:latest``; for Docker
Hub, Docker's short form ``busybox:latest``) and the store finds it by
the short name as well (:func:`qualified_name`).  Images pulled by digest
are untagged and found again through ``registry/digests/`` of the store.
"""

import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import http.client
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image import progress
from kata_zun.image import reference
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

POLICIES = ('never', 'always', 'ifnotpresent')
HUB = 'docker.io'
HUB_API = 'registry-1.docker.io'
HUB_AUTH = 'auth.docker.io'
MANIFEST_ACCEPT = ', '.join(archive.MANIFEST_TYPES + archive.INDEX_TYPES)
MAX_REDIRECTS = 5
MAX_SMALL_BODY = 1024 * 1024  # tokens, error documents
BLOB_ATTEMPTS = 3
# Answers that mean "try again later", and the longest Retry-After we
# honour (a registry cannot park a pull for an hour).
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 30.0
CHUNK = 1024 * 1024
LOCK_POLL = 0.1

_SHA256 = re.compile(r'sha256:([0-9a-f]{64})\Z')
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CHALLENGE = re.compile(r'[\s,]*(%s)(?=[\s,]|\Z)' % _TOKEN)
_PARAM = re.compile(r'[\s,]*(%s)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))'
                    % _TOKEN)
_CONTENT_RANGE = re.compile(r'bytes (\d+)-')


class RegistryError(exception.KataZunException):
    msg_fmt = 'Registry %(registry)s: %(reason)s'


class RegistryAuthError(RegistryError):
    msg_fmt = 'Registry %(registry)s: authentication failed: %(reason)s'


class _ConnectionFailed(RegistryError):
    """The connection failed or broke: worth another try, unless nothing
    listens there or the name does not resolve (``retryable`` False).
    """

    retryable = True


def _bad(reason):
    return exception.ImageError(reason=reason)


# --------------------------------------------------------------- references

@dataclasses.dataclass(frozen=True)
class Remote(object):
    """An image of a registry.

    ``registry`` is ``docker.io`` or ``host[:port]``; ``repository`` is
    complete (``library/busybox``); ``tag`` is None only when a digest
    pins the image.
    """

    registry: str
    repository: str
    tag: str
    digest: str

    @property
    def host(self):
        """Where the API is: Docker Hub's differs from its name."""
        return HUB_API if self.registry == HUB else self.registry

    @property
    def name(self):
        """The tag of the image in the store, None when pinned by digest."""
        if self.digest:
            return None
        return reference.parse('%s/%s:%s' % (
            self.registry, self.repository, self.tag)).name

    def __str__(self):
        text = '%s/%s' % (self.registry, self.repository)
        if self.tag:
            text += ':' + self.tag
        return text + ('@' + self.digest if self.digest else '')


def default_registry():
    """The configured default registry, Docker Hub spelled ``docker.io``."""
    parsed = reference.parse(CONF.kata_image.default_registry + '/x')
    return parsed.registry or HUB


def resolve(ref):
    """Where to pull an image from, filling in defaults like Docker.

    :param ref: e.g. ``busybox``, ``nginx:1.25``, ``host:5000/app@sha256:…``
    :returns: :class:`Remote`
    :raises: InvalidReference
    """
    parsed = reference.parse(ref)
    registry, repository = parsed.registry, parsed.repository
    if registry is None:
        # Docker Hub names and names without a registry: the default
        # registry, Docker Hub or a mirror of it.
        registry = default_registry()
        if '/' not in repository:
            repository = 'library/' + repository
    return Remote(registry, repository, parsed.tag, parsed.digest)


def qualified_name(ref):
    """The store name of a short name pulled from the default registry.

    :returns: e.g. ``mirror:5000/library/busybox:latest`` for ``busybox``,
        or None when ``ref`` is no short name or is its own full name.
    """
    try:
        parsed = reference.parse(ref)
        if parsed.registry or parsed.digest:
            return None
        name = resolve(ref).name
    except exception.InvalidReference:
        return None
    return name if name != parsed.name else None


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


# ------------------------------------------------------------------- client

def is_loopback(host):
    """Whether ``host`` (a host name or IP literal, no port) is this
    machine's loopback: ``localhost``, 127.0.0.0/8 or ``::1``.

    Names other than ``localhost`` are not resolved: whether a registry
    may be reached over plain HTTP must not depend on what DNS answers.
    """
    host = (host or '').strip('[]').lower()
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc):
    return urllib.parse.urlsplit('//' + netloc).hostname


def _plain_http_first(netloc):
    """Registries reached over plain HTTP only, by configuration."""
    return netloc in CONF.kata_image.insecure_registries


def _plain_http_allowed(netloc):
    """Hosts that may be reached over plain HTTP: the insecure registries
    and, like Docker, every loopback registry (after HTTPS failed).
    """
    return _plain_http_first(netloc) or is_loopback(_hostname(netloc))


# OpenSSL's reasons when the server answers a TLS handshake in plain HTTP
# ("HTTP/1.1 400 ..." read as a TLS record): 3.0 says WRONG_VERSION_NUMBER,
# 3.2 and later RECORD_LAYER_FAILURE.
_PLAIN_HTTP_REASONS = frozenset((
    'WRONG_VERSION_NUMBER', 'RECORD_LAYER_FAILURE', 'UNKNOWN_PROTOCOL',
    'PACKET_LENGTH_TOO_LONG', 'HTTP_REQUEST'))


def _tls_protocol_error(error):
    """Whether ``error`` is a TLS failure that another try would repeat:
    any SSL error but a lost connection (EOF) and a verification failure
    (handled as such).
    """
    return (isinstance(error, ssl.SSLError) and not isinstance(
        error, (ssl.SSLEOFError, ssl.SSLZeroReturnError,
                ssl.SSLCertVerificationError)))


def _speaks_plain_http(error):
    """Whether a TLS handshake failed because the server spoke plain HTTP.
    """
    if not isinstance(error, ssl.SSLError):
        return False
    reason = getattr(error, 'reason', None) or ''
    text = str(error).lower()
    return (reason in _PLAIN_HTTP_REASONS or 'wrong version number' in text
            or 'record layer failure' in text)


def _ssl_context():
    context = ssl.create_default_context()
    if CONF.kata_image.ca_file:
        context.load_verify_locations(cafile=CONF.kata_image.ca_file)
    return context


class Proxy(object):
    """An HTTP proxy: where it is and the header that authenticates."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url if '://' in url
                                      else 'http://' + url)
        if parts.scheme != 'http' or not parts.hostname:
            raise ValueError('%r is not an http:// proxy URL' % url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.authorization = None
        if parts.username is not None:
            pair = '%s:%s' % (urllib.parse.unquote(parts.username),
                              urllib.parse.unquote(parts.password or ''))
            self.authorization = 'Basic ' + base64.b64encode(
                pair.encode('utf-8')).decode('ascii')
        self.display = '%s:%d' % (self.host, self.port)


def proxy_for(scheme, netloc):
    """The proxy for a request, as ``[kata_image] https_proxy``,
    ``http_proxy`` and ``no_proxy`` say, or else the environment
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) like curl and Docker.

    :param scheme: ``http`` or ``https``, of the request.
    :param netloc: ``host[:port]`` of the request.
    :returns: a :class:`Proxy`, or None to connect directly.
    :raises: RegistryError for a proxy URL that is not ``http://``.
    """
    env = urllib.request.getproxies_environment()
    opts = CONF.kata_image
    url = (opts.https_proxy if scheme == 'https' else opts.http_proxy)
    if url is None:
        url = env.get(scheme)
    if not url:
        return None
    no_proxy = opts.no_proxy if opts.no_proxy is not None else env.get('no')
    if no_proxy and urllib.request.proxy_bypass_environment(
            netloc, {'no': no_proxy}):
        return None
    try:
        return Proxy(url)
    except ValueError as e:
        raise RegistryError(registry=netloc, reason='proxy: %s' % e)


def _retry_delay(attempt, resp=None):
    """Seconds before retry ``attempt`` (1, 2...).

    Retry-After when the registry gives one in seconds, else exponential
    back-off.
    """
    value = resp.getheader('Retry-After') if resp is not None else None
    if value and value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER)
    return min(0.5 * 2 ** (attempt - 1), 8.0)


def _configured_credentials(registry):
    path = CONF.kata_image.credentials_file
    if not path:
        return None
    try:
        doc = fileutils.read_json(path)
        entry = doc.get(registry) if isinstance(doc, dict) else None
    except (OSError, ValueError) as e:
        raise RegistryAuthError(registry=registry, reason='cannot read %s: '
                                '%s' % (path, e))
    return entry if isinstance(entry, dict) else None


def _read(resp, size, some=False):
    """Read ``size`` bytes (``some``: what arrives, at most ``size``)."""
    try:
        return resp.read1(size) if some else resp.read(size)
    except (OSError, http.client.HTTPException) as e:
        raise _ConnectionFailed(registry=resp.url_netloc,
                                reason='reading %s: %s' % (resp.url_path,
                                                           e or repr(e)))


def _read_limited(resp, limit, what):
    length = resp.getheader('Content-Length')
    if length and length.isdigit() and int(length) > limit:
        raise exception.ImageLimitExceeded(
            reason='%s of %s bytes (limit %d)' % (what, length, limit))
    data = _read(resp, limit + 1)
    if len(data) > limit:
        raise exception.ImageLimitExceeded(
            reason='%s larger than %d bytes' % (what, limit))
    return data


class PullTimeout(RegistryError):
    msg_fmt = ('Registry %(registry)s: the pull did not finish within '
               '%(seconds)d s ([kata_image] pull_timeout)')


class _DeadlineReader(io.RawIOBase):
    """The reading side of a connection's socket, bounded in time.

    Each receive waits at most ``registry_timeout`` and never past the
    deadline, and none starts after it: a registry that drips bytes, in
    the headers or the body, cannot stretch a pull.
    """

    def __init__(self, sock, client):
        super().__init__()
        self._sock = sock
        # Holds a reference: the connection may close the socket while
        # the response is read.
        self._raw = sock.makefile('rb', buffering=0)
        self._client = client

    def readable(self):
        return True

    def readinto(self, buf):
        self._sock.settimeout(self._client.recv_timeout())
        try:
            return self._raw.readinto(buf)
        except TimeoutError:
            # Raises PullTimeout when the deadline cut the wait short.
            self._client.recv_timeout()
            raise

    def close(self):
        self._raw.close()
        super().close()


class _DeadlineSocket(object):
    """What ``http.client.HTTPResponse`` uses of a socket."""

    def __init__(self, sock, client):
        self._sock = sock
        self._client = client

    def makefile(self, mode, *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._client))


def _error_detail(resp):
    """The first error of a registry's error document, if any."""
    try:
        doc = json.loads(_read(resp, MAX_SMALL_BODY))
        err = doc.get('errors', [doc])[0]
        text = ': '.join(str(err[k]) for k in ('code', 'message')
                         if err.get(k))
        return text or str(doc.get('details') or doc.get('error') or '')
    except (ValueError, TypeError, AttributeError, LookupError,
            RegistryError):
        return ''


@dataclasses.dataclass
class Manifest(object):
    """A fetched manifest or index, its digest computed from its bytes."""

    digest: str
    media_type: str
    data: bytes
    doc: dict


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
        self.host = HUB_API if registry == HUB else registry
        # Loopback registries start with HTTPS too and fall back to plain
        # HTTP when the answer is not TLS (see _send), as Docker does.
        self.scheme = 'http' if _plain_http_first(registry) else 'https'
        creds = credentials
        if not creds and (host_credentials or registry in
                          CONF.kata_image.shared_credentials_registries):
            creds = _configured_credentials(registry)
        self._basic = None
        if creds:
            if not all(isinstance(creds.get(k), str)
                       for k in ('username', 'password')):
                raise RegistryAuthError(registry=registry, reason='the '
                                        'credentials need a username and '
                                        'a password')
            pair = '%s:%s' % (creds['username'], creds['password'])
            self._basic = 'Basic ' + base64.b64encode(
                pair.encode('utf-8')).decode('ascii')
        self._authorization = None
        # time.monotonic() by which the whole pull must be done.
        self.deadline = None
        try:
            self._context = _ssl_context()
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(registry=registry, reason='cannot load '
                                '[kata_image] ca_file: %s' % e)

    def recv_timeout(self):
        """Seconds one receive may wait: ``registry_timeout``, not past
        the deadline.

        :raises: PullTimeout once the deadline has passed.
        """
        timeout = CONF.kata_image.registry_timeout
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PullTimeout(registry=self.registry,
                              seconds=CONF.kata_image.pull_timeout)
        return min(timeout, left)

    def _response(self, sock, *args, **kwargs):
        return http.client.HTTPResponse(_DeadlineSocket(sock, self),
                                        *args, **kwargs)

    def _error(self, reason, cls=RegistryError):
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
                    not _plain_http_allowed(parts.netloc)):
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
        if (parts.scheme != 'https' or not is_loopback(parts.hostname) or
                not isinstance(error, ssl.SSLError) or
                isinstance(error, ssl.SSLCertVerificationError)):
            return False
        LOG.info('Registry %s: no TLS on loopback host %s (%s): using '
                 'plain HTTP', self.registry, parts.netloc, error)
        if parts.netloc == self.host:
            self.scheme = 'http'
        return True

    def _connection_failed(self, url, parts, via, error):
        """:returns: the :class:`_ConnectionFailed` of a request."""
        reason = 'GET %s%s: %s' % (url, via, error)
        if parts.scheme == 'https' and _speaks_plain_http(error):
            reason += (': %s answers in plain HTTP, not HTTPS; to pull '
                       'from it over plain HTTP, add "%s" to [kata_image] '
                       'insecure_registries' % (parts.netloc, parts.netloc))
        failed = _ConnectionFailed(registry=self.registry, reason=reason)
        # Nothing listens, no such name, a certificate we do not trust,
        # a TLS protocol failure (e.g. a plain HTTP server), or the proxy
        # refused the tunnel: another try would get the same answer.
        failed.retryable = not (
            isinstance(error, (ConnectionRefusedError, socket.gaierror,
                               ssl.SSLCertVerificationError))
            or _tls_protocol_error(error)
            or str(error).startswith('Tunnel connection failed'))
        return failed

    def _connection(self, parts, path, headers):
        """A connection for one request, through a proxy if one is set:
        a CONNECT tunnel for HTTPS (TLS stays end to end, the proxy sees
        no credentials of the registry), the absolute URL for HTTP.

        :returns: (connection, request target, text for messages).
        """
        timeout = self.recv_timeout()
        proxy = proxy_for(parts.scheme, parts.netloc)
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
            except _ConnectionFailed as e:
                if attempt > retries or not e.retryable:
                    raise
                delay, why = _retry_delay(attempt), str(e)
            else:
                if resp.status not in RETRY_STATUSES or attempt > retries:
                    return conn, resp
                delay, why = (_retry_delay(attempt, resp),
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
                              RegistryAuthError)
        else:
            raise self._error('unsupported challenge %r' % header,
                              RegistryAuthError)

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
        if self.registry == HUB:
            trusted.add(HUB_AUTH + ':443')
        for host in CONF.kata_image.token_realm_hosts:
            host = host.lower()
            trusted.add(host if ':' in host else host + ':443')
        return netloc in trusted

    def _token(self, params):
        realm = params.get('realm')
        if not realm:
            raise self._error('bearer challenge without realm',
                              RegistryAuthError)
        if self._basic and not self._realm_trusted(realm):
            raise self._error(
                'the registry sends the credentials to token server %s, '
                'not its own host: list that host in [kata_image] '
                'token_realm_hosts if it is the registry\'s' % realm,
                RegistryAuthError)
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
                    RegistryAuthError)
            data = _read_limited(resp, MAX_SMALL_BODY, 'token response')
        finally:
            conn.close()
        try:
            doc = json.loads(data)
            token = doc.get('token') or doc.get('access_token')
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._error('no token from %s' % realm, RegistryAuthError)
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
                RegistryAuthError)
        raise self._error('%s: HTTP %d%s' % (what, resp.status, detail))

    def login(self):
        """Check the client's credentials like ``docker login``: the API
        root (``/v2/``), with a token of no scope where the registry
        uses tokens.

        :raises: RegistryAuthError (refused), RegistryError
        """
        url = '%s://%s/v2/' % (self.scheme, self.host)
        with self._get(url) as resp:
            if resp.status == 200:
                return
            if resp.status in (401, 403):
                detail = _error_detail(resp)
                raise self._error('login refused (HTTP %d%s)' % (
                    resp.status, ': ' + detail if detail else ''),
                    RegistryAuthError)
            raise self._error('%s: HTTP %d' % (url, resp.status))

    def get_manifest(self, ref, name):
        """Fetch a manifest or index by tag or digest.

        :param name: the image, for messages.
        :returns: :class:`Manifest`
        :raises: ImageNotFound, ImageError, RegistryError
        """
        what = 'manifest %s' % ref
        with self._get(self._url('manifests', ref),
                       {'Accept': MANIFEST_ACCEPT}) as resp:
            self._check(resp, what, exception.ImageNotFound(ref=name))
            data = _read_limited(resp, CONF.kata_image.max_manifest_bytes,
                                 what)
            content_type = (resp.getheader('Content-Type') or ''
                            ).split(';')[0].strip()
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        if reference.is_digest(ref) and digest != ref:
            raise _bad('digest mismatch of %s: got %s' % (what, digest))
        doc = archive.parse_json(data, what)
        if not isinstance(doc, dict):
            raise _bad('%s is not an object' % what)
        media_type = doc.get('mediaType') or content_type
        if media_type not in archive.MANIFEST_TYPES + archive.INDEX_TYPES:
            raise _bad('%s has unsupported media type %r' % (what,
                                                             media_type))
        return Manifest(digest, media_type, data, doc)

    def fetch_blob(self, desc, path, report=None, abort=None):
        """Download a blob to ``path``, checking its size and digest.

        A lost connection is resumed with a Range request, or restarted
        when the registry answers with the whole blob.

        :param desc: the blob's descriptor (``digest``, ``size``).
        :param report: optional callable(done_bytes, restarted_at).
        :param abort: optional threading.Event that stops the download.
        :raises: ImageError (truncated, too large, digest mismatch),
            RegistryError
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
                                raise _bad('download of %s aborted' % digest)
                            chunk = _read(resp, min(CHUNK, size - done), True)
                            if not chunk:
                                break
                            sha.update(chunk)
                            f.write(chunk)
                            done += len(chunk)
                            if report:
                                report(done, None)
                        if done == size and _read(resp, 1):
                            raise _bad('blob %s is larger than its %d bytes'
                                       % (digest, size))
                except _ConnectionFailed as e:
                    error = e
                    LOG.warning('Download of %s broke at %d of %d bytes '
                                '(attempt %d): %s', digest, done, size,
                                attempt, e)
                if done == size:
                    break
            if done != size:
                raise _bad('truncated blob %s: %d of %d bytes after %d '
                           'attempts%s' % (digest, done, size, BLOB_ATTEMPTS,
                                           ' (%s)' % error if error else ''))
        if 'sha256:' + sha.hexdigest() != digest:
            raise _bad('digest mismatch of blob %s: got sha256:%s'
                       % (digest, sha.hexdigest()))


# ------------------------------------------------------------------ pulling

def _select_platform(index, what):
    manifests = index.get('manifests')
    if not isinstance(manifests, list):
        raise _bad('%s: manifests is not a list' % what)
    found = []
    for desc in manifests:
        platform = desc.get('platform') if isinstance(desc, dict) else None
        platform = platform if isinstance(platform, dict) else {}
        pair = (platform.get('os'), platform.get('architecture'))
        if pair == archive.PLATFORM:
            return desc
        found.append('%s/%s' % pair)
    raise _bad('%s has no %s/%s image (it has %s)' % (
        (what,) + archive.PLATFORM + (', '.join(found) or 'none',)))


def _check_descriptor(desc, what, media_types):
    if not isinstance(desc, dict):
        raise _bad('%s: descriptor is not an object' % what)
    media_type = desc.get('mediaType')
    if media_type in archive.ZSTD_LAYER_TYPES:
        raise _bad('%s: unsupported compression zstd' % what)
    if media_type not in media_types:
        raise _bad('%s: unsupported media type %r' % (what, media_type))
    size = desc.get('size')
    if not isinstance(desc.get('digest'), str) or not _SHA256.match(
            desc['digest']):
        raise _bad('%s: unsupported digest %r' % (what, desc.get('digest')))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad('%s: invalid size %r' % (what, size))
    return desc


def _check_manifest(doc, what):
    """:returns: (config descriptor, layer descriptors), within limits."""
    opts = CONF.kata_image
    config = _check_descriptor(doc.get('config'), what + ' config',
                               archive.CONFIG_TYPES)
    if config['size'] > opts.max_manifest_bytes:
        raise exception.ImageLimitExceeded(
            reason='%s: config of %d bytes (limit %d)' % (
                what, config['size'], opts.max_manifest_bytes))
    layers = doc.get('layers')
    if not isinstance(layers, list):
        raise _bad('%s: layers is not a list' % what)
    if len(layers) > opts.max_layers:
        raise exception.ImageLimitExceeded(
            reason='%s: %d layers (limit %d)' % (what, len(layers),
                                                 opts.max_layers))
    for i, desc in enumerate(layers):
        _check_descriptor(desc, '%s layer %d' % (what, i),
                          archive.LAYER_TYPES)
    total = sum(desc['size'] for desc in layers)
    if total > opts.max_unpacked_mb * 1024 * 1024:
        raise exception.ImageLimitExceeded(
            reason='%s: %d bytes of layers (limit %d MiB)' % (
                what, total, opts.max_unpacked_mb))
    return config, layers


def _mb(size):
    return '%.1f MB' % (size / 1e6)


class _Progress(object):
    """Byte counts of one blob (:class:`progress.Update`), at most every
    :data:`progress.REDRAW_INTERVAL` s: a terminal shows them as a
    line per layer, other reporters leave them out.
    """

    def __init__(self, report, label, size):
        self.report, self.label, self.size = report, label, size
        # The first count is reported at once: every blob of more than
        # one read shows its bytes at least once.
        self.last = float('-inf')

    def __call__(self, done, restarted_at):
        if restarted_at is not None:
            self.report('%s: the registry ignored the Range request, '
                        'restarting (had %s)' % (self.label,
                                                 _mb(restarted_at)))
        now = time.monotonic()
        if now - self.last >= progress.REDRAW_INTERVAL and done < self.size:
            self.last = now
            self.report(progress.Update(
                '%s: %s / %s' % (self.label, _mb(done), _mb(self.size)),
                key=self.label, done=done, total=self.size))


def _download(client, config, layers, directory, report):
    """Fetch blobs concurrently into ``directory``, named by digest."""
    unique = {config['digest']: ('Config', config)}
    for i, desc in enumerate(layers, 1):
        unique.setdefault(desc['digest'], (
            'Layer %d/%d' % (i, len(layers)), desc))
    abort = threading.Event()

    def fetch(label, desc):
        label += ' ' + desc['digest'][7:19]
        report(progress.Update('%s: downloading %s' % (
            label, _mb(desc['size'])), key=label))
        client.fetch_blob(desc, os.path.join(directory, desc['digest'][7:]),
                          _Progress(report, label, desc['size']), abort)
        report(progress.Update('%s: done' % label, key=label))

    workers = min(CONF.kata_image.max_concurrent_downloads, len(unique))
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        jobs = [pool.submit(fetch, label, desc)
                for label, desc in unique.values()]
        try:
            for job in concurrent.futures.as_completed(jobs):
                job.result()
        except BaseException:
            abort.set()
            for job in jobs:
                job.cancel()
            raise


@contextlib.contextmanager
def _file_lock(path, report, what, deadline):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Polled (flock also excludes this process's threads): one try,
        # then say why we wait.
        if not fileutils.poll_flock(fd, deadline=0):
            report('Waiting for another pull of %s' % what)
            if not fileutils.poll_flock(fd, deadline, LOCK_POLL):
                raise PullTimeout(registry=what.registry,
                                  seconds=CONF.kata_image.pull_timeout)
        yield
    finally:
        os.close(fd)


def _by_digest(store, digest):
    """The image pulled earlier by a manifest digest, if still there."""
    try:
        with open(os.path.join(store.digests_dir,
                               digest[len('sha256:'):])) as f:
            return store.get(f.read(80).strip())
    except (OSError, exception.ImageNotFound):
        return None


def _remember(store, digests, image_id):
    directory = store.digests_dir
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for digest in digests:
        fileutils.write_atomic(os.path.join(directory, digest[7:]),
                               image_id + '\n', 0o600)


def _local(store, ref, remote):
    try:
        return store.get(ref)
    except exception.ImageNotFound:
        return _by_digest(store, remote.digest) if remote.digest else None


def _write_layout(layout, manifest, name):
    with open(os.path.join(layout, 'blobs', 'sha256', manifest.digest[7:]),
              'wb') as f:
        f.write(manifest.data)
    desc = {'mediaType': manifest.media_type, 'digest': manifest.digest,
            'size': len(manifest.data)}
    if name:
        desc['annotations'] = {archive.ANNOTATION_CONTAINERD: name}
    for filename, doc in (('oci-layout', {'imageLayoutVersion': '1.0.0'}),
                          ('index.json', {'schemaVersion': 2,
                                          'mediaType': archive.MT_OCI_INDEX,
                                          'manifests': [desc]})):
        with open(os.path.join(layout, filename), 'w') as f:
            json.dump(doc, f)


def _pull(store, remote, credentials, report, deadline):
    name = str(remote)
    report('Pulling %s' % name)
    if not credentials:
        # The CLI's logins (kata-zun login), never for a Zun project.
        from kata_zun.image import logins
        credentials = logins.lookup(store, remote.registry)
    client = Client(remote.registry, remote.repository, credentials,
                    host_credentials=store.scope is None)
    client.deadline = deadline
    top = client.get_manifest(remote.digest or remote.tag, name)
    manifest = top
    if top.media_type in archive.INDEX_TYPES:
        desc = _check_descriptor(_select_platform(top.doc, name), name,
                                 archive.MANIFEST_TYPES)
        manifest = client.get_manifest(desc['digest'], name)
        if manifest.media_type not in archive.MANIFEST_TYPES:
            raise _bad('%s: %s is not an image manifest' % (name,
                                                            desc['digest']))
    report('Digest: %s' % top.digest)
    config, layers = _check_manifest(manifest.doc, name)
    try:
        record = store.get(config['digest'])
        report('Image %s is up to date' % record.id)
        if remote.name:
            record = store.tag(record.id, remote.name)
    except exception.ImageNotFound:
        with store.workdir() as work:
            layout = os.path.join(work, 'layout')
            os.makedirs(os.path.join(layout, 'blobs', 'sha256'))
            _download(client, config, layers,
                      os.path.join(layout, 'blobs', 'sha256'), report)
            _write_layout(layout, manifest, remote.name)
            record = store.load_archive(layout, progress=report)[0]
    _remember(store, {top.digest, manifest.digest}, record.id)
    return record


def pull(store, ref, policy='ifnotpresent', credentials=None, progress=None):
    """Pull an image into the store: see :meth:`ImageStore.pull`."""
    report = progress or (lambda message: None)
    deadline = time.monotonic() + CONF.kata_image.pull_timeout
    if policy not in POLICIES:
        raise exception.InvalidInput(reason='unknown pull policy %r (%s)' % (
            policy, ', '.join(POLICIES)))
    remote = None
    if not (isinstance(ref, str) and ref.startswith('sha256:')):
        # (An image id is never pulled.)
        remote = resolve(ref)
        if remote.digest and not _SHA256.match(remote.digest):
            raise exception.InvalidReference(
                ref=ref, reason='only sha256 digests can be pulled')
    if policy != 'always' or remote is None:
        record = _local(store, ref, remote) if remote else store.get(ref)
        if record:
            return record
        if policy == 'never':
            raise exception.ImageNotFound(ref=ref)
    locks = os.path.join(store.root, 'registry', 'locks')
    os.makedirs(locks, mode=0o700, exist_ok=True)
    key = hashlib.sha256(str(remote).encode('utf-8')).hexdigest()[:32]
    with _file_lock(os.path.join(locks, key), report, remote, deadline):
        # A concurrent pull of the same image may have done the work.
        record = _local(store, ref, remote) if policy != 'always' else None
        return record or _pull(store, remote, credentials, report,
                               deadline)
