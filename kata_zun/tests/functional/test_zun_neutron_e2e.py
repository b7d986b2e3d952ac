"""End to end with a real Neutron: containers get ports and connectivity.

zun-api and zun-compute (kata driver) with neutron's API, RPC server and
Open vSwitch agent (openvswitch firewall, netdev datapath; see
:mod:`neutron_env`). ``openstack appcontainer run --net`` makes Neutron
ports bound to this host; the taps of the VMs are plugged into the
integration bridge, the agent wires them, and containers ping each other
as their security groups allow: ICMP (ping) and TCP (an HTTP server
in one container, ``wget`` in another). Networks are attached and detached
while containers run (NIC hotplug) and while they are stopped.

Needs root, Open vSwitch and the virtualenv with neutron
(``tools/install-neutron.sh``, or ``$KATA_ZUN_NEUTRON_VENV``).
"""

import json
import os
import subprocess
import time
import uuid

from kata_zun.tests.functional import test_neutron_env
from kata_zun.tests.functional import test_pods
from kata_zun.tests.functional import test_zun_e2e

CIDR = '10.77.1.0/24'
CIDR2 = '10.77.9.0/24'
CIDR6 = 'fd77:9::/64'


# A capsule on Neutron: two containers of one VM, a server and a client
# that reaches it on localhost.
CAPSULE = """
kind: capsule
metadata:
  name: web
spec:
  containers:
  - image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args: ["mkdir -p /www && echo hello-from-server > /www/index.html &&
            exec httpd -f -p 8080 -h /www"]
  - image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args: ["until wget -q -O - http://localhost:8080/; do sleep 0.2; done;
            exec sleep 100000"]
"""


def _by_version(entries, version):
    """The Zun address entry of one IP version."""
    return [e for e in entries if e['version'] == version][0]


class ZunNeutronBase(test_zun_e2e.ZunEndToEndBase):
    """A Zun with a real Neutron per test, and helpers; no tests."""

    # Neutron's start, four VMs, NIC hotplug and a TCP transfer: over
    # 900 s on this busy 2-core machine under TCG.
    TEST_TIMEOUT = 1800

    def setUp(self):
        venv = test_neutron_env.neutron_venv()
        if venv is None:
            self.fail('no virtualenv with neutron: run '
                      'tools/install-neutron.sh')
        if os.geteuid() != 0:
            self.fail('needs root (Open vSwitch, taps)')
        self.ENV_OPTIONS = {'neutron': True, 'neutron_venv': venv}
        super().setUp()
        self.neutron = self.env.neutron

    def _attach_logs(self, exc_info):
        super()._attach_logs(exc_info)
        from testtools import content
        neutron = getattr(self, 'env', None) and self.env.neutron
        self.addDetail('neutron-logs', content.text_content(
            neutron.logs_tail() if neutron else ''))

    def osj(self, *args):
        return json.loads(self.os(*(args + ('-f', 'json')))[1])

    def ping(self, name, address, count=1):
        # Polled: through the API (see ZunEnvironment.api), not a new
        # client process per try.
        code, _out = self.env.exec_(name, 'ping', '-c', str(count), '-W',
                                    '2', address)
        return code == 0

    def wait_ping(self, name, address, ok, timeout=60):
        deadline = time.time() + timeout
        while self.ping(name, address) != ok:
            self.assertLess(time.time(), deadline, 'ping %s from %s: '
                            'want %s' % (address, name,
                                         'success' if ok else 'failure'))
            time.sleep(1)

    def wait_action(self, name, action, nth=1, timeout=120):
        """The ``nth`` ``action`` of container ``name`` once it finished:
        {'request_id', 'message'} (message 'Error' when it failed).
        """
        deadline = time.time() + timeout
        while True:
            done = []
            for row in self.env.actions(name):
                if row.get('action') != action:
                    continue
                events = self.env.actions(
                    name, row['request_id']).get('events') or []
                if events and all(e.get('finish_time') for e in events):
                    done.append(row)
            if len(done) >= nth:
                return sorted(done, key=lambda r: r.get('start_time')
                              or '')[nth - 1]
            self.assertLess(time.time(), deadline, (name, action))
            time.sleep(1)

    def fetch(self, name, url):
        """``wget`` ``url`` in container ``name``.

        :returns: (exit code, md5 of the body as ``md5sum`` prints it).
        """
        code, out = self.env.exec_(
            name, 'sh', '-c',
            # busybox wget's own -T crashes (SIGSEGV) in the guest.
            'rm -f /tmp/got; timeout 10 wget -q -O /tmp/got %s && '
            'md5sum /tmp/got' % url)
        return code, out.split()[0] if code == 0 and out.split() else None

    def wait_fetch(self, name, url, ok, timeout=60):
        deadline = time.time() + timeout
        while True:
            code, md5 = self.fetch(name, url)
            if (code == 0) == ok:
                return md5
            self.assertLess(time.time(), deadline, 'GET %s from %s: want '
                            '%s' % (url, name,
                                    'success' if ok else 'failure'))
            time.sleep(1)

    def taps(self):
        return sorted(n for n in os.listdir('/sys/class/net')
                      if n.startswith('kzt'))


