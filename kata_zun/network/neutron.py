"""Zun mode: Neutron ports wired into Open vSwitch, one tap per port.

The Zun driver (:mod:`kata_zun.driver`) makes or takes the Neutron ports
at create time (device_owner ``compute:zun``, bound to this host) and
stores what the host needs in the container's network request::

    {'network': 'neutron', 'ports': [],
     'nics': [{'port_id': UUID, 'net_id': UUID, 'mac': 'fa:16:3e:..',
               'mtu': 1450, 'bridge': 'br-int', 'datapath_type': 'system',
               'device_id': container uuid,
               'ips': [{'address': '10.0.0.5', 'prefix': 24,
                        'gateway': '10.0.0.1', 'version': 4}],
               'dns': ['10.0.0.2']}]}

At start, :meth:`NeutronPlugin.plug` does for every NIC what os-vif's
``ovs`` plugin does for a Nova instance, so the ML2/OVS agent wires the
port and Neutron marks it ACTIVE:

1. write the record (``<state>/network/neutron/<cid>.json``): whatever
   exists for the container afterwards is named in it;
2. privileged (:mod:`kata_zun.privsep.linux_net`): (re)create the
   persistent tap ``kzt`` + 12 hex digits of the port id, owned by this
   uid (QEMU opens it), with the network's MTU;
3. os-vif's OVS plugin (``VIFOpenVSwitch`` with ``create_port``): add the
   tap to the port's integration bridge
   (``binding:vif_details['bridge_name']``) with the external ids the
   agent looks for (``iface-id``, ``iface-status``, ``attached-mac``,
   ``vm-uuid``). Its OVSDB is ``[kata_network] ovsdb_connection``.

:meth:`unplug` (container removal) deletes the OVS ports and the taps and
drops the record; :meth:`reconcile` does it for records of containers
that are gone. The Neutron ports themselves belong to the driver.

The guest gets the port's MAC, its IPv4 and IPv6 fixed IPs, the
subnets' gateways as default routes (per address family, on the first NIC
that has one), the network's MTU and the subnets' name servers through
the agent's ``create_sandbox`` (the attachment's ``guest``).
"""

import ipaddress
import os
import re

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.network import base
from kata_zun.network import hostnet
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

NAME = 'neutron'
UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                     r'[0-9a-f]{12}$')
MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')
# OVS bridge names are kernel link names for the system datapath.
OVS_BRIDGE_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$')
DATAPATHS = ('system', 'netdev')
MAX_NICS = 8


def tap_name(port_id):
    """The tap of a Neutron port: ``kzt`` + its first 12 hex digits."""
    return 'kzt' + port_id.replace('-', '')[:12]


def checksum_offload(nic):
    """Whether the guest may leave checksums (and segmentation) of its
    packets to the host on this NIC.

    Not on Open vSwitch's userspace datapath (``netdev``): it reads the
    tap without the virtio-net header that marks a checksum as partial,
    its conntrack counts such packets bad and the openvswitch firewall
    drops them as ``ct_state=+inv``: ARP and ICMP pass, TCP does not.
    The kernel datapath finishes them, as a Linux bridge does.

    :param nic: a NIC of a Zun-mode request.
    :returns: bool.
    """
    return nic.get('datapath_type', 'system') != 'netdev'


def _invalid(why):
    return exception.InvalidInput(reason='neutron network request: %s' %
                                  why)


