import os
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun import network
from kata_zun.network import base as net_base
from kata_zun.network import neutron

PORT = '0b5c1f2e-3a4d-4e6f-8a9b-0c1d2e3f4a5b'
PORT2 = '9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a'
CID = '6f1c7a566a8e4b5e9f5e0d1b2c3d4e5f'


def nic(port_id=PORT, **kw):
    n = {'port_id': port_id, 'net_id': 'n1', 'mac': 'FA:16:3E:00:00:01',
         'mtu': 1450, 'bridge': 'bi-abc123', 'datapath_type': 'netdev',
         'device_id': '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f',
         'ips': [{'address': '10.0.0.5', 'prefix': 24,
                  'gateway': '10.0.0.1', 'version': 4}],
         'dns': ['10.0.0.2']}
    n.update(kw)
    return n


class CheckRequestTest(base.BaseTestCase):

    def test_valid(self):
        self.assertEqual(1, len(neutron.check_request({'nics': [nic()]})))

    def test_refused(self):
        nine = [nic(port_id='%08d-0000-4000-8000-%012d' % (i, i))
                for i in range(9)]
        for bad in ({'nics': nine},
                    {'nics': None}, {'nics': [nic(port_id='x')]},
                    {'nics': [nic(mac='zz')]},
                    {'nics': [nic(bridge='br int; rm')]},
                    {'nics': [nic(datapath_type='dpdk')]},
                    {'nics': [nic(mtu=10)]}, {'nics': [nic(mtu=True)]},
                    {'nics': [nic(ips=[{'address': 'x', 'prefix': 24}])]},
                    {'nics': [nic(), nic()]},
                    {'nics': [nic()], 'ports': [{'host_port': 80}]}):
            self.assertRaises(exception.InvalidInput,
                              neutron.check_request, bad)

    def test_no_nic_is_a_request(self):
        # A container whose last network was detached keeps its slots.
        self.assertEqual([], neutron.check_request({'nics': []}))
        att = neutron.attachment('web', [])
        self.assertEqual(([], True, None),
                         (att['nics'], att['hotplug'], att['address']))

    def test_make_request_takes_the_drivers_dict(self):
        req = network.make_request({'network': 'neutron',
                                    'nics': [nic()]})
        self.assertEqual({'network': 'neutron', 'ports': [],
                          'nics': [nic()]}, req)
        self.assertRaises(exception.InvalidInput, network.make_request,
                          {'network': 'neutron', 'nics': [nic()]},
                          ['80:80'])


class AttachmentTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))

    def test_guest_gets_mac_address_gateway_mtu_dns(self):
        att = neutron.attachment('web', [nic(), nic(
            PORT2, mac='fa:16:3e:00:00:02', ips=[
                {'address': '10.1.0.5', 'prefix': 16,
                 'gateway': '10.1.0.1', 'version': 4},
                {'address': 'fd00::5', 'prefix': 64, 'gateway': 'fd00::1',
                 'version': 6}], dns=['10.0.0.2', '10.1.0.2'])])
        self.assertEqual('neutron', att['network'])
        self.assertEqual([{'tap': 'kzt0b5c1f2e3a4d', 'port_id': PORT,
                           'mac': 'fa:16:3e:00:00:01',
                           'checksum_offload': False},
                          {'tap': 'kzt9d8c7b6a5f4e', 'port_id': PORT2,
                           'mac': 'fa:16:3e:00:00:02',
                           'checksum_offload': False}], att['nics'])
        ifaces = att['guest']['interfaces']
        self.assertEqual({'mac': 'fa:16:3e:00:00:01',
                          'address': '10.0.0.5', 'prefix': 24,
                          'mtu': 1450, 'gateway': '10.0.0.1'}, ifaces[0])
        # One default route per family: the first NIC's IPv4 gateway,
        # the second's IPv6 one (an extra address of the interface).
        self.assertIsNone(ifaces[1]['gateway'])
        self.assertEqual([{'address': 'fd00::5', 'prefix': 64,
                           'gateway': 'fd00::1'}], ifaces[1]['extra'])
        self.assertNotIn('extra', ifaces[0])
        self.assertEqual(['10.0.0.2', '10.1.0.2'], att['guest']['dns'])
        self.assertEqual('10.0.0.5', att['address'])
        self.assertEqual('web', att['guest']['hostname'])

    def test_checksum_offload_except_on_the_userspace_datapath(self):
        att = neutron.attachment('web', [
            nic(), nic(PORT2, datapath_type='system')])
        self.assertEqual([False, True], [n['checksum_offload']
                                         for n in att['nics']])
        self.assertTrue(neutron.checksum_offload({}))

    def test_ipv6_only_and_v4_first(self):
        att = neutron.attachment('web', [nic(ips=[
            {'address': 'fd00::5', 'prefix': 64, 'gateway': 'fd00::1',
             'version': 6},
            {'address': '10.0.0.5', 'prefix': 24, 'gateway': None,
             'version': 4}]), nic(PORT2, mac='fa:16:3e:00:00:02', ips=[
                 {'address': 'fd01::5', 'prefix': 64, 'gateway': 'fd01::1',
                  'version': 6}])])
        first, second = att['guest']['interfaces']
        self.assertEqual(('10.0.0.5', None), (first['address'],
                                              first['gateway']))
        self.assertEqual('fd00::1', first['extra'][0]['gateway'])
        self.assertEqual(('fd01::5', None), (second['address'],
                                             second['gateway']))
        self.assertEqual('10.0.0.5', att['address'])

    def test_dns_falls_back_to_configuration(self):
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            group='kata_network', dns_servers=['9.9.9.9'])
        att = neutron.attachment('h', [nic(dns=[])])
        self.assertEqual(['9.9.9.9'], att['guest']['dns'])


class PluginTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        self.state = self.useFixture(fixtures.TempDir()).path
        self.priv = mock.Mock()
        self.useFixture(fixtures.MockPatch(
            'kata_zun.network.neutron._privileged', return_value=self.priv))
        self.vswitch = mock.Mock()
        self.plugin = network.get_plugin('neutron', self.state)
        self.plugin.vswitch = self.vswitch

    def record(self, cid=CID):
        return os.path.join(self.state, 'network', 'neutron',
                            cid + '.json')

    def test_plug_creates_tap_then_ovs_port(self):
        att = self.plugin.plug(CID, 'web', {'network': 'neutron',
                                            'nics': [nic()]})
        self.priv.create_tap.assert_called_once_with(
            'kzt0b5c1f2e3a4d', None, 1450, owner=os.geteuid())
        self.vswitch.plug.assert_called_once_with(
            nic(), '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f')
        self.assertTrue(os.path.exists(self.record()))
        self.assertEqual('10.0.0.5', att['address'])

    def test_fault_point_between_tap_and_ovs_port(self):
        # The fault matrix (tools/fault-matrix-zun.py) kills the privsep
        # daemon at this point: the tap made, the OVS port not yet.
        calls = mock.Mock()
        calls.attach_mock(self.priv.create_tap, 'create_tap')
        calls.attach_mock(self.vswitch.plug, 'ovs_plug')
        with mock.patch('kata_zun.runtime.faultpoint.reached') as reached:
            calls.attach_mock(reached, 'reached')
            self.plugin.plug(CID, 'w', {'network': 'neutron',
                                        'nics': [nic()]})
            self.plugin.plug_nic(CID, nic(port_id=PORT2))
        # (fileutils' atomic writes have points of their own.)
        self.assertEqual(['create_tap', 'neutron-tap-created',
                          'ovs_plug'] * 2,
                         [c[1][0] if c[0] == 'reached' else c[0]
                          for c in calls.mock_calls
                          if c[0] != 'reached' or
                          not c[1][0].startswith('atomic-write')])

    def test_failed_plug_undoes_everything(self):
        self.vswitch.plug.side_effect = RuntimeError('ovsdb down')
        self.assertRaises(net_base.NetworkError, self.plugin.plug, CID, 'w',
                          {'network': 'neutron', 'nics': [nic()]})
        self.vswitch.unplug.assert_called_once()
        self.priv.delete_link.assert_called_once_with('kzt0b5c1f2e3a4d')
        self.assertFalse(os.path.exists(self.record()))

    def test_unplug_through_the_facade(self):
        self.plugin.plug(CID, 'w', {'network': 'neutron', 'nics': [nic()]})
        with mock.patch('kata_zun.network.get_plugin',
                        wraps=network.get_plugin) as get, \
                mock.patch('kata_zun.network.neutron.NeutronPlugin.unplug',
                           return_value=True) as unplug, \
                mock.patch('kata_zun.network.bridge.BridgePlugin.unplug',
                           return_value=False):
            self.assertTrue(network.unplug(self.state, CID))
        unplug.assert_called_once_with(CID)
        self.assertEqual(['neutron', 'bridge'],
                         [c[0][0] for c in get.call_args_list])

    def test_unplug_removes_port_tap_and_record(self):
        self.plugin.plug(CID, 'w', {'network': 'neutron', 'nics': [nic()]})
        self.assertTrue(self.plugin.unplug(CID))
        self.vswitch.unplug.assert_called_once_with(
            nic(), '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f')
        self.priv.delete_link.assert_called_once_with('kzt0b5c1f2e3a4d')
        self.assertFalse(os.path.exists(self.record()))
        self.assertFalse(self.plugin.unplug(CID))

    def test_failed_unplug_keeps_the_record(self):
        self.plugin.plug(CID, 'w', {'network': 'neutron', 'nics': [nic()]})
        self.vswitch.unplug.side_effect = RuntimeError('ovsdb down')
        self.assertRaises(net_base.NetworkError, self.plugin.unplug, CID)
        self.assertTrue(os.path.exists(self.record()))

    def test_reconcile_releases_removed_containers(self):
        self.plugin.plug(CID, 'w', {'network': 'neutron', 'nics': [nic()]})
        other = 'ff' * 16
        self.plugin.plug(other, 'w', {'network': 'neutron',
                                      'nics': [nic(PORT2)]})
        self.assertEqual([other], self.plugin.reconcile(
            lambda cid: cid == CID))
        self.assertTrue(os.path.exists(self.record()))
        self.assertFalse(os.path.exists(self.record(other)))

    def test_vif_for_os_vif(self):
        vif, info = neutron.Vswitch.vif(nic(), 'u-1')
        self.assertEqual('kzt0b5c1f2e3a4d', vif.vif_name)
        self.assertEqual('bi-abc123', vif.network.bridge)
        self.assertEqual(1450, vif.network.mtu)
        self.assertEqual('fa:16:3e:00:00:01', vif.address)
        self.assertEqual(PORT, vif.port_profile.interface_id)
        self.assertEqual('netdev', vif.port_profile.datapath_type)
        self.assertTrue(vif.port_profile.create_port)
        self.assertEqual('u-1', info.uuid)

    def test_instance_uuid(self):
        self.assertEqual('6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f',
                         neutron.instance_uuid(CID))
