"""``--network bridge``: a tap per VM on a host bridge, NAT, published ports.

At start (:meth:`BridgePlugin.plug`), under the leases lock:

1. check the host (the subnet overlaps no host route or address; the
   bridge, if it exists, is a bridge with our gateway address) and the
   requested host ports (not published by another container, not bound
   by anything on the host);
2. write the lease (address, MAC, tap name, ports) -- before anything
   exists on the host for it;
3. privileged (:mod:`kata_zun.privsep.linux_net`): ensure the bridge,
   enable IPv4 forwarding, (re)create the tap on the bridge, and have
   the bridge's and the container's nftables rules applied in one
   transaction (typed arguments: the privileged side writes the rules
   and accepts only the configured bridge and subnet).

A failure in 3 removes this container's tap and rules and drops its
lease again. The tap and the rules stay while the container exists,
stopped or not (the address and the published ports stay its own);
:meth:`unplug` at ``rm`` removes the rules, then the tap, then the
lease. The bridge and its NAT rules stay (like docker0).

Crash safety: since a lease outlives everything made for it, whatever a
crash left behind belongs to a lease; :meth:`reconcile` (run before every
plug) releases the leases of containers whose record is gone, and a
re-plug replaces a container's tap and rules instead of tripping over
them.
"""

import ipaddress
import os
import re

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.network import base
from kata_zun.network import hostnet
from kata_zun.network import ipam
from kata_zun.network import ports as ports_mod
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

BRIDGE_RE = re.compile(r'^kz(?!t)[A-Za-z0-9_-]{1,13}$')


def _privileged():
    """Start the privsep daemon (before any lock) and return the module of
    privileged functions. Imported lazily: it pulls in eventlet.
    """
    try:
        from kata_zun import privsep
        from kata_zun.privsep import linux_net
        privsep.start()
    except Exception as exc:
        raise base.NetworkError(
            reason='cannot start the privileged helper: the bridge network '
            'needs root, or sudo for privsep-helper (or use --network '
            'none): %s' % exc)
    return linux_net


