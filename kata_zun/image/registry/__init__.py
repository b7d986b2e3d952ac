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

The package, one step each (what the rest of kata-zun uses is named
here):

=============  ==========================================================
``names``      a reference resolved to a registry and repository
``transport``  connections: plain HTTP or TLS, proxies, retry delays,
               bounded reads, the pull's deadline on every receive
``client``     one repository: requests, redirects, retries, auth,
               manifest and blob fetches
``manifests``  manifests and indexes checked before any blob is fetched
``pulling``    the pull: lock, manifest, blobs, the store's loader
``errors``     what a pull fails with (the hierarchy is drawn there)
=============  ==========================================================
"""

from kata_zun.image.registry import client
from kata_zun.image.registry import errors
from kata_zun.image.registry import names
from kata_zun.image.registry import pulling
from kata_zun.image.registry import transport

Client = client.Client
parse_www_authenticate = client.parse_www_authenticate
RegistryError = errors.RegistryError
RegistryAuthError = errors.RegistryAuthError
PullTimeout = errors.PullTimeout
HUB = names.HUB
Remote = names.Remote
default_registry = names.default_registry
qualified_name = names.qualified_name
resolve = names.resolve
POLICIES = pulling.POLICIES
pull = pulling.pull
is_loopback = transport.is_loopback
proxy_for = transport.proxy_for
