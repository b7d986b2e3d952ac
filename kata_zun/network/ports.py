"""Docker-style published ports: ``[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]``.

A mapping is a plain dict (it is stored in JSON records)::

    {'proto': 'tcp', 'host_ip': '0.0.0.0', 'host_port': 8080,
     'container_port': 80}

``0.0.0.0`` means every address of the host, the host's own loopback
included.
"""

import ipaddress
import re

from kata_zun import exception

ANY = '0.0.0.0'
PROTOCOLS = ('tcp', 'udp')
_SPEC_RE = re.compile(r'^(?:(?P<ip>[0-9.]{7,15}):)?(?P<host>[0-9]{1,5}):'
                      r'(?P<cont>[0-9]{1,5})(?:/(?P<proto>[a-z]+))?$')
_USAGE = 'want [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]'


def _invalid(spec, why):
    return exception.InvalidInput(reason='invalid port mapping %r: %s' %
                                  (spec, why))


def parse(spec):
    """Parse one ``-p`` value.

    :returns: a mapping dict.
    :raises: InvalidInput
    """
    if not isinstance(spec, str):
        raise _invalid(spec, _USAGE)
    m = _SPEC_RE.fullmatch(spec.strip())
    if not m:
        raise _invalid(spec, _USAGE + ' (IPv4 only, no ranges)')
    proto = m.group('proto') or 'tcp'
    if proto not in PROTOCOLS:
        raise _invalid(spec, 'protocol must be tcp or udp')
    host_ip = m.group('ip') or ANY
    try:
        addr = ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise _invalid(spec, 'bad host address %r' % host_ip)
    if addr.is_multicast or (addr.is_reserved and str(addr) != ANY) or \
            str(addr) == '255.255.255.255':
        raise _invalid(spec, 'host address %s cannot be published on' %
                       addr)
    host_port = int(m.group('host'))
    container_port = int(m.group('cont'))
    for port in (host_port, container_port):
        if not 1 <= port <= 65535:
            raise _invalid(spec, 'ports must be in 1-65535')
    return {'proto': proto, 'host_ip': str(addr), 'host_port': host_port,
            'container_port': container_port}


def overlap(a, b):
    """True if two mappings claim the same host port."""
    return (a['proto'] == b['proto'] and a['host_port'] == b['host_port']
            and (a['host_ip'] == b['host_ip'] or ANY in (a['host_ip'],
                                                         b['host_ip'])))


def parse_all(specs):
    """Parse every ``-p`` value; refuse one host port claimed twice.

    :returns: list of mapping dicts.
    :raises: InvalidInput
    """
    out = []
    for spec in specs or ():
        mapping = parse(spec)
        for other in out:
            if overlap(mapping, other):
                raise _invalid(spec, 'host port %s is given twice' %
                               describe_host(mapping))
        out.append(mapping)
    return out


def describe_host(mapping):
    return '%s:%d/%s' % (mapping['host_ip'], mapping['host_port'],
                         mapping['proto'])


def describe(mapping):
    """``0.0.0.0:8080->80/tcp`` (like docker ps)."""
    return '%s:%d->%d/%s' % (mapping['host_ip'], mapping['host_port'],
                             mapping['container_port'], mapping['proto'])
