"""Privileged network operations: bridges, taps, nftables, sysctls.

Every function here runs in the privsep daemon (CAP_NET_ADMIN) and
validates its arguments there, whatever the caller checked before:

* links: only names kata-zun makes are touched: taps ``kzt`` + 12 hex
  digits, bridges ``kz`` + up to 13 more characters (not tap-shaped);
* nftables: only table ``inet kata_zun``, only the few statement shapes
  :mod:`kata_zun.network.nftrules` writes, every added rule carrying a
  ``kz:``/``kz-br:`` comment tag so it can be removed exactly;
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
import kata_zun.privsep
from kata_zun.privsep import libnft

TAP_RE = re.compile(r'^kzt[0-9a-f]{12}$')
BRIDGE_RE = re.compile(r'^kz(?!t)[A-Za-z0-9_-]{1,13}$')
TAG_RE = re.compile(r'^kz(-br)?:[A-Za-z0-9_.:-]{1,100}$')
NFT_FAMILY = 'inet'
NFT_TABLE = 'kata_zun'
CHAINS = ('prerouting', 'output', 'postrouting')
MAX_RULESET = 256 * 1024
SYS_NET = '/sys/class/net'
PROC_NET = '/proc/sys/net/ipv4'
TUN_DEVICE = '/dev/net/tun'
TUNSETIFF = 0x400454ca
TUNSETPERSIST = 0x400454cb
TUNSETOWNER = 0x400454cc
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

_TABLE = '%s %s' % (NFT_FAMILY, NFT_TABLE)
_LINE_RES = (
    re.compile(r'^add table %s$' % _TABLE),
    re.compile(r'^add chain %s (%s) \{ type (nat|filter) hook '
               r'(prerouting|output|postrouting) priority -?\d{1,3}; '
               r'policy accept; \}$' % (_TABLE, '|'.join(CHAINS))),
    re.compile(r'^add rule %s (%s) [A-Za-z0-9 .:/!=,"_-]{1,400} '
               r'comment "kz(-br)?:[A-Za-z0-9_.:-]{1,100}"$'
               % (_TABLE, '|'.join(CHAINS))),
)


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


def check_ruleset(text):
    """:returns: the lines of a ruleset we agree to apply.
    :raises: ValueError on anything else.
    """
    if not isinstance(text, str) or len(text) > MAX_RULESET:
        raise ValueError('ruleset must be a string of at most %d bytes' %
                         MAX_RULESET)
    lines = [line.strip() for line in text.split('\n') if line.strip()]
    for line in lines:
        if not any(r.fullmatch(line) for r in _LINE_RES):
            raise ValueError('refusing nft statement %r' % line[:200])
    return lines


def check_tags(tags):
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)) or \
            len(tags) > 64:
        raise ValueError('tags must be a list')
    for tag in tags:
        if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
            raise ValueError('refusing rule tag %r' % (tag,))
    return set(tags)


def _exists(name):
    return os.path.isdir(os.path.join(SYS_NET, name))


def _write(path, value):
    with open(path, 'w') as f:
        f.write(value)


# ------------------------------------------------------------ entrypoints

@kata_zun.privsep.sys_admin_pctxt.entrypoint
def ensure_bridge(name, address, prefix, mtu):
    """Create bridge ``name`` unless it exists; give it ``address/prefix``
    and ``mtu``, bring it up, allow 127/8 sources out of it
    (route_localnet: published ports reached through the host's loopback).

    :raises: ValueError on a bad argument or a non-bridge ``name``;
             OSError from the kernel.
    """
    check_bridge_name(name)
    address = check_gateway(address, prefix)
    _check_int(mtu, 'mtu', 68, 65535)
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
    """(Re)create persistent tap ``name`` on ``bridge``, up, hairpin on.

    With ``bridge`` None the tap is on no Linux bridge (Zun mode: it is
    added to Open vSwitch afterwards, see kata_zun.network.neutron).

    An existing link of that name (a leftover of a crash) is replaced.
    ``owner`` (a uid) may open it without privileges (QEMU as a user).

    :raises: ValueError, OSError; a half-made tap is removed again.
    """
    check_tap_name(name)
    if bridge is not None:
        check_bridge_name(bridge)
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
    """Delete a tap or bridge of ours; :returns: False if it was gone."""
    check_link_name(name)
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
def nft_apply(ruleset_text, replace_tags=()):
    """Apply statements to table inet kata_zun in one transaction.

    Rules tagged with one of ``replace_tags`` (their comment) are deleted
    in the same transaction first, so a re-apply replaces instead of
    duplicating, and a crash never leaves half a change.

    :returns: the number of rules deleted.
    :raises: ValueError for a refused statement or tag; NftError when
             nftables rejects the batch.
    """
    lines = check_ruleset(ruleset_text)
    tags = check_tags(list(replace_tags))
    deletes = []
    if tags:
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


@kata_zun.privsep.sys_admin_pctxt.entrypoint
def nft_rules():
    """:returns: [[chain, handle, comment]] of table inet kata_zun."""
    return [list(r) for r in libnft.list_rules(NFT_FAMILY, NFT_TABLE)]