def check_request(request):
    """Check a Zun-mode request (it comes from config.json).

    :returns: the list of NIC dicts.
    :raises: InvalidInput
    """
    nics = request.get('nics')
    # No NIC at all is allowed: a container whose last network was
    # detached keeps its hotplug slots for the next attach.
    if not isinstance(nics, list) or len(nics) > MAX_NICS:
        raise _invalid('want at most %d nics' % MAX_NICS)
    if request.get('ports'):
        raise _invalid('publishing host ports (-p) does not apply to '
                       'Neutron ports: use security groups (--expose-port)')
    taps = set()
    for nic in nics:
        if not isinstance(nic, dict):
            raise _invalid('a nic must be an object')
        if not UUID_RE.fullmatch(str(nic.get('port_id', ''))):
            raise _invalid('bad port id %r' % (nic.get('port_id'),))
        if not MAC_RE.fullmatch(str(nic.get('mac', '')).lower()):
            raise _invalid('bad MAC address %r' % (nic.get('mac'),))
        if not OVS_BRIDGE_RE.fullmatch(str(nic.get('bridge', ''))):
            raise _invalid('bad integration bridge %r' %
                           (nic.get('bridge'),))
        if nic.get('datapath_type', 'system') not in DATAPATHS:
            raise _invalid('bad datapath type %r' %
                           (nic.get('datapath_type'),))
        mtu = nic.get('mtu')
        if isinstance(mtu, bool) or not isinstance(mtu, int) or \
                not 68 <= mtu <= 65535:
            raise _invalid('bad MTU %r' % (mtu,))
        for ip in nic.get('ips') or []:
            try:
                ipaddress.ip_interface('%s/%s' % (ip['address'],
                                                  ip['prefix']))
                if ip.get('gateway'):
                    ipaddress.ip_address(ip['gateway'])
            except (KeyError, TypeError, ValueError):
                raise _invalid('bad fixed IP %r' % (ip,))
        tap = tap_name(nic['port_id'])
        if tap in taps:
            raise _invalid('port %s is given twice' % nic['port_id'])
        taps.add(tap)
    return nics


def attachment(hostname, nics):
    """The attachment (see :mod:`kata_zun.network.base`) of ``nics``."""
    interfaces, dns, gateway_families = [], [], set()
    for nic in nics:
        mac = nic['mac'].lower()
        entries = []
        # IPv4 first: the first address is the one Zun and /etc/hosts show.
        for ip in sorted(nic.get('ips') or [],
                         key=lambda i: i.get('version', 4))[:8]:
            version = ip.get('version', 4)
            entry = {'address': ip['address'], 'prefix': int(ip['prefix']),
                     'gateway': None}
            # One default route per family, through the first NIC that
            # has a gateway of that family.
            if ip.get('gateway') and version not in gateway_families:
                entry['gateway'] = ip['gateway']
                gateway_families.add(version)
            entries.append(entry)
        if entries:
            iface = dict(entries[0], mac=mac, mtu=nic['mtu'])
            if entries[1:]:
                iface['extra'] = entries[1:]
            interfaces.append(iface)
        for server in nic.get('dns') or []:
            if server not in dns:
                dns.append(server)
    if not dns:
        dns = list(CONF.kata_network.dns_servers) or hostnet.host_dns()
    first = interfaces[0] if interfaces else {}
    first_nic = nics[0] if nics else {}
    return {'network': NAME,
            'bridge': first_nic.get('bridge'),
            'nics': [{'tap': tap_name(n['port_id']), 'mac': n['mac'].lower(),
                      'port_id': n['port_id'],
                      'checksum_offload': checksum_offload(n)}
                     for n in nics],
            'guest': {'interfaces': interfaces, 'dns': dns[:8],
                      'hostname': hostname},
            'address': first.get('address'), 'prefix': first.get('prefix'),
            'gateway': first.get('gateway'),
            'mac': (first_nic.get('mac') or '').lower() or None,
            'mtu': first_nic.get('mtu'),
            # Zun attaches and detaches networks while containers run:
            # the VM gets hotplug slots for its NICs.
            'hotplug': True,
            'ports': []}


def _privileged():
    try:
        from kata_zun import privsep
        from kata_zun.privsep import linux_net
        privsep.start()
    except Exception as exc:
        raise base.NetworkError(
            reason='cannot start the privileged helper (Neutron ports need '
            'root, or sudo for privsep-helper): %s' % exc)
    return linux_net


