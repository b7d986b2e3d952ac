"""Registry logins of the standalone CLI (``kata-zun login``/``logout``).

Credentials are kept in ``<image store>/registry/auth.json``, mode 0600
in a 0700 directory (the store is root's), as ``{"registry": {"username":
..., "password": ...}}``, the format of ``[kata_image] credentials_file``.
Pulls of the host's own store (the CLI's; never a Zun project's, see
:meth:`kata_zun.image.store.ImageStore.scoped`) use them when they are
given no credentials, before ``credentials_file``.

Docker keeps logins in ``~/.docker/config.json``, base64-encoded; here
they belong to the image store: the containers and images of the CLI are
host-wide too.
"""

import contextlib
import fcntl
import os
import urllib.parse

from kata_zun import exception
from kata_zun.image import registry
from kata_zun.runtime import fileutils

FILENAME = 'auth.json'
# Hosts of Docker Hub a user may type; its logins are kept as docker.io.
_HUB_NAMES = ('docker.io', 'index.docker.io', 'registry-1.docker.io',
              'registry.hub.docker.com')
# More than anyone logs into; bounds what a damaged file costs.
MAX_LOGINS = 1000
MAX_FIELD = 4096


def server_name(server=None):
    """The registry a ``login``/``logout`` argument names, as pulls key
    it: ``host[:port]``, or ``docker.io`` for Docker Hub.

    :param server: ``host[:port]``, a URL (``https://host/v1/``), or
        None for ``[kata_image] default_registry``.
    :raises: InvalidInput
    """
    if not server:
        return registry.default_registry()
    text = server.strip()
    if '://' in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ('http', 'https'):
            raise exception.InvalidInput(reason='invalid registry %r'
                                         % server)
        text = parts.netloc
    else:
        text = text.split('/', 1)[0]
    host = text.lower()
    if host in _HUB_NAMES:
        return registry.HUB
    try:
        parsed = urllib.parse.urlsplit('//' + text)
        parsed.port
    except ValueError:
        parsed = None
    if (parsed is None or not parsed.hostname or '@' in text or
            len(text) > 255 or any(c.isspace() or ord(c) < 32
                                   for c in text)):
        raise exception.InvalidInput(reason='invalid registry %r' % server)
    return text


def _path(store):
    return os.path.join(store.root, 'registry', FILENAME)


@contextlib.contextmanager
def _locked(store):
    directory = os.path.dirname(_path(store))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, FILENAME + '.lock'),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(store):
    """:returns: the logins, {} when none; a damaged file counts as none
    (a login replaces it).
    """
    try:
        doc = fileutils.read_json(_path(store))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in list(doc.items())[:MAX_LOGINS]
            if isinstance(k, str) and _valid(v)}


def _valid(entry):
    return (isinstance(entry, dict) and all(
        isinstance(entry.get(k), str) and len(entry[k]) <= MAX_FIELD
        for k in ('username', 'password')))


def lookup(store, name):
    """The credentials saved for registry ``name``, or None.

    Only for the host's own store: a Zun project's pulls never use them.
    """
    if store.scope is not None:
        return None
    entry = _read(store).get(name)
    return dict(entry) if entry else None


def save(store, name, username, password):
    """Keep credentials for ``name`` (0600, written atomically).

    :raises: InvalidInput
    """
    creds = {'username': username, 'password': password}
    if not _valid(creds) or not username:
        raise exception.InvalidInput(reason='a username and a password of '
                                     'at most %d characters are needed'
                                     % MAX_FIELD)
    with _locked(store):
        logins = _read(store)
        logins[name] = creds
        fileutils.write_json(_path(store), logins, mode=0o600)


def remove(store, name):
    """Forget the credentials of ``name``.

    :returns: True if there were some.
    """
    with _locked(store):
        logins = _read(store)
        if name not in logins:
            return False
        del logins[name]
        fileutils.write_json(_path(store), logins, mode=0o600)
        return True
