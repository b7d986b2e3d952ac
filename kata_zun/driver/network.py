"""Networks for KataDriver: Neutron ports plugged into the VM.

zun-compute asks the driver for the container's ports; each becomes a
tap and a virtio-net NIC of the container's VM (hotplugged on
``network_attach``), with security groups on the ports as for Docker.
"""

import ipaddress

from oslo_log import log as logging
from zun.common import consts
from zun.common import exception as zun_exc

from kata_zun import conf
from kata_zun.driver import common
from kata_zun.driver.common import wrap as _wrap
from kata_zun.runtime import faultpoint
from kata_zun.runtime import record

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class NetworkDriverMixin(object):
    """KataDriver's network calls."""

    DEVICE_OWNER = 'compute:zun'

    @staticmethod
    def _neutron(context):
        from zun.network import neutron as zun_neutron
        return zun_neutron.NeutronAPI(context)

    def _setup_network(self, context, container, requested_networks,
                       persist=False):
        """Make (or take) a Neutron port per requested network, as zun's
        own drivers do.

        :param persist: save each port into ``container.addresses`` as
            soon as Neutron made it (see :meth:`_persist_addresses`).
        :returns: (Zun addresses, the runtime's network request or None)
        """
        if not requested_networks or \
                CONF.kata_network.zun_network != 'neutron':
            return {}, None
        api = self._neutron(context)
        self._expose_ports(api, container)
        from zun.common import utils as zun_utils
        sg_ids = zun_utils.get_security_group_ids(
            context, container.security_groups)
        if not container.host:
            container.host = CONF.host
        addresses, nics = {}, []
        before = dict(container.addresses or {})
        try:
            for requested in requested_networks:
                net_id = requested['network']
                if net_id in addresses:
                    continue
                addrs, port = api.create_or_update_port(
                    container, net_id, requested, self.DEVICE_OWNER,
                    security_groups=sg_ids, set_binding_host=True)
                addresses[net_id] = addrs
                if persist:
                    self._persist_addresses(context, container,
                                            {**before, **addresses})
                nics.append(self._nic(api, container, port))
        except BaseException:
            self._release_network(context, container, addresses)
            if persist:
                self._persist_addresses(context, container, before)
            raise
        return addresses, {'network': 'neutron', 'nics': nics}

    @staticmethod
    def _persist_addresses(context, container, addresses):
        """Save ``container.addresses`` now: zun's record names every
        port Neutron made for the container before anything else is done
        with it, so a zun-compute that dies from then on (the fault
        matrix: killed in a network attach or a create) leaves ports that
        the container's delete releases, not ports nobody knows of.
        A failed save is logged: the caller's own error goes on.
        """
        container.addresses = addresses
        try:
            container.save(context)
        except Exception:
            LOG.exception('saving the Neutron ports of %s',
                          container.uuid)

    def _nic(self, api, container, port):
        """What the host and the guest need of a bound port."""
        vif_type = port.get('binding:vif_type')
        details = port.get('binding:vif_details') or {}
        if vif_type != 'ovs':
            raise zun_exc.ZunException(
                'Neutron port %s is bound as %r on host %s: the kata '
                'driver plugs Open vSwitch ports only (is the OVS agent '
                'of this host alive?)' % (port['id'], vif_type,
                                          container.host))
        if details.get('ovs_hybrid_plug'):
            raise zun_exc.ZunException(
                'Neutron port %s wants hybrid plugging (iptables_hybrid '
                'firewall); the kata driver needs the OVS agent\'s '
                'openvswitch (or noop) firewall driver' % port['id'])
        network = api.show_network(port['network_id'])['network']
        ips, dns = [], []
        for fixed in port.get('fixed_ips') or []:
            subnet = api.show_subnet(fixed['subnet_id'])['subnet']
            ips.append({
                'address': fixed['ip_address'],
                'prefix': ipaddress.ip_network(subnet['cidr']).prefixlen,
                'gateway': subnet.get('gateway_ip'),
                'version': subnet.get('ip_version', 4),
                'subnet_id': fixed['subnet_id']})
            dns += [d for d in subnet.get('dns_nameservers') or []
                    if d not in dns]
        return {'port_id': port['id'], 'net_id': port['network_id'],
                'mac': port['mac_address'],
                'mtu': int(network.get('mtu') or 1500),
                'bridge': (details.get('bridge_name') or
                           CONF.kata_network.integration_bridge),
                'datapath_type': details.get('datapath_type') or 'system',
                'device_id': container.uuid, 'ips': ips, 'dns': dns}

    def _expose_ports(self, api, container):
        """``--expose-port``: a security group of the container's own
        (named like zun's docker driver names it) allowing those ports in
        from anywhere, added to the container's groups.
        """
        exposed = container.exposed_ports or {}
        if not exposed:
            return
        name = consts.NAME_PREFIX + container.uuid
        group = api.create_security_group(
            {'security_group': {'name': name}})['security_group']
        api.expose_ports(group['id'], exposed)
        container.security_groups = list(container.security_groups or
                                         []) + [group['id']]

    def _release_network(self, context, container, addresses,
                         exposed=True):
        """Delete the ports the driver made, unbind the user's (they are
        ``preserve_on_delete``), delete the exposed ports' group (unless
        ``exposed`` is False). Ports already gone are no error.
        """
        if CONF.kata_network.zun_network != 'neutron':
            return
        exposed = exposed and container.exposed_ports
        if not addresses and not exposed:
            return
        api = self._neutron(context)
        ports, delete = set(), set()
        for addrs in (addresses or {}).values():
            for addr in addrs:
                ports.add(addr['port'])
                if not addr.get('preserve_on_delete'):
                    delete.add(addr['port'])
        if ports:
            api.delete_or_unbind_ports(ports, delete)
        if exposed:
            from neutronclient.common import exceptions as n_exc
            name = consts.NAME_PREFIX + container.uuid
            try:
                for group in api.list_security_groups(name=name).get(
                        'security_groups', []):
                    api.delete_security_group(group['id'])
            except n_exc.NeutronClientException as exc:
                LOG.warning('deleting security group %s: %s', name, exc)

    def _port_ids(self, container):
        return sorted({addr['port'] for addrs in
                       (container.addresses or {}).values()
                       for addr in addrs})

    def _update_security_groups(self, context, container, change):
        from neutronclient.common import exceptions as n_exc
        api = self._neutron(context)
        for port_id in self._port_ids(container):
            port = api.show_port(port_id)['port']
            groups = change(list(port.get('security_groups') or []))
            try:
                api.update_port(port_id, {'port': {
                    'security_groups': groups}}, admin=True)
            except n_exc.NeutronClientException as exc:
                if exc.status_code == 400:
                    raise common.zun_error(
                        zun_exc.SecurityGroupCannotBeApplied, exc)
                raise

    def add_security_group(self, context, container, security_group):
        """Add a group (zun-api passes its id) to every port."""
        self._update_security_groups(
            context, container,
            lambda groups: groups + [security_group]
            if security_group not in groups else groups)

    def remove_security_group(self, context, container, security_group):
        """Remove a group (zun-api passes its id) from every port."""
        self._update_security_groups(
            context, container,
            lambda groups: [g for g in groups if g != security_group])

    def _runtime_request(self, container):
        """The runtime's network request for ``container.addresses``."""
        c = self.rt.get(container.container_id)
        return c, c.config.get('network') or {}

    @_wrap
    def network_attach(self, context, container, requested_network):
        """Attach a Neutron network to a container.

        The port is made (or taken) now. A running container gets the NIC
        hotplugged into its micro-VM and configured by the agent at once;
        a created or stopped one gets it at its next start. A paused one
        is refused (its guest cannot take the NIC).
        """
        # The fault matrix (tools/fault-matrix-zun.py) kills here.
        faultpoint.reached('zun-network-attach')
        net_id = requested_network['network']
        if net_id in (container.addresses or {}):
            raise zun_exc.ZunException(
                'Container %s has already connected to the network %s.' %
                (container.uuid, net_id))
        if CONF.kata_network.zun_network != 'neutron':
            raise zun_exc.Invalid('[kata_network] zun_network is "none" on '
                                  'host %s: no Neutron ports' % CONF.host)
        c, request = self._runtime_request(container)
        self._check_not_paused(c)
        before = dict(container.addresses or {})
        addresses, new = self._setup_network(context, container,
                                             [requested_network],
                                             persist=True)
        nics = [n for n in request.get('nics') or []] + new['nics']
        try:
            self.rt.set_network(c.id, {'network': 'neutron', 'nics': nics})
        except BaseException:
            self._release_network(context, container, addresses)
            self._persist_addresses(context, container, before)
            raise
        container.addresses = {**before, **addresses}
        container.save(context)

    @_wrap
    def network_detach(self, context, container, network):
        """Detach a Neutron network from a container: a running one loses
        the NIC at once (hot-unplugged), a stopped one at its next start;
        its ports are deleted (or unbound, when they were the user's).
        """
        c, request = self._runtime_request(container)
        self._check_not_paused(c)
        nics = [n for n in request.get('nics') or []
                if n.get('net_id') != network]
        # No NIC left is still a Neutron request: the VM keeps its
        # hotplug slots for the next attach.
        self.rt.set_network(c.id, {'network': 'neutron', 'nics': nics})
        addresses = dict(container.addresses or {})
        gone = {network: addresses.pop(network, [])}
        self._release_network(context, container, gone, exposed=False)
        container.addresses = addresses
        container.save(context)

    @staticmethod
    def _check_not_paused(c):
        if c.status == record.PAUSED:
            raise zun_exc.Conflict(
                'container %s is paused: its guest cannot take or give up '
                'a NIC; unpause it first' % c.id[:12])
