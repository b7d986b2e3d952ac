"""Image references: ``[registry/]repository[:tag][@digest]``.

The grammar is Docker's (distribution/reference).  Names are kept in
Docker's *familiar* form: ``docker.io/library/busybox`` and ``busybox``
are the same image and are stored as ``busybox``.  Nothing fills in a
default registry yet; a registry client can map ``registry=None`` to
Docker Hub (and add ``library/``) without changing how local names are
stored.
"""

import dataclasses
import re

from kata_zun import exception

DEFAULT_TAG = 'latest'
MAX_NAME = 255

_COMPONENT = re.compile(r'[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*\Z')
_DOMAIN = re.compile(
    r'(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
    r'(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*'
    r'(?::[0-9]+)?\Z')
_TAG = re.compile(r'[\w][\w.-]{0,127}\Z', re.ASCII)
_DIGESTS = {'sha256': 64, 'sha512': 128}
_HEX = re.compile(r'[0-9a-f]+\Z')
_HUB = ('docker.io', 'index.docker.io', 'registry-1.docker.io')


@dataclasses.dataclass(frozen=True)
class Reference(object):
    """A parsed image reference.

    ``registry`` is None when the name has no registry part; ``tag`` is
    None only when a digest was given without a tag.
    """

    registry: str
    repository: str
    tag: str
    digest: str

    @property
    def repo(self):
        """The repository name including the registry, if any."""
        if self.registry:
            return '%s/%s' % (self.registry, self.repository)
        return self.repository

    @property
    def name(self):
        """The normalized reference, e.g. ``busybox:latest``."""
        name = self.repo
        if self.tag:
            name += ':' + self.tag
        if self.digest:
            name += '@' + self.digest
        return name

    def __str__(self):
        return self.name


def _invalid(ref, reason):
    return exception.InvalidReference(ref=ref, reason=reason)


def is_digest(value):
    """Whether ``value`` is a supported ``<algorithm>:<hex>`` digest."""
    alg, sep, hexpart = value.partition(':')
    return (bool(sep) and _DIGESTS.get(alg) == len(hexpart) and
            bool(_HEX.match(hexpart)))


def parse(ref):
    """Parse and normalize an image reference.

    :param ref: e.g. ``busybox``, ``repo:tag``, ``host:5000/ns/repo:tag``
        or ``name@sha256:<64 hex>``.
    :returns: a :class:`Reference`; the tag defaults to ``latest`` unless
        a digest is given.
    :raises: InvalidReference
    """
    if not isinstance(ref, str) or not ref:
        raise _invalid(ref, 'empty reference')
    rest, at, digest = ref.partition('@')
    if at:
        if not is_digest(digest):
            raise _invalid(ref, 'invalid digest (sha256:<64 hex> expected)')
    else:
        digest = None
    # A tag is after the last ':' that follows the last '/': a ':' before
    # it belongs to a registry port.
    name, colon, tag = rest.rpartition(':')
    if not colon or '/' in tag:
        name, tag = rest, None
    elif not _TAG.match(tag):
        raise _invalid(ref, 'invalid tag %r' % tag)
    if not name:
        raise _invalid(ref, 'empty repository name')
    if len(name) > MAX_NAME:
        raise _invalid(ref, 'repository name longer than %d' % MAX_NAME)

    registry = None
    first, slash, remainder = name.partition('/')
    # Like Docker: the first component is a registry when it looks like a
    # host name (has a '.' or a port, or is localhost).
    if slash and ('.' in first or ':' in first or first == 'localhost'):
        if not _DOMAIN.match(first):
            raise _invalid(ref, 'invalid registry %r' % first)
        registry, name = first, remainder
    for component in name.split('/'):
        if not _COMPONENT.match(component):
            if component.lower() != component:
                raise _invalid(ref, 'repository name must be lowercase')
            raise _invalid(ref, 'invalid repository name component %r'
                           % component)
    if registry in _HUB:
        registry = None
        if name.startswith('library/') and name.count('/') == 1:
            name = name[len('library/'):]
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, name, tag, digest)
