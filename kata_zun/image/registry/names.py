"""Where an image is pulled from: a reference resolved like Docker's.

``busybox`` is ``library/busybox:latest`` in the default registry
(``[kata_image] default_registry``: Docker Hub or a mirror of it), and
Docker Hub names (``docker.io/...``) go there too.
"""

import dataclasses

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import reference

CONF = conf.CONF

HUB = 'docker.io'
HUB_API = 'registry-1.docker.io'
HUB_AUTH = 'auth.docker.io'


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
        return api_host(self.registry)

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


def api_host(registry):
    """Where a registry's API is: Docker Hub's differs from its name."""
    return HUB_API if registry == HUB else registry


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