class Vswitch(object):
    """os-vif's Open vSwitch plugin, configured from ``[kata_network]``.

    Its options live in a private ConfigOpts: whatever zun-compute's own
    configuration says about ``[os_vif_ovs]``, the OVSDB is ours.
    """

    _plugin = None

    @classmethod
    def plugin(cls):
        if cls._plugin is None:
            import os_vif.objects
            from oslo_config import cfg
            from vif_plug_ovs import ovs
            os_vif.objects.register_all()
            opts = cfg.ConfigOpts()
            opts.register_opts(ovs.OvsPlugin.CONFIG_OPTS, group='os_vif_ovs')
            opts([], project='kata-zun-os-vif', default_config_files=[],
                 default_config_dirs=[])
            opts.set_override('ovsdb_connection',
                              CONF.kata_network.ovsdb_connection,
                              'os_vif_ovs')
            opts.set_override('ovsdb_interface', 'native', 'os_vif_ovs')
            opts.set_override('ovs_vsctl_timeout',
                              CONF.kata_network.ovs_timeout, 'os_vif_ovs')
            cls._start_privsep()
            cls._plugin = ovs.OvsPlugin(opts.os_vif_ovs)
        return cls._plugin

    @staticmethod
    def _start_privsep():
        """os-vif sets MTUs and deletes taps through its own privsep
        context: started like ours (forked as root, a fresh helper in
        zun-compute).
        """
        from kata_zun import privsep
        from vif_plug_ovs import privsep as ovs_privsep
        privsep.start(ovs_privsep.vif_plug)

    @staticmethod
    def vif(nic, instance_uuid):
        from os_vif import objects
        objects.register_all()
        profile = objects.vif.VIFPortProfileOpenVSwitch(
            interface_id=nic['port_id'],
            datapath_type=nic.get('datapath_type') or 'system',
            create_port=True)
        network = objects.network.Network(
            id=nic.get('net_id') or nic['port_id'], bridge=nic['bridge'],
            mtu=nic['mtu'])
        vif = objects.vif.VIFOpenVSwitch(
            id=nic['port_id'], address=nic['mac'].lower(), network=network,
            vif_name=tap_name(nic['port_id']), bridge_name=nic['bridge'],
            port_profile=profile, plugin='ovs', has_traffic_filtering=True,
            preserve_on_delete=False, active=False)
        info = objects.instance_info.InstanceInfo(uuid=instance_uuid,
                                                  name=instance_uuid)
        return vif, info

    def plug(self, nic, instance_uuid):
        vif, info = self.vif(nic, instance_uuid)
        self.plugin().plug(vif, info)

    def unplug(self, nic, instance_uuid):
        """Remove the OVS port and its tap (os-vif deletes both)."""
        vif, info = self.vif(nic, instance_uuid)
        self.plugin().unplug(vif, info)


