"""Guest network configuration, and the small rtnetlink client it uses.

Standard library only: this module runs inside the guest (imported lazily
by the agent's ``create_sandbox``). :func:`configure` takes the spec the
host sends::

    {'interfaces': [{'mac': '02:6b:0a:58:00:02', 'address': '10.88.0.2',
                     'prefix': 16, 'mtu': 1500, 'gateway': '10.88.0.1'}],
     'dns': ['10.88.0.1'], 'hostname': 'web1'}

and brings ``lo`` up, then for each interface (found by MAC in
/sys/class/net) sets the MTU, brings it up, adds the address and the
default route. It talks rtnetlink on one socket instead of spawning
``ip``: under TCG every exec costs milliseconds, a netlink message
microseconds.

The :class:`Netlink` helpers are also used on the host by the privileged
side (:mod:`kata_zun.privsep.linux_net`) for bridges and taps.
"""

import os
import re
import socket
import struct
import time

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
NLA_F_NESTED = 0x8000
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_F_NODAD = 0x02
RTA_OIF = 4
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

SYS_NET = '/sys/class/net'
SYS_SLOTS = '/sys/bus/pci/slots'
RESOLV_CONF = '/etc/resolv.conf'
PCI_ADDR_RE = re.compile(r'^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$')
MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')
MAX_INTERFACES = 8
MAX_ADDRESSES = 8
NIC_WAIT = 5.0

_HDR = struct.Struct('=IHHII')           # struct nlmsghdr
_IFINFO = struct.Struct('=BxHiII')       # struct ifinfomsg
_IFADDR = struct.Struct('=BBBBI')        # struct ifaddrmsg
_RTMSG = struct.Struct('=BBBBBBBBI')     # struct rtmsg


def _align(n):
    return (n + 3) & ~3


def attr(kind, data):
    """One netlink attribute (strings get their NUL, ints are u32)."""
    if isinstance(data, str):
        data = data.encode() + b'\0'
    elif isinstance(data, int):
        data = struct.pack('=I', data)
    length = 4 + len(data)
    return (struct.pack('=HH', length, kind) + data +
            b'\0' * (_align(length) - length))


def ip_address(text):
    """:returns: (address family, packed bytes) of an IPv4 or IPv6
    address.
    :raises: ValueError
    """
    if not isinstance(text, str) or len(text) > 45:
        raise ValueError('bad IP address %r' % (text,))
    family = socket.AF_INET6 if ':' in text else socket.AF_INET
    try:
        return family, socket.inet_pton(family, text)
    except OSError:
        raise ValueError('bad IP address %r' % text)


class Netlink(object):
    """A blocking rtnetlink socket: one request, one acknowledgement."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK,
                                  socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(10)
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, msg_type, flags, payload, what):
        """Send one request and wait for its acknowledgement.

        :raises: OSError with the kernel's errno.
        """
        self.seq += 1
        self.sock.send(_HDR.pack(_HDR.size + len(payload), msg_type,
                                 flags | NLM_F_REQUEST | NLM_F_ACK,
                                 self.seq, 0) + payload)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data,
                                                                    offset)
                if length < _HDR.size:
                    break
                if seq == self.seq and mtype == NLMSG_ERROR:
                    err = struct.unpack_from('=i', data,
                                             offset + _HDR.size)[0]
                    if err:
                        raise OSError(-err, '%s: %s' % (
                            what, os.strerror(-err)))
                    return
                offset += _align(length)

    def link_add(self, name, kind, mtu=None):
        """Create a link of ``kind`` (e.g. 'bridge'); fails if it exists."""
        attrs = attr(IFLA_IFNAME, name)
        if mtu:
            attrs += attr(IFLA_MTU, int(mtu))
        info = attr(IFLA_INFO_KIND, kind)
        attrs += struct.pack('=HH', 4 + len(info),
                             IFLA_LINKINFO | NLA_F_NESTED) + info
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                     _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs,
                     'create %s %s' % (kind, name))

    def link_set(self, index, up=None, mtu=None, master=None):
        """Change a link: administrative state, MTU, bridge master."""
        flags = change = 0
        if up is not None:
            change = IFF_UP
            flags = IFF_UP if up else 0
        attrs = b''
        if mtu:
            attrs += attr(IFLA_MTU, int(mtu))
        if master is not None:
            attrs += attr(IFLA_MASTER, int(master))
        self.request(RTM_NEWLINK, 0,
                     _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags,
                                  change) + attrs,
                     'configure link %d' % index)

    def link_del(self, index):
        self.request(RTM_DELLINK, 0,
                     _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0),
                     'delete link %d' % index)

    def addr_add(self, index, address, prefix):
        """Add (or keep) an IPv4 address with its broadcast address, or an
        IPv6 address (usable at once: the host's IPAM made it unique, so
        no duplicate address detection delays it).
        """
        family, packed = ip_address(address)
        if family == socket.AF_INET6:
            self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
                         _IFADDR.pack(family, prefix, IFA_F_NODAD,
                                      RT_SCOPE_UNIVERSE, index) +
                         attr(IFA_ADDRESS, packed),
                         'add address %s/%d' % (address, prefix))
            return
        local = packed
        host_bits = 32 - prefix
        bcast = struct.pack('!I', struct.unpack('!I', local)[0] |
                            ((1 << host_bits) - 1 if host_bits else 0))
        attrs = attr(IFA_LOCAL, local) + attr(IFA_ADDRESS, local)
        if prefix < 31:
            attrs += attr(IFA_BROADCAST, bcast)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
                     _IFADDR.pack(socket.AF_INET, prefix, 0,
                                  RT_SCOPE_UNIVERSE, index) + attrs,
                     'add address %s/%d' % (address, prefix))

    def default_route(self, index, gateway):
        family, packed = ip_address(gateway)
        attrs = attr(RTA_GATEWAY, packed) + attr(RTA_OIF, index)
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                     _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN,
                                 RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                                 RTN_UNICAST, 0) + attrs,
                     'add default route via %s' % gateway)


def find_by_mac(mac, timeout=NIC_WAIT, sys_net=SYS_NET):
    """:returns: the name of the interface with ``mac``.
    :raises: ValueError when none shows up within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        for name in os.listdir(sys_net):
            try:
                with open('%s/%s/address' % (sys_net, name)) as f:
                    if f.read().strip().lower() == mac:
                        return name
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise ValueError('no network interface with MAC %s' % mac)
        time.sleep(0.01)


