"""Connections to registries, bounded in time and size.

Which hosts may be reached over plain HTTP (the insecure registries and,
like Docker, loopback hosts), what a TLS failure means, proxies as
``[kata_image]`` or the environment say, retry delays, bounded reads, and
the socket wrapper that keeps a dripping registry within the pull's
deadline. The requests themselves are :class:`~.client.Client`'s.
"""

import base64
import http.client
import io
import ipaddress
import ssl
import urllib.parse
import urllib.request

from kata_zun import conf
from kata_zun import exception
from kata_zun.image.registry import errors

CONF = conf.CONF

# Answers that mean "try again later", and the longest Retry-After we
# honour (a registry cannot park a pull for an hour).
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 30.0


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


def hostname(netloc):
    return urllib.parse.urlsplit('//' + netloc).hostname


def plain_http_first(netloc):
    """Registries reached over plain HTTP only, by configuration."""
    return netloc in CONF.kata_image.insecure_registries


def plain_http_allowed(netloc):
    """Hosts that may be reached over plain HTTP: the insecure registries
    and, like Docker, every loopback registry (after HTTPS failed).
    """
    return plain_http_first(netloc) or is_loopback(hostname(netloc))


# OpenSSL's reasons when the server answers a TLS handshake in plain HTTP
# ("HTTP/1.1 400 ..." read as a TLS record): 3.0 says WRONG_VERSION_NUMBER,
# 3.2 and later RECORD_LAYER_FAILURE.
_PLAIN_HTTP_REASONS = frozenset((
    'WRONG_VERSION_NUMBER', 'RECORD_LAYER_FAILURE', 'UNKNOWN_PROTOCOL',
    'PACKET_LENGTH_TOO_LONG', 'HTTP_REQUEST'))


def tls_protocol_error(error):
    """Whether ``error`` is a TLS failure that another try would repeat:
    any SSL error but a lost connection (EOF) and a verification failure
    (handled as such).
    """
    return (isinstance(error, ssl.SSLError) and not isinstance(
        error, (ssl.SSLEOFError, ssl.SSLZeroReturnError,
                ssl.SSLCertVerificationError)))


def speaks_plain_http(error):
    """Whether a TLS handshake failed because the server spoke plain HTTP.
    """
    if not isinstance(error, ssl.SSLError):
        return False
    reason = getattr(error, 'reason', None) or ''
    text = str(error).lower()
    return (reason in _PLAIN_HTTP_REASONS or 'wrong version number' in text
            or 'record layer failure' in text)


def ssl_context():
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
    :raises: errors.RegistryError for a proxy URL that is not ``http://``.
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
        raise errors.RegistryError(registry=netloc, reason='proxy: %s' % e)


def retry_delay(attempt, resp=None):
    """Seconds before retry ``attempt`` (1, 2...).

    Retry-After when the registry gives one in seconds, else exponential
    back-off.
    """
    value = resp.getheader('Retry-After') if resp is not None else None
    if value and value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER)
    return min(0.5 * 2 ** (attempt - 1), 8.0)


def read(resp, size, some=False):
    """Read ``size`` bytes (``some``: what arrives, at most ``size``)."""
    try:
        return resp.read1(size) if some else resp.read(size)
    except (OSError, http.client.HTTPException) as e:
        raise errors.ConnectionFailed(
            registry=resp.url_netloc,
            reason='reading %s: %s' % (resp.url_path, e or repr(e)))


def read_limited(resp, limit, what):
    length = resp.getheader('Content-Length')
    if length and length.isdigit() and int(length) > limit:
        raise exception.ImageLimitExceeded(
            reason='%s of %s bytes (limit %d)' % (what, length, limit))
    data = read(resp, limit + 1)
    if len(data) > limit:
        raise exception.ImageLimitExceeded(
            reason='%s larger than %d bytes' % (what, limit))
    return data


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


class DeadlineSocket(object):
    """What ``http.client.HTTPResponse`` uses of a socket."""

    def __init__(self, sock, client):
        self._sock = sock
        self._client = client

    def makefile(self, mode, *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._client))
