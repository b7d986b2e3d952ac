"""Volume requests: Docker's ``-v`` and ``--mount`` syntax, validated.

The result is a list of plain dicts (JSON, kept in the container record):
``{'type': 'block'|'volume'|'bind', 'source': ..., 'target': ...,
'readonly': bool}``.
"""

import os
import re

from kata_zun import exception

TYPES = ('bind', 'volume', 'block')
MAX_VOLUMES = 16
MAX_TARGET = 4096
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
_KEYS = {'type': 'type', 'source': 'source', 'src': 'source',
         'target': 'target', 'destination': 'target', 'dst': 'target',
         'readonly': 'readonly', 'ro': 'readonly'}


def _invalid(reason):
    return exception.InvalidInput(reason=reason)


def check_target(target):
    """:returns: the normalised absolute target (no '.', '..', '//').
    :raises: InvalidInput
    """
    if (not isinstance(target, str) or not target.startswith('/') or
            len(target) > MAX_TARGET or '\0' in target):
        raise _invalid('volume target must be an absolute path: %r'
                       % (target,))
    parts = [p for p in target.split('/') if p not in ('', '.')]
    if not parts:
        raise _invalid('a volume cannot be mounted at /')
    if '..' in parts:
        raise _invalid('volume target must not contain "..": %r' % target)
    return '/' + '/'.join(parts)


def check_name(name):
    """:returns: ``name`` if it is a valid volume name.
    :raises: InvalidInput
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _invalid('invalid volume name %r (letters, digits, _ . -; '
                       'at most 64)' % (name,))
    return name


def _source(kind, source):
    if kind == 'volume':
        return check_name(source)
    if (not isinstance(source, str) or not source.startswith('/') or
            '\0' in source or len(source) > MAX_TARGET):
        raise _invalid('a %s source must be an absolute host path: %r'
                       % (kind, source))
    return os.path.normpath(source)


def make(kind, source, target, readonly=False):
    """:returns: one validated volume request.
    :raises: InvalidInput
    """
    if kind not in TYPES:
        raise _invalid('unknown mount type %r (bind, volume, block)'
                       % (kind,))
    return {'type': kind, 'source': _source(kind, source),
            'target': check_target(target), 'readonly': bool(readonly)}


def parse_v(text):
    """Parse ``-v SRC:DST[:ro|rw]``: an absolute SRC is a bind mount,
    anything else a named volume.

    :returns: a volume request.
    :raises: InvalidInput
    """
    parts = text.split(':')
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise _invalid('invalid volume %r (want SRC:DST[:ro])' % text)
    readonly = False
    if len(parts) == 3:
        for opt in parts[2].split(','):
            if opt == 'ro':
                readonly = True
            elif opt != 'rw':
                raise _invalid('unsupported volume option %r in %r'
                               % (opt, text))
    kind = 'bind' if parts[0].startswith('/') else 'volume'
    return make(kind, parts[0], parts[1], readonly)


def parse_mount(text):
    """Parse ``--mount type=...,source=...,target=...[,readonly]``.

    :returns: a volume request.
    :raises: InvalidInput
    """
    fields = {}
    for item in text.split(','):
        key, sep, value = item.partition('=')
        name = _KEYS.get(key.strip())
        if name is None:
            raise _invalid('unknown --mount field %r' % key)
        if name in fields:
            raise _invalid('--mount field %r given twice' % key)
        if name == 'readonly':
            if sep and value not in ('true', 'false', '1', '0'):
                raise _invalid('readonly must be true or false')
            fields[name] = not sep or value in ('true', '1')
        else:
            fields[name] = value
    for required in ('source', 'target'):
        if not fields.get(required):
            raise _invalid('--mount needs %s=' % required)
    return make(fields.get('type', 'volume'), fields['source'],
                fields['target'], fields.get('readonly', False))


def check_all(requests):
    """:returns: the list, checked as a whole (count, one per target).
    :raises: InvalidInput
    """
    requests = list(requests or ())
    if len(requests) > MAX_VOLUMES:
        raise _invalid('at most %d volumes per container' % MAX_VOLUMES)
    targets = set()
    for req in requests:
        if req['target'] in targets:
            raise _invalid('two volumes at %s' % req['target'])
        targets.add(req['target'])
    return requests