def _int(iface, key, low, high, default=None):
    value = iface.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or \
            not low <= value <= high:
        raise ValueError('%s must be an integer in [%d, %d]' %
                         (key, low, high))
    return value


def _address_entry(entry):
    """One address of an interface: {'address', 'prefix', 'gateway'}."""
    if not isinstance(entry, dict):
        raise ValueError('an address must be an object')
    family, _packed = ip_address(entry.get('address'))
    bits = 128 if family == socket.AF_INET6 else 32
    prefix = _int(entry, 'prefix', 1, bits)
    if prefix is None:
        raise ValueError('prefix is required')
    gateway = entry.get('gateway')
    if gateway is not None and ip_address(gateway)[0] != family:
        raise ValueError('gateway %r is not of the family of %r' % (
            gateway, entry['address']))
    return {'address': entry['address'], 'prefix': prefix,
            'gateway': gateway}


def validate_interface(iface):
    """Check one interface of a network spec::

        {'mac': ..., 'mtu': 1450, 'address': '10.0.0.5', 'prefix': 24,
         'gateway': '10.0.0.1',
         'extra': [{'address': 'fd00::5', 'prefix': 64,
                    'gateway': 'fd00::1'}]}

    The first address and the ``extra`` ones may be IPv4 or IPv6; a
    gateway becomes the default route of its family.

    :returns: the interface dict, normalized (all addresses in
        ``addresses``).
    :raises: ValueError
    """
    if not isinstance(iface, dict):
        raise ValueError('an interface must be an object')
    mac = str(iface.get('mac', '')).lower()
    if not MAC_RE.fullmatch(mac):
        raise ValueError('bad MAC address %r' % iface.get('mac'))
    extra = iface.get('extra') or []
    if not isinstance(extra, list) or len(extra) > MAX_ADDRESSES - 1:
        raise ValueError('extra must be a list of at most %d addresses'
                         % (MAX_ADDRESSES - 1))
    addresses = [_address_entry(e) for e in [iface] + extra]
    return {'mac': mac, 'address': iface['address'],
            'prefix': addresses[0]['prefix'],
            'mtu': _int(iface, 'mtu', 68, 65535),
            'gateway': iface.get('gateway'), 'addresses': addresses}


def validate(spec):
    """Check a network spec from the host.

    :returns: the list of interface dicts, normalized.
    :raises: ValueError
    """
    if not isinstance(spec, dict):
        raise ValueError('network must be an object')
    ifaces = spec.get('interfaces') or []
    if not isinstance(ifaces, list) or len(ifaces) > MAX_INTERFACES:
        raise ValueError('interfaces must be a list of at most %d' %
                         MAX_INTERFACES)
    out = [validate_interface(iface) for iface in ifaces]
    dns = spec.get('dns') or []
    if not isinstance(dns, list) or len(dns) > 8:
        raise ValueError('dns must be a list of at most 8 addresses')
    for server in dns:
        if not isinstance(server, str):
            raise ValueError('bad DNS server %r' % (server,))
        try:
            socket.inet_pton(socket.AF_INET6 if ':' in server
                             else socket.AF_INET, server)
        except OSError:
            raise ValueError('bad DNS server %r' % server)
    return out


