"""Privileged network operations: bridges, taps, nftables, sysctls.

Every function here runs in the privsep daemon (CAP_NET_ADMIN) and
validates its arguments there, whatever the caller checked before:

* links: only names kata-zun makes are touched: taps ``kzt`` + 12 hex
  digits and the one bridge configured in ``[kata_network] bridge``;
* nftables: no rule text crosses the privsep boundary. The caller asks
  for typed operations (:func:`nat_publish`, :func:`nat_unpublish`) and
  the rules are written here (:mod:`kata_zun.network.nftrules`) from
  validated values: only table ``inet kata_zun``, only the configured
  bridge and subnet (``[kata_network]``, read by this daemon from the
  same configuration as its caller), DNAT only to a guest address of
  that subnet, every rule carrying a ``kz:``/``kz-br:`` comment tag so
  it can be removed exactly;
* sysctls: ip_forward and the bridge's route_localnet, the taps'
  hairpin mode.

Nothing is executed: netlink and libnftables are used in-process.
"""

import fcntl
import ipaddress
import os
import re
import socket
import struct

from kata_zun.agent import guestnet
from kata_zun import conf
from kata_zun.network import nftrules
from kata_zun.network import ports as ports_mod
import kata_zun.privsep
from kata_zun.privsep import libnft

TAP_RE = re.compile(r'^kzt[0-9a-f]{12}$')
BRIDGE_RE = re.compile(r'^kz(?!t)[A-Za-z0-9_-]{1,13}$')
CID_RE = re.compile(r'^(?:[0-9a-f]{32}|[0-9a-f]{64})$')
NFT_FAMILY = 'inet'
NFT_TABLE = 'kata_zun'
MAX_MAPPINGS = 256
SYS_NET = '/sys/class/net'
PROC_NET = '/proc/sys/net/ipv4'
TUN_DEVICE = '/dev/net/tun'
TUNSETIFF = 0x400454ca
TUNSETPERSIST = 0x400454cb
TUNSETOWNER = 0x400454cc
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

_TABLE = '%s %s' % (NFT_FAMILY, NFT_TABLE)
_MAPPING_KEYS = frozenset(('proto', 'host_ip', 'host_port',
                           'container_port'))


def check_tap_name(name):
    if not isinstance(name, str) or not TAP_RE.fullmatch(name):
        raise ValueError('refusing tap name %r (want kzt + 12 hex digits)'
                         % (name,))
    return name


def check_bridge_name(name):
    if (not isinstance(name, str) or not BRIDGE_RE.fullmatch(name) or
            TAP_RE.fullmatch(name)):
        raise ValueError('refusing bridge name %r (want kz + 1-13 of '
                         '[A-Za-z0-9_-], not tap-shaped)' % (name,))
    return name


def check_link_name(name):
    if isinstance(name, str) and TAP_RE.fullmatch(name):
        return name
    return check_bridge_name(name)


