"""A real Neutron (ML2/OVS, netdev datapath) binds and wires ports.

Keystone (:mod:`zun_env` with ``zun=False``) and
:class:`neutron_env.NeutronEnvironment` run on loopback. A port created
for ``compute:zun`` on the agent's host is bound (``vif_type`` ``ovs``)
and becomes ACTIVE once a device carrying its id is plugged into br-int
as os-vif does it; two such ports pass traffic through br-int, subject to
their security group (openvswitch firewall, userspace conntrack).

Needs root, Open vSwitch and a virtualenv with neutron
(``tools/install-neutron.sh``), ``ip`` and ``busybox`` (ping).
"""

import concurrent.futures
import os
import secrets
import subprocess
import sys
import time
import uuid

import fixtures
from oslotest import base

from kata_zun.tests.functional import neutron_env
from kata_zun.tests.functional import zun_env

CIDR = '10.77.0.0/24'
PING_TIMEOUT = 30


def neutron_venv():
    """The virtualenv with neutron (see :func:`zun_env.find_venv`)."""
    return zun_env.find_venv('KATA_ZUN_NEUTRON_VENV', '.venv-neutron',
                             'neutron-rpc-server')


class NeutronEnvironmentTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(900, gentle=True))
        venv = neutron_venv()
        if venv is None:
            self.fail('no virtualenv with neutron: run '
                      'tools/install-neutron.sh')
        if os.geteuid() != 0:
            self.fail('needs root (Open vSwitch, network namespaces)')
        work = self.useFixture(fixtures.TempDir()).path
        self.keystone = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(work, 'keystone'), zun=False)
        self.neutron = neutron_env.NeutronEnvironment(
            venv, os.path.join(work, 'neutron'))
        # Cleanups run last-in first-out: neutron leaves keystone while
        # keystone still runs.
        self.addCleanup(self.keystone.stop)
        self.addCleanup(self.neutron.stop)
        self.addOnException(self._attach_logs)
        # Neutron boots without keystone (only requests need it): both
        # start at the same time; neutron registers itself once keystone
        # answers.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            keystone = pool.submit(self.keystone.start)
            self.neutron.prepare()
            # ZunEnvironment picks keystone's port and the admin password
            # as start() begins.
            while not (self.keystone.admin_password or keystone.done()):
                time.sleep(0.05)
            self.neutron.start(self.keystone.auth_url,
                               self.keystone.admin_password,
                               keystone_ready=keystone.result)
        self.suffix = secrets.token_hex(3)

    def _attach_logs(self, exc_info):
        from testtools import content
        self.addDetail('neutron-logs', content.text_content(
            self.neutron.logs_tail()))

    def _ip(self, *args):
        subprocess.run(['ip'] + list(args), check=True, capture_output=True,
                       timeout=60)

    def _cleanup_ip(self, *args):
        self.addCleanup(subprocess.run, ['ip'] + list(args),
                        capture_output=True, timeout=60)

    def _create_port(self, network, security_group):
        port = self.neutron.call('POST', '/v2.0/ports', {'port': {
            'network_id': network['id'], 'device_owner': 'compute:zun',
            'device_id': str(uuid.uuid4()),
            'binding:host_id': self.neutron.host,
            'security_groups': [security_group['id']]}})['port']
        self.addCleanup(self.neutron.request, 'DELETE',
                        '/v2.0/ports/%s' % port['id'])
        return port

    def _assert_bound(self, port):
        self.assertEqual('ACTIVE', port['status'])
        self.assertEqual('ovs', port['binding:vif_type'])
        self.assertEqual(self.neutron.host, port['binding:host_id'])
        details = port['binding:vif_details']
        self.assertEqual('netdev', details['datapath_type'])
        self.assertEqual(self.neutron.integration_bridge,
                         details['bridge_name'])
        self.assertTrue(details['port_filter'])

    def _veth_in_netns(self, index, port, prefixlen):
        """A veth pair: one end in a netns with the port's MAC and IP,
        the other plugged into br-int.
        """
        netns = 'kzn%s-%d' % (self.suffix, index)
        outer = 'kzo%s%d' % (self.suffix, index)
        inner = 'kzi%s%d' % (self.suffix, index)
        self._ip('netns', 'add', netns)
        self._cleanup_ip('netns', 'del', netns)
        self._ip('link', 'add', outer, 'type', 'veth', 'peer', 'name',
                 inner)
        self._cleanup_ip('link', 'del', outer)
        self._ip('link', 'set', inner, 'netns', netns)
        self._ip('-n', netns, 'link', 'set', inner, 'address',
                 port['mac_address'], 'mtu', '1450')
        self._ip('-n', netns, 'addr', 'add', '%s/%d' % (
            port['fixed_ips'][0]['ip_address'], prefixlen), 'dev', inner)
        self._ip('-n', netns, 'link', 'set', inner, 'up')
        self._ip('link', 'set', outer, 'up')
        self.neutron.plug_vif(port, outer, port['device_id'])
        self.addCleanup(self.neutron.unplug_vif, outer)
        return netns

    def _ping(self, netns, address):
        return subprocess.run(
            ['ip', 'netns', 'exec', netns, 'busybox', 'ping', '-c', '2',
             '-W', '1', address], capture_output=True, text=True,
            timeout=60)

    def test_port_binding_and_datapath(self):
        neutron = self.neutron
        agent = neutron.agent()
        self.assertTrue(agent['alive'])
        self.assertEqual('netdev', agent['configurations']['datapath_type'])
        network = neutron.call('POST', '/v2.0/networks', {'network': {
            'name': 'kz-net'}})['network']
        self.addCleanup(neutron.request, 'DELETE',
                        '/v2.0/networks/%s' % network['id'])
        self.assertEqual('vxlan', network['provider:network_type'])
        neutron.call('POST', '/v2.0/subnets', {'subnet': {
            'network_id': network['id'], 'cidr': CIDR, 'ip_version': 4,
            'enable_dhcp': False}})
        # A new group only allows egress: no ICMP comes in.
        group = neutron.call('POST', '/v2.0/security-groups', {
            'security_group': {'name': 'kz-no-icmp'}})['security_group']
        self.addCleanup(neutron.request, 'DELETE',
                        '/v2.0/security-groups/%s' % group['id'])

        # 1. A tap device, plugged as os-vif plugs it: bound and ACTIVE.
        port = self._create_port(network, group)
        self.assertEqual('ovs', port['binding:vif_type'])
        self.assertEqual('DOWN', port['status'])
        tap = 'kzt%s' % self.suffix
        self._ip('tuntap', 'add', tap, 'mode', 'tap')
        self._cleanup_ip('link', 'del', tap)
        self._ip('link', 'set', tap, 'up')
        t = time.monotonic()
        neutron.plug_vif(port, tap, port['device_id'])
        self._assert_bound(neutron.wait_port(port['id'], 'ACTIVE'))
        zun_env._log('tap port ACTIVE after %.1fs' % (time.monotonic() - t))
        # The agent gave it the network's local VLAN.
        self.assertNotIn(neutron.vsctl('get', 'Port', tap, 'tag').strip(),
                         ('', '[]'))
        # Unplugged: the agent reports it down again.
        neutron.unplug_vif(tap)
        neutron.wait_port(port['id'], 'DOWN')

        # 2. Two veth ends in network namespaces: traffic through br-int.
        prefixlen = int(CIDR.split('/')[1])
        ports = [self._create_port(network, group) for _ in range(2)]
        namespaces = [self._veth_in_netns(i, p, prefixlen)
                      for i, p in enumerate(ports)]
        for p in ports:
            self._assert_bound(neutron.wait_port(p['id'], 'ACTIVE'))
        addresses = [p['fixed_ips'][0]['ip_address'] for p in ports]
        blocked = self._ping(namespaces[0], addresses[1])
        self.assertNotEqual(0, blocked.returncode,
                            'ICMP passed without a rule: %s' % blocked.stdout)
        self.assertIn('0 packets received', blocked.stdout)

        # 3. An ICMP rule lets the same ping through (both ways).
        neutron.call('POST', '/v2.0/security-group-rules', {
            'security_group_rule': {
                'security_group_id': group['id'], 'direction': 'ingress',
                'ethertype': 'IPv4', 'protocol': 'icmp'}})
        t = time.monotonic()
        deadline = t + PING_TIMEOUT
        while True:
            result = self._ping(namespaces[0], addresses[1])
            if result.returncode == 0 or time.monotonic() > deadline:
                break
        self.assertEqual(0, result.returncode, result.stdout)
        zun_env._log('ping allowed %.1fs after the rule' % (
            time.monotonic() - t))
        result = self._ping(namespaces[1], addresses[0])
        self.assertEqual(0, result.returncode, result.stdout)
        # The openvswitch firewall tracked it in userspace conntrack.
        self.assertIn('icmp', neutron.appctl('dpctl/dump-conntrack'))
