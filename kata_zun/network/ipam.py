"""Address leases of one bridge, on disk.

``<state_path>/network/leases-<bridge>.json``::

    {"bridge": "kz0", "subnet": "10.88.0.0/16", "next": "10.88.0.3",
     "leases": {"<container id>": {"ip": "10.88.0.2",
                                   "mac": "02:6b:0a:58:00:02",
                                   "tap": "kzt0123456789ab",
                                   "ports": [...], "created": 1.7e9}}}

Every read-modify-write happens under :func:`locked` (an flock on
``<state_path>/network/.lock``, shared by all bridges of that state path)
and the file is replaced atomically (:func:`fileutils.write_json`): after
a crash or a restart it holds either the old or the new leases, never a
duplicate. Addresses are handed out round robin (``next``), so a released
address is not reused at once while neighbours may still have its MAC in
their ARP caches.

A lease is written before anything is made for it and dropped after all
of it is gone: whatever exists on the host for a container has a lease,
which is what reconciliation goes by.
"""

import contextlib
import fcntl
import glob
import ipaddress
import os
import time

from kata_zun.network import base
from kata_zun.runtime import fileutils

LOCK = '.lock'
TAP_PREFIX = 'kzt'


def tap_name(cid):
    """The tap of a container: ``kzt`` + 12 hex digits (15 characters,
    the kernel's IFNAMSIZ limit).
    """
    return TAP_PREFIX + cid[:12]


def mac_for(ip):
    """A locally administered unicast MAC derived from the address."""
    return '02:6b:%02x:%02x:%02x:%02x' % tuple(
        ipaddress.IPv4Address(ip).packed)


@contextlib.contextmanager
def locked(state_dir):
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCK), os.O_RDWR | os.O_CREAT,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lease_files(state_dir):
    return sorted(glob.glob(os.path.join(glob.escape(state_dir),
                                         'leases-*.json')))


class Ipam(object):
    """The leases of one bridge; call its methods under :func:`locked`."""

    def __init__(self, state_dir, bridge, subnet):
        self.path = os.path.join(state_dir, 'leases-%s.json' % bridge)
        self.bridge = bridge
        self.subnet = ipaddress.IPv4Network(subnet)
        self.gateway = str(self.subnet.network_address + 1)

    @classmethod
    def from_file(cls, path):
        data = fileutils.read_json(path)
        ipam = cls(os.path.dirname(path), data['bridge'], data['subnet'])
        return ipam

    def load(self):
        """:returns: the lease data (empty if there is no file).
        :raises: NetworkError when leases of another subnet exist.
        """
        try:
            data = fileutils.read_json(self.path)
        except FileNotFoundError:
            data = None
        if data is not None and data.get('subnet') != str(self.subnet):
            if data.get('leases'):
                raise base.NetworkError(
                    reason='bridge %s has leases in subnet %s, the '
                    'configuration says %s: remove those containers (%s) '
                    'before changing [kata_network] subnet' % (
                        self.bridge, data.get('subnet'), self.subnet,
                        ', '.join(c[:12] for c in data['leases'])))
            data = None
        if data is None:
            data = {'bridge': self.bridge, 'subnet': str(self.subnet),
                    'next': None, 'leases': {}}
        return data

    def save(self, data):
        fileutils.write_json(self.path, data)

    def allocate(self, data, cid, hostname=None):
        """Lease an address to ``cid`` (its existing lease if it has one).

        :returns: the lease dict (also stored in ``data``).
        :raises: NetworkError when the subnet is full.
        """
        lease = data['leases'].get(cid)
        if lease is not None:
            return lease
        tap = tap_name(cid)
        for other_id, other in data['leases'].items():
            if other['tap'] == tap:
                raise base.NetworkError(
                    reason='containers %s and %s share the tap name %s' %
                    (cid[:12], other_id[:12], tap))
        used = {other['ip'] for other in data['leases'].values()}
        used.add(self.gateway)
        first = int(self.subnet.network_address) + 2
        last = int(self.subnet.broadcast_address) - 1
        size = last - first + 1
        start = first
        if data.get('next'):
            start = int(ipaddress.IPv4Address(data['next']))
            if not first <= start <= last:
                start = first
        for i in range(size):
            candidate = str(ipaddress.IPv4Address(
                first + (start - first + i) % size))
            if candidate not in used:
                break
        else:
            raise base.NetworkError(reason='no free address left in %s' %
                                    self.subnet)
        nxt = int(ipaddress.IPv4Address(candidate)) + 1
        data['next'] = str(ipaddress.IPv4Address(nxt if nxt <= last
                                                 else first))
        lease = {'ip': candidate, 'mac': mac_for(candidate), 'tap': tap,
                 'ports': [], 'hostname': hostname, 'created': time.time()}
        data['leases'][cid] = lease
        return lease

    @staticmethod
    def release(data, cid):
        return data['leases'].pop(cid, None)