def _check_int(value, what, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or \
            not low <= value <= high:
        raise ValueError('%s must be an integer in [%d, %d]' %
                         (what, low, high))
    return value


def check_gateway(address, prefix):
    _check_int(prefix, 'prefix', 8, 30)
    try:
        iface = ipaddress.IPv4Interface('%s/%d' % (address, prefix))
    except (ValueError, TypeError):
        raise ValueError('bad bridge address %r' % (address,))
    ip = iface.ip
    if (ip.is_loopback or ip.is_multicast or ip.is_link_local or
            ip.is_unspecified or ip.is_reserved or
            ip in (iface.network.network_address,
                   iface.network.broadcast_address)):
        raise ValueError('refusing bridge address %s' % iface)
    return str(ip)


def configured():
    """:returns: (bridge name, IPv4Network) of ``[kata_network]``, as this
    daemon reads them (the caller's configuration files).

    :raises: ValueError when they are unusable.
    """
    opts = conf.CONF.kata_network
    bridge = check_bridge_name(opts.bridge)
    try:
        subnet = ipaddress.IPv4Network(opts.subnet)
    except (ValueError, TypeError):
        raise ValueError('[kata_network] subnet %r is not an IPv4 subnet'
                         % (opts.subnet,))
    _check_int(subnet.prefixlen, 'subnet prefix', 8, 30)
    return bridge, subnet


def check_our_bridge(name):
    """:raises: ValueError unless ``name`` is the configured bridge."""
    check_bridge_name(name)
    bridge, _subnet = configured()
    if name != bridge:
        raise ValueError('refusing bridge %s: the configured [kata_network] '
                         'bridge is %s' % (name, bridge))
    return name


def check_our_subnet(text):
    """:returns: the configured subnet if ``text`` names it.

    :raises: ValueError otherwise.
    """
    _bridge, subnet = configured()
    try:
        asked = ipaddress.IPv4Network(text)
    except (ValueError, TypeError):
        raise ValueError('bad subnet %r' % (text,))
    if asked != subnet:
        raise ValueError('refusing subnet %s: the configured [kata_network] '
                         'subnet is %s' % (asked, subnet))
    return subnet


def _gateway(subnet):
    return subnet.network_address + 1


def check_guest_ip(address, subnet):
    """:returns: ``address`` if it can be a guest's on ``subnet`` (not the
    network, broadcast or bridge address).

    :raises: ValueError
    """
    try:
        ip = ipaddress.IPv4Address(address)
    except (ValueError, TypeError):
        raise ValueError('bad guest address %r' % (address,))
    if ip not in subnet or ip in (subnet.network_address,
                                  subnet.broadcast_address,
                                  _gateway(subnet)):
        raise ValueError('refusing guest address %s: not a guest address '
                         'of subnet %s' % (ip, subnet))
    return str(ip)


def check_mapping(mapping, subnet):
    """:returns: a published port as a fresh dict of checked values.

    :raises: ValueError
    """
    if not isinstance(mapping, dict) or set(mapping) != _MAPPING_KEYS:
        raise ValueError('a port mapping is a dict of exactly %s' %
                         ', '.join(sorted(_MAPPING_KEYS)))
    proto = mapping['proto']
    if proto not in ports_mod.PROTOCOLS:
        raise ValueError('refusing protocol %r' % (proto,))
    host_ip = mapping['host_ip']
    try:
        ip = ipaddress.IPv4Address(host_ip)
    except (ValueError, TypeError):
        raise ValueError('bad host address %r' % (host_ip,))
    if str(ip) != ports_mod.ANY and (
            ip.is_multicast or ip.is_reserved or ip.is_unspecified or
            (ip in subnet and ip != _gateway(subnet))):
        # A guest's own address would let one container take another's
        # traffic.
        raise ValueError('refusing host address %s' % ip)
    return {'proto': proto, 'host_ip': str(ip),
            'host_port': _check_int(mapping['host_port'], 'host port', 1,
                                    65535),
            'container_port': _check_int(mapping['container_port'],
                                         'container port', 1, 65535)}


def check_cid(cid):
    if not isinstance(cid, str) or not CID_RE.fullmatch(cid):
        raise ValueError('refusing container id %r (want 32 or 64 hex '
                         'digits)' % (cid,))
    return cid


def _replace_rules(tags, lines):
    """Delete the rules of table inet kata_zun whose comment is one of
    ``tags`` and run ``lines``, in one transaction (a re-apply replaces
    instead of duplicating, and a crash never leaves half a change).

    :returns: the number of rules deleted.
    """
    deletes = ['delete rule %s %s handle %d' % (_TABLE, chain, handle)
               for chain, handle, comment in
               libnft.list_rules(NFT_FAMILY, NFT_TABLE)
               if comment in tags]
    batch = deletes + lines
    if batch:
        rc, _out, err = libnft.run('\n'.join(batch) + '\n')
        if rc != 0:
            raise libnft.NftError(err.strip() or 'nft failed')
    return len(deletes)


def _exists(name):
    return os.path.isdir(os.path.join(SYS_NET, name))


def _write(path, value):
    with open(path, 'w') as f:
        f.write(value)


# ------------------------------------------------------------ entrypoints

@kata_zun.privsep.sys_admin_pctxt.entrypoint
def ensure_bridge(name, address, prefix, mtu):
    """Create bridge ``name`` (the configured one) unless it exists; give
    it ``address/prefix`` (the first address of the configured subnet)
    and ``mtu``, bring it up, allow 127/8 sources out of it
    (route_localnet: published ports reached through the host's loopback).

    :raises: ValueError on a bad argument or a non-bridge ``name``;
             OSError from the kernel.
    """
    check_our_bridge(name)
    address = check_gateway(address, prefix)
    _check_int(mtu, 'mtu', 68, 65535)
    _bridge, subnet = configured()
    if (address, prefix) != (str(_gateway(subnet)), subnet.prefixlen):
        raise ValueError('refusing bridge address %s/%s: the configured '
                         '[kata_network] subnet %s has gateway %s' % (
                             address, prefix, subnet, _gateway(subnet)))
    exists = _exists(name)
    if exists and not os.path.isdir(os.path.join(SYS_NET, name, 'bridge')):
        raise ValueError('%s exists and is not a bridge' % name)
    with guestnet.Netlink() as nl:
        if not exists:
            nl.link_add(name, 'bridge', mtu)
        index = socket.if_nametoindex(name)
        nl.link_set(index, up=True, mtu=mtu)
        nl.addr_add(index, address, prefix)
    _write(os.path.join(PROC_NET, 'conf', name, 'route_localnet'), '1')
    return not exists


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def create_tap(name, bridge, mtu, owner=None):
    """(Re)create persistent tap ``name`` on ``bridge`` (the configured
    one), up, hairpin on.

    With ``bridge`` None the tap is on no Linux bridge (Zun mode: it is
    added to Open vSwitch afterwards, see kata_zun.network.neutron).

    An existing link of that name (a leftover of a crash) is replaced.
    ``owner`` (a uid) may open it without privileges (QEMU as a user).

    :raises: ValueError, OSError; a half-made tap is removed again.
    """
    check_tap_name(name)
    if bridge is not None:
        check_our_bridge(bridge)
    _check_int(mtu, 'mtu', 68, 65535)
    if owner is not None:
        _check_int(owner, 'owner', 0, 2 ** 31 - 1)
    if bridge is not None and not os.path.isdir(
            os.path.join(SYS_NET, bridge, 'bridge')):
        raise ValueError('bridge %s does not exist' % bridge)
    with guestnet.Netlink() as nl:
        if _exists(name):
            nl.link_del(socket.if_nametoindex(name))
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack(
                '16sH22x', name.encode(), IFF_TAP | IFF_NO_PI))
            if owner is not None:
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)
        try:
            if bridge is None:
                nl.link_set(socket.if_nametoindex(name), up=True, mtu=mtu)
                return
            nl.link_set(socket.if_nametoindex(name), up=True, mtu=mtu,
                        master=socket.if_nametoindex(bridge))
            # Lets a container reach its own published port through the
            # host (the frame goes back out of the port it came in by).
            _write(os.path.join(SYS_NET, name, 'brport', 'hairpin_mode'),
                   '1')
        except BaseException:
            try:
                nl.link_del(socket.if_nametoindex(name))
            except OSError:
                pass
            raise


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def delete_link(name):
    """Delete a tap of ours or the configured bridge.

    :returns: False if it was gone.
    """
    if not (isinstance(name, str) and TAP_RE.fullmatch(name)):
        check_our_bridge(name)
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return False
    with guestnet.Netlink() as nl:
        try:
            nl.link_del(index)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == 19:            # ENODEV: gone meanwhile
                return False
            raise
    return True


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def enable_ip_forward():
    """Route between the bridge and the host's other interfaces."""
    path = os.path.join(PROC_NET, 'ip_forward')
    with open(path) as f:
        if f.read().strip() == '1':
            return False
    _write(path, '1')
    return True


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def nat_publish(bridge, subnet, cid, guest_ip, mappings):
    """NAT of the configured bridge and the published ports of one
    container, (re)applied in one transaction.

    Table inet kata_zun and its base chains are made if missing; the
    bridge's masquerade rules and the container's DNAT rules replace
    those it had.

    :param bridge: the configured ``[kata_network] bridge``.
    :param subnet: the configured ``[kata_network] subnet`` (text).
    :param cid: the container id (32 or 64 hex digits).
    :param guest_ip: the container's address in ``subnet``.
    :param mappings: at most MAX_MAPPINGS dicts of exactly ``proto``
        (tcp, udp), ``host_ip`` (IPv4; 0.0.0.0 is every local address),
        ``host_port``, ``container_port`` (1-65535).
    :returns: the number of rules replaced.
    :raises: ValueError for a refused argument (nothing is changed);
             NftError when nftables rejects the batch.
    """
    check_our_bridge(bridge)
    net = check_our_subnet(subnet)
    check_cid(cid)
    guest_ip = check_guest_ip(guest_ip, net)
    if not isinstance(mappings, (list, tuple)) or \
            len(mappings) > MAX_MAPPINGS:
        raise ValueError('mappings must be a list of at most %d' %
                         MAX_MAPPINGS)
    checked = [check_mapping(m, net) for m in mappings]
    lines = (nftrules.base_ruleset() +
             nftrules.bridge_rules(bridge, str(net)) +
             nftrules.port_rules(bridge, cid, guest_ip, checked))
    return _replace_rules({nftrules.bridge_tag(bridge),
                           nftrules.container_tag(bridge, cid)}, lines)


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def nat_unpublish(bridge, cid):
    """Remove the published ports of container ``cid`` on ``bridge``.

    ``bridge`` may be a bridge that is no longer the configured one (a
    lease from before a configuration change): this only deletes rules
    of our own table that carry exactly that container's tag.

    :returns: the number of rules deleted.
    :raises: ValueError, NftError
    """
    check_bridge_name(bridge)
    check_cid(cid)
    return _replace_rules({nftrules.container_tag(bridge, cid)}, [])


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def nft_rules():
    """:returns: [[chain, handle, comment]] of table inet kata_zun."""
    return [list(r) for r in libnft.list_rules(NFT_FAMILY, NFT_TABLE)]