def instance_uuid(cid, nic=None):
    """The ``vm-uuid`` of a container: Zun's uuid (the runtime id is it
    without dashes).
    """
    if nic and UUID_RE.fullmatch(str(nic.get('device_id') or '')):
        return nic['device_id']
    h = cid[:32]
    return '%s-%s-%s-%s-%s' % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class NeutronPlugin(base.NetworkPlugin):
    name = NAME

    def __init__(self, state_dir):
        super().__init__(os.path.join(state_dir, 'neutron'))
        self.vswitch = Vswitch()

    def _record(self, cid):
        return os.path.join(self.state_dir, '%s.json' % cid)

    def validate(self, request, is_known=None):
        check_request(request)

    def plug(self, cid, hostname, request):
        nics = check_request(request)
        priv = _privileged()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        # Recorded before anything exists: a crash leaves nothing the
        # record does not name. A re-plug (the next start) replaces it.
        old = self._read(cid)
        if old is not None:
            self._release(cid, old)
        fileutils.write_json(self._record(cid), {'nics': nics})
        done = []
        try:
            for nic in nics:
                uuid = instance_uuid(cid, nic)
                priv.create_tap(tap_name(nic['port_id']), None, nic['mtu'],
                                owner=os.geteuid())
                # The fault matrix kills the privsep daemon here: it
                # just did its work and is needed again (unplug).
                faultpoint.reached('neutron-tap-created')
                done.append(nic)
                self.vswitch.plug(nic, uuid)
        except Exception as exc:
            LOG.debug('network of %s failed, undoing it: %s', cid, exc)
            try:
                self._release(cid, {'nics': nics})
            except Exception:
                LOG.exception('undoing the network of %s', cid)
            if isinstance(exc, exception.KataZunException):
                raise
            raise base.NetworkError(
                reason='cannot plug the Neutron port(s) of %s into Open '
                'vSwitch (%s): %s' % (cid[:12],
                                      CONF.kata_network.ovsdb_connection,
                                      exc))
        return attachment(hostname, nics)

    def plug_nic(self, cid, nic):
        """Plug one more NIC of a running container (network attach):
        its tap and OVS port, recorded before they exist.

        :raises: InvalidInput, NetworkError (nothing of it is left)
        """
        check_request({'nics': [nic]})
        priv = _privileged()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        record = self._read(cid) or {'nics': []}
        if any(n['port_id'] == nic['port_id'] for n in record['nics']):
            raise exception.Conflict(reason='port %s is already plugged '
                                     'into %s' % (nic['port_id'], cid[:12]))
        record['nics'].append(nic)
        fileutils.write_json(self._record(cid), record)
        try:
            priv.create_tap(tap_name(nic['port_id']), None, nic['mtu'],
                            owner=os.geteuid())
            faultpoint.reached('neutron-tap-created')
            self.vswitch.plug(nic, instance_uuid(cid, nic))
        except Exception as exc:
            try:
                self.unplug_nic(cid, nic['port_id'])
            except Exception:
                LOG.exception('undoing the NIC %s of %s', nic['port_id'],
                              cid)
            if isinstance(exc, exception.KataZunException):
                raise
            raise base.NetworkError(
                reason='cannot plug the Neutron port %s of %s into Open '
                'vSwitch: %s' % (nic['port_id'], cid[:12], exc))

    def unplug_nic(self, cid, port_id):
        """Remove the tap and OVS port of one NIC (network detach) and
        drop it from the record.

        :returns: True if it was there.
        :raises: NetworkError (the record keeps it for a retry)
        """
        record = self._read(cid)
        nics = (record or {}).get('nics') or []
        gone = [n for n in nics if n.get('port_id') == port_id]
        if not gone:
            return False
        try:
            self._release(cid, {'nics': gone}, drop_record=False)
        except Exception as exc:
            raise base.NetworkError(
                reason='cannot remove the Neutron port %s of %s from Open '
                'vSwitch (kept for a retry): %s' % (port_id, cid[:12], exc))
        record['nics'] = [n for n in nics if n.get('port_id') != port_id]
        fileutils.write_json(self._record(cid), record)
        return True

    def _read(self, cid):
        try:
            return fileutils.read_json(self._record(cid))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            LOG.warning('ignoring the unreadable record of %s: %s', cid,
                        exc)
            return None

    def _release(self, cid, record, drop_record=True):
        """Unplug every NIC of a record, then drop the record.

        :raises: the first error (the record stays for a retry).
        """
        errors = []
        priv = None
        for nic in record.get('nics') or []:
            try:
                self.vswitch.unplug(nic, instance_uuid(cid, nic))
            except Exception as exc:
                errors.append(exc)
            # os-vif deletes the tap; make sure even when OVS failed.
            try:
                priv = priv or _privileged()
                priv.delete_link(tap_name(nic['port_id']))
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        if not drop_record:
            return True
        try:
            os.unlink(self._record(cid))
        except FileNotFoundError:
            pass
        return True

    def has(self, cid):
        return os.path.exists(self._record(cid))

    def unplug(self, cid):
        record = self._read(cid)
        if record is None:
            return False
        try:
            return self._release(cid, record)
        except Exception as exc:
            raise base.NetworkError(
                reason='cannot remove the Neutron port(s) of %s from Open '
                'vSwitch (kept for a retry): %s' % (cid[:12], exc))

    def reconcile(self, is_known):
        done = []
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            return done
        for name in names:
            cid, ext = os.path.splitext(name)
            if ext != '.json' or is_known(cid):
                continue
            try:
                if self.unplug(cid):
                    done.append(cid)
            except Exception as exc:
                LOG.warning('cannot release the network of removed '
                            'container %s: %s', cid, exc)
        return done
