"""Container networking: the facade the runtime and the shim use.

Standalone mode (this package): ``none`` (loopback only) and ``bridge``
(:mod:`kata_zun.network.bridge`: a tap per VM on a host bridge, leases on
disk, outbound NAT, published ports with nftables). Zun mode:
``neutron`` (:mod:`kata_zun.network.neutron`: Neutron ports made by the
driver, their taps plugged into Open vSwitch with os-vif); its request is
built by :mod:`kata_zun.driver`, never parsed from a CLI.

The lifecycle, driven by :mod:`kata_zun.runtime.manager`:

* ``create``: :func:`make_request` parses ``--network``/``-p`` and
  :func:`validate` checks them (makes nothing); the request is stored in
  the record's config.json;
* ``start``: :func:`plug` releases what removed containers left
  (reconciliation), makes this container's network and writes the
  attachment (``network.json``) the shim reads to give QEMU its NIC and
  the agent its interface, DNS and /etc/hosts entry;
* ``stop``/exit: nothing (the tap, address and ports stay the
  container's until it is removed);
* ``rm``: :func:`unplug` removes every rule, tap and lease it made.

Light on purpose: the shim imports it; the privileged side (oslo.privsep,
which pulls in eventlet) is imported only when a bridge is plugged or
unplugged.
"""

import os
import time

from kata_zun import exception
from kata_zun.network import ports as ports_mod
from kata_zun.runtime import fileutils

NETWORKS = ('none', 'bridge')
ATTACHMENT = 'network.json'


def state_dir(state_path):
    return os.path.join(state_path, 'network')


def get_plugin(name, state_path):
    """:returns: the :class:`~kata_zun.network.base.NetworkPlugin` of
    network ``name``.

    :raises: InvalidInput for an unknown network.
    """
    if name == 'none':
        from kata_zun.network import null
        return null.NullPlugin(state_dir(state_path))
    if name == 'bridge':
        from kata_zun.network import bridge
        return bridge.BridgePlugin(state_dir(state_path))
    if name == 'neutron':
        from kata_zun.network import neutron
        return neutron.NeutronPlugin(state_dir(state_path))
    raise exception.InvalidInput(
        reason='unknown network %r (kata-zun has: %s)' % (
            name, ', '.join(NETWORKS)))


def make_request(network, publish=()):
    """Parse what the user asked for.

    :param network: 'none' or 'bridge'; or a Zun-mode request dict
                    ({'network': 'neutron', 'nics': [...]}, made by the
                    driver, see :mod:`kata_zun.network.neutron`).
    :param publish: ``-p`` values.
    :returns: {'network': name, 'ports': [mapping, ...]}
    :raises: InvalidInput
    """
    if isinstance(network, dict) and network.get('network') == 'neutron':
        if publish:
            raise exception.InvalidInput(
                reason='publishing host ports (-p) does not apply to '
                'Neutron ports')
        return {'network': 'neutron', 'ports': [],
                'nics': list(network.get('nics') or [])}
    if network not in NETWORKS:
        raise exception.InvalidInput(
            reason='unknown network %r (kata-zun has: %s)' % (
                network, ', '.join(NETWORKS)))
    return {'network': network, 'ports': ports_mod.parse_all(publish)}


def validate(state_path, request, is_known=None):
    """Check a request at create time: makes nothing.

    :param is_known: callable(cid) -> bool; leases of other containers
                     are ignored (they are released at the next start).
    :raises: InvalidInput, Conflict, NetworkError
    """
    get_plugin(request['network'], state_path).validate(request, is_known)


def reconcile(state_path, is_known):
    """Release what was made for containers that no longer exist.

    :param is_known: callable(cid) -> True while the record exists.
    :returns: the container ids cleaned up.
    """
    done = get_plugin('bridge', state_path).reconcile(is_known)
    if _has_neutron_records(state_path):
        done += get_plugin('neutron', state_path).reconcile(is_known)
    return done


def _has_neutron_records(state_path, cid=None):
    """True if Zun-mode records exist (of ``cid``): checked without
    importing the plugin (os-vif) when there are none.
    """
    directory = os.path.join(state_dir(state_path), 'neutron')
    if cid is not None:
        return os.path.exists(os.path.join(directory, '%s.json' % cid))
    try:
        return any(n.endswith('.json') for n in os.listdir(directory))
    except OSError:
        return False


def plug(state_path, container_dir, cid, hostname, request, is_known):
    """Make a container's network before its VM boots and record it.

    :returns: the attachment (also written to ``network.json``).
    :raises: InvalidInput, Conflict, NetworkError
    """
    t0 = time.monotonic()
    reconcile(state_path, is_known)
    attachment = get_plugin(request['network'], state_path).plug(
        cid, hostname, request)
    attachment['setup_seconds'] = round(time.monotonic() - t0, 4)
    fileutils.write_json(os.path.join(container_dir, ATTACHMENT),
                         attachment)
    return attachment


