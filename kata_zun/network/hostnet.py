"""What the host's network looks like, read without privileges.

Routes and addresses come from ``ip -j`` (iproute2; argv lists, never a
shell), name servers from /etc/resolv.conf, free ports from a trial
bind().
"""

import errno
import ipaddress
import json
import os
import socket
import subprocess

from kata_zun import exception

RESOLV_CONF = '/etc/resolv.conf'
SYS_NET = '/sys/class/net'
DEFAULT_MTU = 1500


def _ip_json(args):
    try:
        proc = subprocess.run(['ip', '-j'] + list(args), capture_output=True,
                              timeout=30, check=False)
    except OSError as exc:
        raise exception.KataZunException('cannot run ip (iproute2): %s' %
                                         exc)
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode('utf-8', 'replace').strip()
    return json.loads(text) if text else []


def routes():
    """:returns: [{'dst': IPv4Network or 'default', 'dev', 'table',
    'type'}] of every IPv4 routing table.
    """
    out = []
    for r in _ip_json(['-4', 'route', 'show', 'table', 'all']) or []:
        dst = r.get('dst')
        if not dst:
            continue
        if dst != 'default':
            try:
                dst = ipaddress.IPv4Network(dst, strict=False)
            except ValueError:
                continue
        out.append({'dst': dst, 'dev': r.get('dev'),
                    'table': r.get('table', 'main'),
                    'type': r.get('type', 'unicast')})
    return out


def overlaps(subnet, ignore_dev=None, table=None):
    """Host routes and addresses that overlap ``subnet``.

    The default route is no overlap (every subnet is in it), nor is
    anything on ``ignore_dev`` (our own bridge).

    :param subnet: an IPv4Network.
    :returns: list of 'NETWORK dev DEV' strings.
    """
    found = []
    for r in table if table is not None else routes():
        if r['dst'] == 'default' or (ignore_dev and r['dev'] == ignore_dev):
            continue
        if r['dst'].overlaps(subnet):
            text = '%s dev %s' % (r['dst'], r['dev'])
            if text not in found:
                found.append(text)
    return found


def default_mtu(table=None, sys_net=SYS_NET):
    """:returns: the MTU of the main default route's device (or 1500)."""
    for r in table if table is not None else routes():
        if r['dst'] == 'default' and r['table'] == 'main' and r['dev']:
            try:
                with open(os.path.join(sys_net, r['dev'], 'mtu')) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                break
    return DEFAULT_MTU


def link_ipv4(name):
    """:returns: ['a.b.c.d/p', ...] of link ``name``, None if it does not
    exist.
    """
    if not os.path.isdir(os.path.join(SYS_NET, name)):
        return None
    data = _ip_json(['-4', 'addr', 'show', 'dev', name])
    if data is None:
        return None
    return ['%s/%s' % (a['local'], a['prefixlen'])
            for link in data for a in link.get('addr_info', [])
            if a.get('family') == 'inet']


def host_dns(path=RESOLV_CONF):
    """:returns: the host's name servers a guest can reach (not loopback:
    that would be the guest's own).
    """
    servers = []
    try:
        with open(path) as f:
            lines = f.read(65536).splitlines()
    except OSError:
        return servers
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == 'nameserver':
            try:
                addr = ipaddress.ip_address(words[1].split('%')[0])
            except ValueError:
                continue
            if not addr.is_loopback and words[1] not in servers:
                servers.append(words[1])
    return servers[:3]


def check_port_free(mapping):
    """Refuse a host port something on this host listens on already.

    :raises: Conflict if bound; InvalidInput if the address is not one of
             this host's. Ports we may not bind (below 1024 without
             privileges) are not checked.
    """
    kind = (socket.SOCK_STREAM if mapping['proto'] == 'tcp'
            else socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Ignore TIME_WAIT leftovers; a listener still conflicts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((mapping['host_ip'], mapping['host_port']))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise exception.Conflict(
                reason='host port %s:%d/%s is already in use on this host'
                % (mapping['host_ip'], mapping['host_port'],
                   mapping['proto']))
        if exc.errno == errno.EADDRNOTAVAIL:
            raise exception.InvalidInput(
                reason='%s is not an address of this host' %
                mapping['host_ip'])
        if exc.errno != errno.EACCES:
            raise
    finally:
        sock.close()