class ZunNeutronEndToEndTest(ZunNeutronBase):

    def test_ports_connectivity_security_groups_delete(self):
        suffix = uuid.uuid4().hex[:6]
        net = self.osj('network', 'create', 'kznet-' + suffix)
        self.osj('subnet', 'create', '--network', net['id'],
                 '--subnet-range', CIDR, '--dns-nameserver', '10.77.1.53',
                 'kzsub-' + suffix)
        icmp = self.osj('security', 'group', 'create', 'kzicmp-' + suffix)
        self.os('security', 'group', 'rule', 'create', '--ingress',
                '--protocol', 'icmp', icmp['id'])
        web_sg = self.osj('security', 'group', 'create',
                          'kzweb-' + suffix)
        # A port of the user's, without any security group: nothing comes
        # in until a group allows it.
        user_port = self.osj('port', 'create', '--network', net['id'],
                             '--no-security-group', 'kzport-' + suffix)
        net2 = self.osj('network', 'create', 'kznet2-' + suffix)
        self.osj('subnet', 'create', '--network', net2['id'],
                 '--subnet-range', CIDR2, 'kzsub2-' + suffix)
        # net2 is dual-stack: its ports get an IPv6 address too.
        subnet6 = self.osj('subnet', 'create', '--network', net2['id'],
                           '--ip-version', '6', '--subnet-range', CIDR6,
                           'kzsub6-' + suffix)
        taps_before = self.taps()

        self.os('appcontainer', 'run', '--name', 'c1',
                '--image-pull-policy', 'ifnotpresent',
                '--net', 'network=' + net['id'], 'busybox', 'sleep',
                '100000')
        self.os('appcontainer', 'run', '--name', 'c2',
                '--image-pull-policy', 'ifnotpresent',
                '--net', 'port=' + user_port['id'], 'busybox', 'sleep',
                '100000')
        self.os('appcontainer', 'run', '--name', 'c3',
                '--image-pull-policy', 'ifnotpresent',
                '--net', 'network=' + net2['id'], 'busybox', 'sleep',
                '100000')
        c1 = self.wait_status('c1', ('Running',))
        c2 = self.wait_status('c2', ('Running',))

        # Zun shows the ports' addresses in its format (the CLI shows
        # just the IPs: ask the API).
        zun = self.env.zun_client()
        addresses1 = zun.containers.get('c1').addresses
        self.assertEqual([net['id']], list(addresses1))
        addr1 = addresses1[net['id']][0]
        addr2 = zun.containers.get('c2').addresses[net['id']][0]
        self.assertEqual(addr1['addr'], c1['addresses'])
        self.assertFalse(addr1['preserve_on_delete'])
        self.assertTrue(addr2['preserve_on_delete'])
        self.assertEqual(user_port['id'], addr2['port'])
        self.assertEqual(4, addr1['version'])
        # Ports bound to this host for compute:zun, wired by the agent.
        for info, addr in ((c1, addr1), (c2, addr2)):
            port = self.neutron.wait_port(addr['port'], 'ACTIVE')
            self.assertEqual('compute:zun', port['device_owner'])
            self.assertEqual(info['uuid'], port['device_id'])
            self.assertEqual(self.env.host, port['binding:host_id'])
            self.assertEqual('ovs', port['binding:vif_type'])
            self.assertEqual(addr['addr'],
                             port['fixed_ips'][0]['ip_address'])
        # The guest has the port's MAC, address and the network's MTU.
        out = self.os('appcontainer', 'exec', 'c1', 'ip', 'addr')[1]
        port1 = self.neutron.call('GET', '/v2.0/ports/%s' %
                                  addr1['port'])['port']
        self.assertIn(port1['mac_address'], out)
        self.assertIn('%s/24' % addr1['addr'], out)
        self.assertIn('mtu %s' % net['mtu'], out)
        resolv = self.os('appcontainer', 'exec', 'c1', 'cat',
                         '/etc/resolv.conf')[1]
        self.assertIn('10.77.1.53', resolv)
        ovs_ports = self.neutron.vsctl('list-ports',
                                       self.neutron.integration_bridge)
        for addr in (addr1, addr2):
            self.assertIn('kzt' + addr['port'].replace('-', '')[:12],
                          ovs_ports)

        # c2's port has no group: c1 cannot reach it, until a group
        # allowing ICMP is added through zun; removed, it blocks again.
        self.assertFalse(self.ping('c1', addr2['addr']))
        # zun-api serves security group add/remove up to API 1.14 only
        # (1.15 removed them); the later --os-container-api-version wins.
        self.os('--os-container-api-version', '1.14', 'appcontainer',
                'add', 'security', 'group', 'c2', icmp['id'])
        self.wait_ping('c1', addr2['addr'], True)
        self.assertIn(icmp['id'], self.neutron.call(
            'GET', '/v2.0/ports/%s' % addr2['port'])['port'][
                'security_groups'])
        self.os('--os-container-api-version', '1.14', 'appcontainer',
                'remove', 'security', 'group', 'c2', icmp['id'])
        self.wait_ping('c1', addr2['addr'], False)

        # TCP through the firewall (issue 15): an HTTP server in a
        # container whose group has no rule yet; c1's request is dropped
        # until a rule allows the port. On Open vSwitch's userspace
        # datapath this needs the NICs without checksum offload: with it
        # the handshake passes but conntrack drops the data as invalid.
        self.os('appcontainer', 'run', '--name', 'web',
                '--image-pull-policy', 'ifnotpresent',
                '--net', 'network=' + net['id'],
                '--security-group', web_sg['id'], 'busybox', 'sh', '-c',
                'mkdir /www && dd if=/dev/urandom of=/www/blob bs=1024 '
                'count=512 && exec httpd -f -p 8080 -h /www')
        self.wait_status('web', ('Running',))
        addr_web = zun.containers.get('web').addresses[net['id']][0]
        url = 'http://%s:8080/blob' % addr_web['addr']
        code, out, _err = self.os('appcontainer', 'exec', 'web', 'md5sum',
                                  '/www/blob')
        want_md5 = out.split()[0]
        self.assertNotEqual(0, self.fetch('c1', url)[0])
        self.os('security', 'group', 'rule', 'create', '--ingress',
                '--protocol', 'tcp', '--dst-port', '8080', web_sg['id'])
        # 512 KiB: many full-sized segments, each checksummed by the
        # guest, all intact.
        self.assertEqual(want_md5, self.wait_fetch('c1', url, True))
        self.os('appcontainer', 'delete', '--stop', 'web')

        # Network attach/detach while c1 runs: the NIC is hotplugged into
        # the micro-VM (a PCIe slot) and configured by the agent, then
        # unplugged again. c3 lives on net2 from the start.
        self.wait_status('c3', ('Running',))
        entries_c3 = zun.containers.get('c3').addresses[net2['id']]
        addr_c3 = _by_version(entries_c3, 4)
        addr6_c3 = _by_version(entries_c3, 6)
        out = self.os('appcontainer', 'exec', 'c3', 'ip', 'addr')[1]
        self.assertIn('%s/64' % addr6_c3['addr'], out)
        self.os('appcontainer', 'network', 'attach', '--network',
                net2['id'], 'c1')
        self.assertIsNone(self.wait_action('c1', 'network_attach')[
            'message'])
        addresses = zun.containers.get('c1').addresses
        self.assertEqual({net['id'], net2['id']}, set(addresses))
        addr3 = _by_version(addresses[net2['id']], 4)
        addr6 = _by_version(addresses[net2['id']], 6)
        self.neutron.wait_port(addr3['port'], 'ACTIVE')
        self.assertEqual('Running', self.osj('appcontainer', 'show',
                                             'c1')['status'])
        out = self.os('appcontainer', 'exec', 'c1', 'ip', 'addr')[1]
        self.assertIn('%s/24' % addr3['addr'], out)
        self.assertIn('%s/24' % addr1['addr'], out)
        self.assertIn('%s/64' % addr6['addr'], out)
        # c1 and c3 share net2 and the default group: they talk, over
        # IPv4 and IPv6.
        self.wait_ping('c1', addr_c3['addr'], True)
        self.wait_ping('c1', addr6_c3['addr'], True)
        tap3 = 'kzt' + addr3['port'].replace('-', '')[:12]
        self.assertIn(tap3, self.taps())

        self.os('appcontainer', 'network', 'detach', '--network',
                net2['id'], 'c1')
        self.assertIsNone(self.wait_action('c1', 'network_detach')[
            'message'])
        self.assertEqual([net['id']],
                         list(zun.containers.get('c1').addresses))
        out = self.os('appcontainer', 'exec', 'c1', 'ip', 'addr')[1]
        self.assertNotIn(addr3['addr'], out)
        self.assertIn('%s/24' % addr1['addr'], out)
        self.assertFalse(self.ping('c1', addr_c3['addr']))
        self.assertEqual(404, self.neutron.request(
            'GET', '/v2.0/ports/%s' % addr3['port'])[0])
        self.assertNotIn(tap3, self.taps())
        self.assertNotIn(tap3, self.neutron.vsctl(
            'list-ports', self.neutron.integration_bridge))

        # Attached while stopped: the port now, the NIC at the next start
        # (in a slot, so it can still be detached while running).
        self.os('appcontainer', 'stop', '--timeout', '1', 'c1')
        self.wait_status('c1', ('Stopped',))
        self.os('appcontainer', 'network', 'attach', '--network',
                net2['id'], 'c1')
        self.assertIsNone(self.wait_action('c1', 'network_attach',
                                           nth=2)['message'])
        addr4 = _by_version(zun.containers.get('c1').addresses[net2['id']],
                            4)
        self.os('appcontainer', 'start', 'c1')
        self.wait_status('c1', ('Running',))
        self.neutron.wait_port(addr4['port'], 'ACTIVE')
        out = self.os('appcontainer', 'exec', 'c1', 'ip', 'addr')[1]
        self.assertIn('%s/24' % addr4['addr'], out)
        self.wait_ping('c1', addr_c3['addr'], True)
        self.wait_ping('c1', addr2['addr'], False)    # still no group
        routes = self.os('appcontainer', 'exec', 'c1', 'ip', 'route')[1]
        self.assertIn('default via 10.77.1.1', routes)
        # Detach the first network (it has the default route) while c1
        # runs: its boot-time NIC goes, net2's NIC gets the default route.
        self.os('appcontainer', 'network', 'detach', '--network',
                net['id'], 'c1')
        self.assertIsNone(self.wait_action('c1', 'network_detach',
                                           nth=2)['message'])
        self.assertEqual([net2['id']],
                         list(zun.containers.get('c1').addresses))
        out = self.os('appcontainer', 'exec', 'c1', 'ip', 'addr')[1]
        self.assertNotIn(addr1['addr'], out)
        self.assertIn('%s/24' % addr4['addr'], out)
        self.assertEqual(404, self.neutron.request(
            'GET', '/v2.0/ports/%s' % addr1['port'])[0])
        routes = self.os('appcontainer', 'exec', 'c1', 'ip', 'route')[1]
        self.assertIn('default via 10.77.9.1', routes)
        self.assertIn('default via %s ' % subnet6['gateway_ip'], self.os(
            'appcontainer', 'exec', 'c1', 'ip', '-6', 'route')[1])
        self.wait_ping('c1', addr6_c3['addr'], True)

        # zun-compute crashes and comes back; deleting still cleans up.
        self.env.restart_compute(kill=True)
        for name in ('c1', 'c2', 'c3'):
            self.os('appcontainer', 'delete', '--stop', name)
        deadline = time.time() + 120
        while not self.gone('c1', 'c2', 'c3'):
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        # The driver's port is gone; the user's is kept, unbound.
        code, _body = self.neutron.request(
            'GET', '/v2.0/ports/%s' % addr1['port'])
        self.assertEqual(404, code)
        kept = self.neutron.call('GET', '/v2.0/ports/%s' %
                                 user_port['id'])['port']
        self.assertEqual('', kept['device_id'])
        self.assertEqual('', kept['device_owner'])
        self.assertEqual('', kept['binding:host_id'])
        self.assertEqual([], [p for p in self.neutron.vsctl(
            'list-ports', self.neutron.integration_bridge).split()
            if p.startswith('kzt')])
        self.assertEqual(taps_before, self.taps())
        left = subprocess.run(['ip', '-o', 'link'], capture_output=True,
                              text=True).stdout
        self.assertNotIn(addr1['port'].replace('-', '')[:12], left)


