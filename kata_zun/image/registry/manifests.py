"""Manifests and indexes as a registry serves them, checked before any
blob is fetched: descriptors well formed, media types and digests we
support, sizes and layer counts within ``[kata_image]``'s limits.
"""

import dataclasses
import re

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image.registry import errors

CONF = conf.CONF

MANIFEST_ACCEPT = ', '.join(archive.MANIFEST_TYPES + archive.INDEX_TYPES)
SHA256 = re.compile(r'sha256:([0-9a-f]{64})\Z')


@dataclasses.dataclass
class Manifest(object):
    """A fetched manifest or index, its digest computed from its bytes."""

    digest: str
    media_type: str
    data: bytes
    doc: dict


def select_platform(index, what):
    manifests = index.get('manifests')
    if not isinstance(manifests, list):
        raise errors.bad('%s: manifests is not a list' % what)
    found = []
    for desc in manifests:
        platform = desc.get('platform') if isinstance(desc, dict) else None
        platform = platform if isinstance(platform, dict) else {}
        pair = (platform.get('os'), platform.get('architecture'))
        if pair == archive.PLATFORM:
            return desc
        found.append('%s/%s' % pair)
    raise errors.bad('%s has no %s/%s image (it has %s)' % (
        (what,) + archive.PLATFORM + (', '.join(found) or 'none',)))


def check_descriptor(desc, what, media_types):
    if not isinstance(desc, dict):
        raise errors.bad('%s: descriptor is not an object' % what)
    media_type = desc.get('mediaType')
    if media_type in archive.ZSTD_LAYER_TYPES:
        raise errors.bad('%s: unsupported compression zstd' % what)
    if media_type not in media_types:
        raise errors.bad('%s: unsupported media type %r' % (what, media_type))
    size = desc.get('size')
    if not isinstance(desc.get('digest'), str) or not SHA256.match(
            desc['digest']):
        raise errors.bad('%s: unsupported digest %r' %
                         (what, desc.get('digest')))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errors.bad('%s: invalid size %r' % (what, size))
    return desc


def check_manifest(doc, what):
    """:returns: (config descriptor, layer descriptors), within limits."""
    opts = CONF.kata_image
    config = check_descriptor(doc.get('config'), what + ' config',
                              archive.CONFIG_TYPES)
    if config['size'] > opts.max_manifest_bytes:
        raise exception.ImageLimitExceeded(
            reason='%s: config of %d bytes (limit %d)' % (
                what, config['size'], opts.max_manifest_bytes))
    layers = doc.get('layers')
    if not isinstance(layers, list):
        raise errors.bad('%s: layers is not a list' % what)
    if len(layers) > opts.max_layers:
        raise exception.ImageLimitExceeded(
            reason='%s: %d layers (limit %d)' % (what, len(layers),
                                                 opts.max_layers))
    for i, desc in enumerate(layers):
        check_descriptor(desc, '%s layer %d' % (what, i),
                         archive.LAYER_TYPES)
    total = sum(desc['size'] for desc in layers)
    if total > opts.max_unpacked_mb * 1024 * 1024:
        raise exception.ImageLimitExceeded(
            reason='%s: %d bytes of layers (limit %d MiB)' % (
                what, total, opts.max_unpacked_mb))
    return config, layers