def configure(spec, sys_net=SYS_NET, resolv_conf=RESOLV_CONF):
    """Configure the guest's network from the host's spec.

    :returns: {'interfaces': [{'name', 'mac', 'address'}], 'seconds': s}
    :raises: ValueError on a bad spec, OSError when the kernel refuses.
    """
    t0 = time.monotonic()
    ifaces = validate(spec)
    done = []
    with Netlink() as nl:
        loopback_up(nl)
        for iface in ifaces:
            done.append(_bring_up(nl, iface, sys_net))
    dns = spec.get('dns') or []
    if dns and resolv_conf:
        # The agent's own view; containers get theirs from create_container.
        with open(resolv_conf, 'w') as f:
            f.write(''.join('nameserver %s\n' % s for s in dns))
    return {'interfaces': done,
            'seconds': round(time.monotonic() - t0, 4)}


def loopback_up(nl=None):
    """Bring ``lo`` up (a no-op when it is: a VM template brings it up
    before it is saved, so that no clone adds its routes again).

    :param nl: an open :class:`Netlink` (default: one of its own).
    :raises: OSError when the kernel refuses.
    """
    if nl is None:
        with Netlink() as own:
            return loopback_up(own)
    nl.link_set(socket.if_nametoindex('lo'), up=True)


def _bring_up(nl, iface, sys_net):
    name = find_by_mac(iface['mac'], NIC_WAIT, sys_net)
    index = socket.if_nametoindex(name)
    nl.link_set(index, up=True, mtu=iface['mtu'])
    for entry in iface['addresses']:
        nl.addr_add(index, entry['address'], entry['prefix'])
    for entry in iface['addresses']:
        if entry['gateway']:
            nl.default_route(index, entry['gateway'])
    return {'name': name, 'mac': iface['mac'], 'address': iface['address'],
            'addresses': [e['address'] for e in iface['addresses']]}


def add_interface(iface, sys_net=SYS_NET):
    """Configure one hotplugged NIC, waiting up to :data:`NIC_WAIT`
    seconds for the kernel to probe it.

    :returns: {'name', 'mac', 'address', 'seconds'}
    :raises: ValueError on a bad spec or when no NIC shows up, OSError
        when the kernel refuses.
    """
    t0 = time.monotonic()
    iface = validate_interface(iface)
    with Netlink() as nl:
        done = _bring_up(nl, iface, sys_net)
    done['seconds'] = round(time.monotonic() - t0, 4)
    return done


def pci_address(name, sys_net=SYS_NET):
    """:returns: the PCI address ('0000:01:00.0') of interface ``name``,
    or None when it is not a PCI device (virtio-mmio).
    """
    device = os.path.realpath('%s/%s/device' % (sys_net, name))
    # virtio NICs hang off a virtioN device whose parent is the PCI one.
    for candidate in (os.path.basename(device),
                      os.path.basename(os.path.dirname(device))):
        if PCI_ADDR_RE.fullmatch(candidate):
            return candidate
    return None


def remove_interface(mac, sys_net=SYS_NET, sys_slots=SYS_SLOTS):
    """Take a NIC down and power off its hotplug slot.

    Powering the slot off from inside makes QEMU remove the device at
    once (a host-side ``device_del`` alone waits out the guest's 5 s
    attention-button delay). The link goes down first, so its routes are
    gone even when the slot cannot be powered off.

    :returns: {'name', 'slot' (None if no slot was found), 'seconds'}
    :raises: ValueError for a bad MAC; OSError when the kernel refuses.
    """
    t0 = time.monotonic()
    mac = str(mac).lower()
    if not MAC_RE.fullmatch(mac):
        raise ValueError('bad MAC address %r' % mac)
    try:
        name = find_by_mac(mac, 0, sys_net)
    except ValueError:
        return {'name': None, 'slot': None,
                'seconds': round(time.monotonic() - t0, 4)}
    with Netlink() as nl:
        nl.link_set(socket.if_nametoindex(name), up=False)
    address = pci_address(name, sys_net)
    slot = None
    if address:
        slot_address = address.rsplit('.', 1)[0]   # a slot has no function
        try:
            slots = sorted(os.listdir(sys_slots))
        except OSError:
            slots = []
        for candidate in slots[:64]:
            try:
                with open('%s/%s/address' % (sys_slots, candidate)) as f:
                    if f.read().strip() != slot_address:
                        continue
            except OSError:
                continue
            # Blocks until the slot is off (about a second under TCG).
            with open('%s/%s/power' % (sys_slots, candidate), 'w') as f:
                f.write('0')
            slot = candidate
            break
    return {'name': name, 'slot': slot,
            'seconds': round(time.monotonic() - t0, 4)}