class ZunNeutronCapsuleTest(ZunNeutronBase):
    """A capsule on a real Neutron: one port for its VM, none left."""

    def test_capsule_has_one_port_and_leaves_none(self):
        suffix = uuid.uuid4().hex[:6]
        net = self.osj('network', 'create', 'kznet-' + suffix)
        self.osj('subnet', 'create', '--network', net['id'],
                 '--subnet-range', CIDR, 'kzsub-' + suffix)
        taps_before = self.taps()
        path = os.path.join(self.state_path, 'capsule.yaml')
        with open(path, 'w') as f:
            f.write(CAPSULE)
        ref = self.osj('capsule', 'create', '--file', path)['uuid']
        deadline = time.time() + 600
        while True:
            info = self.env.show('capsules', ref)
            if info['status'] == 'Running':
                break
            self.assertNotIn(info['status'], ('Error', 'Stopped'), info)
            self.assertLess(time.time(), deadline, info)
            time.sleep(1)
        # One port for the whole capsule, bound here, wired by the agent.
        ports = self.osj('port', 'list', '--device-id', ref, '--long')
        self.assertEqual(1, len(ports), ports)
        port = self.neutron.wait_port(ports[0]['ID'], 'ACTIVE')
        self.assertEqual('compute:zun', port['device_owner'])
        self.assertEqual(self.env.host, port['binding:host_id'])
        self.assertEqual(1, len(set(self.taps()) - set(taps_before)))
        # Its containers share the VM's network: the client reached the
        # server on localhost, and the VM has the port's address.
        pod_id = ref.replace('-', '')
        client = info['containers'][1]['uuid'].replace('-', '')
        deadline = time.time() + 120
        while 'hello-from-server' not in self.kz('logs', client).stdout:
            self.assertLess(time.time(), deadline,
                            self.kz('logs', client).stdout)
            time.sleep(1)
        self.assertIn(port['fixed_ips'][0]['ip_address'],
                      self.kz('exec', client, 'ip', 'addr').stdout)
        members = [c['uuid'].replace('-', '') for c in info['containers']]
        self.os('capsule', 'delete', ref)
        deadline = time.time() + 180
        while self.env.show('capsules', ref) is not None:
            self.assertLess(time.time(), deadline, ref)
            time.sleep(1)
        # No VM, record, tap or port left.
        self.assertEqual([], self.osj('port', 'list', '--device-id', ref))
        self.assertEqual(taps_before, self.taps())
        self.assertEqual([], test_pods.pod_leaks(
            self.state_path, self.run_path, pod_id, members))
