"""The networks of containers: plugged at start, changed while running.

What a network is (taps, bridges, Neutron ports, leases, rules) belongs
to :mod:`kata_zun.network`; this mixin of
:class:`kata_zun.runtime.manager.Runtime` ties it to container records:
when a container's network is made and released, and how a running
VM's NICs are hotplugged so that its record always names exactly the
NICs the VM has.
"""

import os

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.runtime import record

LOG = logging.getLogger(__name__)
CONF = conf.CONF


class NetworkMixin(object):
    """Network operations of :class:`kata_zun.runtime.manager.Runtime`."""

    def _plug_network(self, c):
        """Make the network before the VM boots (tap, lease, rules); it
        stays the container's, stopped or not, until rm.
        """
        request = c.config.get('network')
        if request is None:
            return None                # a record from before networking
        from kata_zun import network
        return network.plug(self.state_path, c.dir, c.id,
                            c.config['sandbox']['hostname'], request,
                            self._record_exists)

    def _unplug_network(self, c, force):
        from kata_zun import network
        try:
            network.unplug(self.state_path, c.id)
        except Exception as exc:
            if not force:
                raise
            # The lease stays: the next start's reconciliation retries,
            # or zun-compute's periodic sync (release_orphan_networks).
            LOG.warning('removing the network of %s: %s', c.id, exc)

    def release_orphan_networks(self):
        """Release what networks still hold for removed containers (taps,
        OVS ports, leases, rules whose removal failed and was "kept for a
        retry"). Each start does it before it plugs; zun-compute's
        periodic sync does it too, so that a failed release does not wait
        for the host's next start.

        :returns: the container ids cleaned up.
        """
        from kata_zun import network
        return network.reconcile(self.state_path, self._record_exists)

    def release_network(self, cid):
        """Release the network of a container whose shim removed its
        record (``--rm``): nothing else would before the next start.
        """
        if not self._record_exists(cid):
            from kata_zun import network
            network.unplug(self.state_path, cid)

    def set_network(self, ref, network):
        """Replace the network request of a container (Zun's network
        attach/detach).

        A container that does not run just gets the new request (its NICs
        are made at the next start; what the last start plugged is
        released now). A running one with Neutron networks gets its NICs
        hotplugged and unplugged now (:meth:`_change_network_live`).

        :param network: as :meth:`create` takes it.
        :returns: the :class:`Container`.
        :raises: Conflict (paused, or NICs fixed while it runs);
                 InvalidInput; NetworkError; ShimError
        """
        from kata_zun import network as network_mod
        request = network_mod.make_request(network or 'none', ())
        network_mod.validate(self.state_path, request, self._record_exists)
        lock = self._lock()
        try:
            c = self.get(ref)
            if c.status in record.LIVE or c.shim_alive:
                self._change_network_live(c, request)
                return self._load(c.id)
            config = c.config
            config['network'] = request
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
        finally:
            os.close(lock)
        network_mod.unplug(self.state_path, c.id)
        try:
            os.unlink(os.path.join(c.dir, network_mod.ATTACHMENT))
        except FileNotFoundError:
            pass
        return self._load(c.id)

    def _change_network_live(self, c, request):
        """Hotplug the NICs ``request`` adds, unplug those it drops.

        Removals go first (a slot freed can take an added NIC). Each step
        is recorded as it completes (config.json and network.json name
        exactly the NICs the VM has), so a failure half-way leaves a
        consistent container: what was done stays done, what failed is
        undone.
        """
        from kata_zun import network as network_mod
        if c.status == record.PAUSED:
            raise exception.Conflict(
                reason='container %s is paused: unpause it to change its '
                'networks' % c.id[:12])
        config = c.config
        current = config.get('network') or {}
        added, removed = network_mod.plan_change(
            current, request, network_mod.read_attachment(c.dir))
        hostname = config['sandbox']['hostname']
        timeout = CONF.kata_agent.request_timeout
        nics = list(current.get('nics') or [])

        def save():
            config['network'] = dict(request, nics=list(nics))
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
            network_mod.write_attachment(c.dir, hostname, config['network'])

        from kata_zun.network import neutron
        before = {i['mac']: i for i in network_mod.guest_interfaces(
            hostname, current.get('nics') or [])}
        with self.connect(c) as client:
            for nic in removed:
                client.call('nic_remove', {
                    'tap': neutron.tap_name(nic['port_id']),
                    'mac': nic['mac']}, timeout=timeout)
                nics = [n for n in nics if n['port_id'] != nic['port_id']]
                save()
                network_mod.unplug_nic(self.state_path, c.id, nic)
            for nic in added:
                network_mod.plug_nic(self.state_path, c.id, nic)
                tap = neutron.tap_name(nic['port_id'])
                try:
                    client.call('nic_add', {
                        'tap': tap, 'mac': nic['mac'],
                        'checksum_offload': neutron.checksum_offload(nic),
                        'interface': network_mod.guest_interface(
                            hostname, nics + [nic], nic)}, timeout=timeout)
                except BaseException:
                    network_mod.unplug_nic(self.state_path, c.id, nic)
                    raise
                nics.append(nic)
                save()
            # A NIC that kept its place but not its role (it now carries
            # the default route the detached NIC had) is configured again
            # (idempotent in the agent).
            added_macs = {n['mac'].lower() for n in added}
            for iface in network_mod.guest_interfaces(hostname, nics):
                if iface['mac'] not in added_macs and \
                        before.get(iface['mac']) not in (None, iface):
                    client.call('nic_configure', {'interface': iface},
                                timeout=timeout)
        LOG.info('container %s: NICs added %s, removed %s', c.id[:12],
                 [n['port_id'] for n in added],
                 [n['port_id'] for n in removed])