class BridgePlugin(base.NetworkPlugin):
    name = 'bridge'

    def __init__(self, state_dir):
        super().__init__(state_dir)
        self.bridge = CONF.kata_network.bridge
        self.subnet_text = CONF.kata_network.subnet

    # ------------------------------------------------------------ checks
    def settings(self):
        """:returns: (bridge, subnet IPv4Network, gateway str)
        :raises: NetworkError on a bad configuration.
        """
        if not BRIDGE_RE.fullmatch(self.bridge or ''):
            raise base.NetworkError(
                reason='[kata_network] bridge %r must be "kz" followed by '
                '1-13 letters, digits, "_" or "-" (not "kzt")' %
                self.bridge)
        try:
            subnet = ipaddress.IPv4Network(self.subnet_text)
        except ValueError as exc:
            raise base.NetworkError(reason='[kata_network] subnet %r: %s'
                                    % (self.subnet_text, exc))
        if not 8 <= subnet.prefixlen <= 30 or any((
                subnet.is_loopback, subnet.is_multicast,
                subnet.is_link_local, subnet.is_reserved,
                subnet.is_unspecified)):
            raise base.NetworkError(
                reason='[kata_network] subnet %s is not a usable private '
                'subnet (prefix /8 to /30, no loopback, link-local, '
                'multicast or reserved range)' % subnet)
        return self.bridge, subnet, str(subnet.network_address + 1)

    def check_host(self, bridge, subnet, gateway, table=None):
        """Refuse a subnet that collides with the host's network.

        :raises: NetworkError
        """
        found = hostnet.overlaps(subnet, ignore_dev=bridge, table=table)
        if found:
            raise base.NetworkError(
                reason='subnet %s of bridge %s overlaps %s on this host: '
                'choose another [kata_network] subnet' % (
                    subnet, bridge, ', '.join(found)))
        path = os.path.join(hostnet.SYS_NET, bridge)
        if os.path.isdir(path) and not os.path.isdir(os.path.join(path,
                                                                  'bridge')):
            raise base.NetworkError(reason='%s exists and is not a bridge'
                                    % bridge)
        mine = '%s/%d' % (gateway, subnet.prefixlen)
        other = [a for a in hostnet.link_ipv4(bridge) or [] if a != mine]
        if other:
            raise base.NetworkError(
                reason='bridge %s has address %s, not %s from '
                '[kata_network] subnet %s' % (bridge, ', '.join(other),
                                              mine, subnet))

    @staticmethod
    def check_ports(data, cid, mappings, is_known=None):
        """:raises: Conflict if another container publishes one of the host
        ports or something on the host is bound to it.
        """
        for m in mappings:
            for other_id, lease in data['leases'].items():
                if other_id == cid or (is_known and not is_known(other_id)):
                    continue
                for o in lease.get('ports') or []:
                    if ports_mod.overlap(m, o):
                        raise exception.Conflict(
                            reason='host port %s is already published by '
                            'container %s' % (ports_mod.describe_host(m),
                                              other_id[:12]))
            hostnet.check_port_free(m)

    def validate(self, request, is_known=None):
        bridge, subnet, gateway = self.settings()
        self.check_host(bridge, subnet, gateway)
        data = ipam.Ipam(self.state_dir, bridge, subnet).load()
        self.check_ports(data, None, request.get('ports') or [], is_known)

    # -------------------------------------------------------------- plug
    def plug(self, cid, hostname, request):
        bridge, subnet, gateway = self.settings()
        table = hostnet.routes()
        self.check_host(bridge, subnet, gateway, table)
        mtu = CONF.kata_network.mtu or hostnet.default_mtu(table)
        dns = list(CONF.kata_network.dns_servers) or hostnet.host_dns()
        mappings = request.get('ports') or []
        priv = _privileged()
        with ipam.locked(self.state_dir):
            leases = ipam.Ipam(self.state_dir, bridge, subnet)
            data = leases.load()
            self.check_ports(data, cid, mappings)
            lease = leases.allocate(data, cid, hostname)
            lease['ports'] = mappings
            leases.save(data)
            try:
                priv.ensure_bridge(bridge, gateway, subnet.prefixlen, mtu)
                priv.enable_ip_forward()
                priv.create_tap(lease['tap'], bridge, mtu,
                                owner=os.geteuid())
                # Typed values only: the privileged side writes the
                # rules, for the bridge and subnet it is configured with.
                priv.nat_publish(bridge, str(subnet), cid, lease['ip'],
                                 mappings)
            except Exception as exc:
                LOG.debug('network of %s failed, undoing it: %s', cid, exc)
                try:
                    self._release(priv, leases, data, cid)
                except Exception:
                    LOG.exception('undoing the network of %s', cid)
                if isinstance(exc, exception.KataZunException):
                    raise
                raise base.NetworkError(
                    reason='cannot set up the network of %s: %s' %
                    (cid[:12], exc))
        iface = {'mac': lease['mac'], 'address': lease['ip'],
                 'prefix': subnet.prefixlen, 'mtu': mtu, 'gateway': gateway}
        return {'network': self.name, 'bridge': bridge,
                'nics': [{'tap': lease['tap'], 'mac': lease['mac']}],
                'guest': {'interfaces': [iface], 'dns': dns,
                          'hostname': hostname},
                'address': lease['ip'], 'prefix': subnet.prefixlen,
                'gateway': gateway, 'mac': lease['mac'], 'mtu': mtu,
                'ports': mappings}

    @staticmethod
    def _release(priv, leases, data, cid):
        """Remove a lease's rules, then its tap, then the lease (under
        the lock).
        """
        lease = data['leases'].get(cid)
        if lease is None:
            return False
        errors = []
        for step, args in ((priv.nat_unpublish, (leases.bridge, cid)),
                           (priv.delete_link, (lease['tap'],))):
            try:
                step(*args)
            except Exception as exc:
                errors.append(exc)
        if errors:
            # The lease stays: it records what may still exist, and the
            # next unplug or reconciliation tries again.
            raise errors[0]
        leases.release(data, cid)
        leases.save(data)
        return True

    # ------------------------------------------------- unplug, reconcile
    def _leases_of(self, wanted):
        """:returns: {lease file: [cid, ...]} for which wanted(cid) holds
        (read without the lock: the files are replaced atomically).
        """
        found = {}
        for path in ipam.lease_files(self.state_dir):
            try:
                data = fileutils.read_json(path)
            except (OSError, ValueError) as exc:
                LOG.warning('ignoring unreadable lease file %s: %s', path,
                            exc)
                continue
            cids = [c for c in data.get('leases', {}) if wanted(c)]
            if cids:
                found[path] = cids
        return found

    def _release_all(self, found, still):
        """:returns: (released ids, {id: error})"""
        priv = _privileged()
        done, failed = [], {}
        with ipam.locked(self.state_dir):
            for path in found:
                leases = ipam.Ipam.from_file(path)
                data = fileutils.read_json(path)
                for cid in list(data.get('leases', {})):
                    if not still(cid):
                        continue
                    try:
                        self._release(priv, leases, data, cid)
                        done.append(cid)
                    except Exception as exc:
                        failed[cid] = exc
        return done, failed

    def unplug(self, cid):
        found = self._leases_of(lambda c: c == cid)
        if not found:
            return False
        done, failed = self._release_all(found, lambda c: c == cid)
        if failed:
            raise base.NetworkError(
                reason='cannot remove the network of %s (its lease is '
                'kept, try again): %s' % (cid[:12], failed[cid]))
        return bool(done)

    def reconcile(self, is_known):
        def stale(cid):
            return not is_known(cid)
        found = self._leases_of(stale)
        if not found:
            return []
        done, failed = self._release_all(found, stale)
        for cid, exc in failed.items():
            # Best effort: the lease stays and the next start retries.
            LOG.warning('cannot release the network of removed container '
                        '%s: %s', cid, exc)
        if done:
            LOG.debug('released the network of %d removed '
                      'container(s): %s', len(done),
                      ', '.join(c[:12] for c in done))
        return done