def unplug(state_path, cid):
    """Remove every tap, rule and lease made for ``cid`` (whatever its
    network: the leases say what exists).

    :returns: True if something was removed.
    """
    removed = False
    if _has_neutron_records(state_path, cid):
        removed = get_plugin('neutron', state_path).unplug(cid)
    return get_plugin('bridge', state_path).unplug(cid) or removed


def plan_change(old_request, new_request, attachment):
    """Which NICs a live network change adds and removes.

    :param old_request: the request the running VM was started with (and
                        changed since by earlier live changes).
    :param new_request: the request wanted now.
    :param attachment: the running VM's attachment.
    :returns: (added nics, removed nics) of the Neutron requests.
    :raises: Conflict when the VM cannot change its NICs while it runs.
    """
    kinds = {(old_request or {}).get('network'), new_request['network']}
    if kinds - {'neutron'} or not (attachment or {}).get('hotplug'):
        raise exception.Conflict(
            reason='the NICs of this VM are fixed while it runs (only '
            'Neutron networks started with hotplug slots change live): '
            'stop it, change its networks, and start it again')
    from kata_zun.network import neutron
    old = neutron.check_request(old_request)
    new = neutron.check_request(new_request)
    old_ids = {n['port_id'] for n in old}
    new_ids = {n['port_id'] for n in new}
    return ([n for n in new if n['port_id'] not in old_ids],
            [n for n in old if n['port_id'] not in new_ids])


def plug_nic(state_path, cid, nic):
    """Make the tap and switch port of one NIC a running VM will get.

    :raises: InvalidInput, Conflict, NetworkError (nothing is left)
    """
    get_plugin('neutron', state_path).plug_nic(cid, nic)


def unplug_nic(state_path, cid, nic):
    """Remove the tap and switch port of a NIC taken out of its VM.

    :raises: NetworkError (kept for a retry by :func:`unplug`)
    """
    get_plugin('neutron', state_path).unplug_nic(cid, nic['port_id'])


def guest_interfaces(hostname, nics):
    """:returns: the agent's interface specs of Neutron ``nics`` (those
    with an address the guest can configure).
    """
    from kata_zun.network import neutron
    return neutron.attachment(hostname, nics)['guest']['interfaces']


def guest_interface(hostname, nics, nic):
    """:returns: the agent's interface spec of ``nic`` among ``nics``, or
    None when it has no address the guest can configure.
    """
    mac = nic['mac'].lower()
    for iface in guest_interfaces(hostname, nics):
        if iface['mac'] == mac:
            return iface
    return None


def write_attachment(container_dir, hostname, request):
    """Record the attachment of a live-changed Neutron request."""
    from kata_zun.network import neutron
    attachment = neutron.attachment(hostname, request.get('nics') or [])
    fileutils.write_json(os.path.join(container_dir, ATTACHMENT),
                         attachment)
    return attachment


def read_attachment(container_dir):
    """:returns: the attachment of a container, or None (never started,
    or recorded before networking existed).
    """
    try:
        return fileutils.read_json(os.path.join(container_dir, ATTACHMENT))
    except (OSError, ValueError):
        return None


def settings(container_dir, request):
    """Docker-like ``NetworkSettings`` for ``inspect``."""
    request = request or {}
    att = read_attachment(container_dir) or {}
    mappings = att.get('ports', request.get('ports')) or []
    published = {}
    for m in mappings:
        published.setdefault('%d/%s' % (m['container_port'], m['proto']),
                             []).append({'HostIp': m['host_ip'],
                                         'HostPort': str(m['host_port'])})
    return {'Network': att.get('network', request.get('network')),
            'Bridge': att.get('bridge'),
            'IPAddress': att.get('address'),
            'IPPrefixLen': att.get('prefix'),
            'Gateway': att.get('gateway'),
            'MacAddress': att.get('mac'),
            'MTU': att.get('mtu'),
            'Tap': (att.get('nics') or [{}])[0].get('tap'),
            'DNS': (att.get('guest') or {}).get('dns'),
            'Ports': published,
            'SetupSeconds': att.get('setup_seconds')}


def container_spec(spec, attachment):
    """The agent's create_container spec with the network's DNS servers
    (unless the user gave some) and the container's address in /etc/hosts.
    """
    if not attachment:
        return spec
    spec = dict(spec)
    guest = attachment.get('guest') or {}
    if not spec.get('dns') and guest.get('dns'):
        spec['dns'] = list(guest['dns'])
    name = spec.get('hostname') or guest.get('hostname')
    if attachment.get('address') and name:
        spec['hosts'] = list(spec.get('hosts') or []) + [
            '%s\t%s' % (attachment['address'], name)]
    return spec
