"""The driver's Zun-mode networking: Neutron ports as zun makes them."""

import types
from unittest import mock

from neutronclient.common import exceptions as n_exc
from oslo_config import fixture as config_fixture
from oslotest import base
from zun.common import exception as zun_exc

from kata_zun import conf

UUID = '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f'
NET = '11111111-2222-3333-4444-555555555555'
PORT = '0b5c1f2e-3a4d-4e6f-8a9b-0c1d2e3f4a5b'


def bound_port(**kw):
    port = {'id': PORT, 'network_id': NET, 'mac_address': 'fa:16:3e:0:0:1',
            'binding:vif_type': 'ovs',
            'binding:vif_details': {'bridge_name': 'bi-abc123',
                                    'datapath_type': 'netdev'},
            'fixed_ips': [{'ip_address': '10.0.0.5', 'subnet_id': 's1'}],
            'security_groups': ['sg-default']}
    port.update(kw)
    return port


class DriverNetworkTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        self.mod = driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        self.rt.create.return_value = mock.Mock(id=UUID.replace('-', ''))
        self.rt.images.get.return_value = mock.Mock(id='sha256:x',
                                                    config={})
        self.api = mock.Mock()
        self.api.show_network.return_value = {'network': {'mtu': 1450}}
        self.api.show_subnet.return_value = {'subnet': {
            'cidr': '10.0.0.0/24', 'gateway_ip': '10.0.0.1',
            'ip_version': 4, 'dns_nameservers': ['10.0.0.2']}}
        addrs = [{'addr': '10.0.0.5', 'version': 4, 'port': PORT,
                  'subnet_id': 's1', 'preserve_on_delete': False}]
        self.api.create_or_update_port.return_value = (addrs, bound_port())
        self.addrs = addrs
        patcher = mock.patch.object(driver.KataDriver, '_neutron',
                                    return_value=self.api)
        patcher.start()
        self.addCleanup(patcher.stop)
        sg = mock.patch('zun.common.utils.get_security_group_ids',
                        side_effect=lambda ctx, groups: groups or None)
        sg.start()
        self.addCleanup(sg.stop)

    def container(self, **kw):
        c = types.SimpleNamespace(
            uuid=UUID, container_id=None, privileged=False, entrypoint=None,
            command=['sleep', '1'], workdir=None, environment={},
            memory=None, cpu=None, restart_policy=None, hostname=None,
            auto_remove=False, labels={}, tty=False, interactive=False,
            healthcheck=None, security_groups=['sg1'], exposed_ports=None,
            host='h1', addresses=None, save=mock.Mock())
        c.__dict__.update(kw)
        return c

    def create(self, c, networks):
        return self.driver.create('ctx', c, {'repo': 'busybox', 'tag': '',
                                             'id': 'sha256:x'}, networks,
                                  {})

    def test_create_makes_ports_like_zun(self):
        c = self.container()
        requested = [{'network': NET, 'port': '', 'fixed_ip': '',
                      'preserve_on_delete': False}]
        self.create(c, requested)
        self.api.create_or_update_port.assert_called_once_with(
            c, NET, requested[0], 'compute:zun', security_groups=['sg1'],
            set_binding_host=True)
        self.assertEqual({NET: self.addrs}, c.addresses)
        request = self.rt.create.call_args[1]['network']
        self.assertEqual('neutron', request['network'])
        self.assertEqual([{
            'port_id': PORT, 'net_id': NET, 'mac': 'fa:16:3e:0:0:1',
            'mtu': 1450, 'bridge': 'bi-abc123', 'datapath_type': 'netdev',
            'device_id': UUID, 'dns': ['10.0.0.2'],
            'ips': [{'address': '10.0.0.5', 'prefix': 24,
                     'gateway': '10.0.0.1', 'version': 4,
                     'subnet_id': 's1'}]}], request['nics'])
        # Saved once the port was made, and once created.
        self.assertEqual([mock.call('ctx')] * 2, c.save.call_args_list)

    def _saved_addresses(self, c):
        """Record what zun's database holds: c.addresses at each save."""
        saved = []
        c.save.side_effect = lambda ctx: saved.append(
            dict(c.addresses or {}))
        return saved

    def test_create_saves_ports_before_the_runtime_runs(self):
        # Found by tools/fault-matrix-zun.py --neutron (zun-compute
        # killed after the port was made): zun's record did not name the
        # port, so the delete left it in Neutron.
        c = self.container()
        saved = self._saved_addresses(c)
        self.rt.create.side_effect = lambda *a, **kw: self.assertEqual(
            [{NET: self.addrs}], saved) or mock.Mock(id=UUID.replace('-',
                                                                     ''))
        self.create(c, [{'network': NET, 'preserve_on_delete': False}])
        self.rt.create.assert_called_once()

    def test_create_failure_forgets_released_ports(self):
        c = self.container()
        saved = self._saved_addresses(c)
        self.rt.create.side_effect = RuntimeError('no guest')
        self.assertRaises(RuntimeError, self.create, c,
                          [{'network': NET, 'preserve_on_delete': False}])
        self.api.delete_or_unbind_ports.assert_called_once_with(
            {PORT}, {PORT})
        self.assertEqual({}, c.addresses)
        self.assertEqual([{NET: self.addrs}, {}], saved)

    def test_bridge_from_configuration_when_not_reported(self):
        self.cfg.config(group='kata_network', integration_bridge='br-x')
        self.api.create_or_update_port.return_value = (
            self.addrs, bound_port(**{'binding:vif_details': {}}))
        self.create(self.container(), [{'network': NET,
                                        'preserve_on_delete': False}])
        nic = self.rt.create.call_args[1]['network']['nics'][0]
        self.assertEqual(('br-x', 'system'),
                         (nic['bridge'], nic['datapath_type']))

    def test_unbound_port_fails_and_is_released(self):
        self.api.create_or_update_port.return_value = (
            self.addrs, bound_port(**{'binding:vif_type': 'binding_failed'}))
        c = self.container()
        self.assertRaises(zun_exc.ZunException, self.create, c,
                          [{'network': NET, 'preserve_on_delete': False}])
        self.api.delete_or_unbind_ports.assert_called_once_with(
            {PORT}, {PORT})
        self.rt.create.assert_not_called()

    def test_runtime_failure_releases_ports(self):
        self.rt.create.side_effect = RuntimeError('no guest')
        preserved = [dict(self.addrs[0], preserve_on_delete=True)]
        self.api.create_or_update_port.return_value = (preserved,
                                                       bound_port())
        self.assertRaises(RuntimeError, self.create, self.container(),
                          [{'network': NET, 'port': PORT,
                            'preserve_on_delete': True}])
        # The user's port is unbound, not deleted.
        self.api.delete_or_unbind_ports.assert_called_once_with({PORT},
                                                                set())

    def test_privileged_reaches_the_runtime(self):
        # Allowed now: every capability inside the guest, no host device.
        self.create(self.container(), [])
        self.assertIs(False, self.rt.create.call_args[1]['privileged'])
        self.create(self.container(privileged=True), [])
        self.assertIs(True, self.rt.create.call_args[1]['privileged'])

    def test_no_networks_or_zun_network_none(self):
        c = self.container()
        self.create(c, [])
        self.assertEqual({}, c.addresses)
        self.assertIsNone(self.rt.create.call_args[1]['network'])
        self.cfg.config(group='kata_network', zun_network='none')
        self.create(c, [{'network': NET, 'preserve_on_delete': False}])
        self.api.create_or_update_port.assert_not_called()
        self.assertEqual({}, c.addresses)

    def test_exposed_ports_get_a_security_group(self):
        self.api.create_security_group.return_value = {
            'security_group': {'id': 'sg-exp'}}
        c = self.container(exposed_ports={'80/tcp': {}})
        self.create(c, [{'network': NET, 'preserve_on_delete': False}])
        self.api.create_security_group.assert_called_once_with(
            {'security_group': {'name': 'zun-' + UUID}})
        self.api.expose_ports.assert_called_once_with('sg-exp',
                                                      {'80/tcp': {}})
        self.assertEqual(['sg1', 'sg-exp'], c.security_groups)
        self.assertEqual(['sg1', 'sg-exp'], self.api.create_or_update_port
                         .call_args[1]['security_groups'])

    def test_delete_removes_sandbox_then_ports_and_group(self):
        self.api.list_security_groups.return_value = {
            'security_groups': [{'id': 'sg-exp'}]}
        c = self.container(container_id='ab' * 16, exposed_ports={
            '80/tcp': {}}, addresses={NET: self.addrs + [
                {'addr': '10.0.0.6', 'version': 4, 'port': 'p2',
                 'subnet_id': 's1', 'preserve_on_delete': True}]})
        order = mock.Mock()
        order.attach_mock(self.rt.remove, 'remove')
        order.attach_mock(self.api.delete_or_unbind_ports, 'ports')
        order.attach_mock(self.api.delete_security_group, 'group')
        self.driver.delete('ctx', c, True)
        self.assertEqual([
            mock.call.remove('ab' * 16, force=True),
            mock.call.ports({PORT, 'p2'}, {PORT}),
            mock.call.group('sg-exp')], order.mock_calls)

    def test_delete_of_a_container_without_ports(self):
        self.driver.delete('ctx', self.container(container_id=None), True)
        self.api.delete_or_unbind_ports.assert_not_called()

    def test_add_and_remove_security_group(self):
        c = self.container(addresses={NET: self.addrs})
        self.api.show_port.return_value = {'port': bound_port()}
        self.driver.add_security_group('ctx', c, 'sg-new')
        self.api.update_port.assert_called_once_with(
            PORT, {'port': {'security_groups': ['sg-default', 'sg-new']}},
            admin=True)
        self.api.update_port.reset_mock()
        self.api.show_port.return_value = {'port': bound_port(
            security_groups=['sg-default', 'sg-new'])}
        self.driver.remove_security_group('ctx', c, 'sg-new')
        self.api.update_port.assert_called_once_with(
            PORT, {'port': {'security_groups': ['sg-default']}}, admin=True)

    def test_security_group_refused_by_neutron(self):
        c = self.container(addresses={NET: self.addrs})
        self.api.show_port.return_value = {'port': bound_port()}
        self.api.update_port.side_effect = n_exc.BadRequest('no')
        self.assertRaises(zun_exc.SecurityGroupCannotBeApplied,
                          self.driver.add_security_group, 'ctx', c, 'sg')

    def _stopped_sandbox(self):
        sandbox = mock.Mock(id='ab' * 16, status='exited', shim_alive=False,
                            config={'network': {'network': 'neutron',
                                                'nics': [{'net_id': 'other',
                                                          'port_id': 'p0'}]}})
        self.rt.get.return_value = sandbox
        return sandbox

    def test_attach_saves_the_port_before_plugging_it(self):
        # Found by tools/fault-matrix-zun.py --neutron --at
        # neutron-tap-created (network x compute): zun-compute killed
        # while the runtime plugged the new port; zun's record did not
        # name it and the container's delete left it in Neutron, bound.
        c = self.container(container_id='ab' * 16, addresses={'other': []})
        self._stopped_sandbox()
        saved = self._saved_addresses(c)
        self.rt.set_network.side_effect = lambda *a: self.assertEqual(
            [{'other': [], NET: self.addrs}], saved)
        self.driver.network_attach('ctx', c, {'network': NET,
                                              'preserve_on_delete': False})
        self.rt.set_network.assert_called_once()
        self.assertEqual({'other': [], NET: self.addrs}, c.addresses)

    def test_failed_attach_forgets_the_released_port(self):
        c = self.container(container_id='ab' * 16, addresses={'other': []})
        self._stopped_sandbox()
        saved = self._saved_addresses(c)
        self.rt.set_network.side_effect = RuntimeError('hotplug failed')
        self.assertRaises(RuntimeError, self.driver.network_attach,
                          'ctx', c, {'network': NET,
                                     'preserve_on_delete': False})
        self.api.delete_or_unbind_ports.assert_called_once_with(
            {PORT}, {PORT})
        self.assertEqual({'other': []}, c.addresses)
        self.assertEqual({'other': []}, saved[-1])

    def test_attach_and_detach_unless_paused(self):
        c = self.container(container_id='ab' * 16,
                           addresses={'other': []})
        sandbox = mock.Mock(id='ab' * 16, status='exited', shim_alive=False,
                            config={'network': {'network': 'neutron',
                                                'nics': [{'net_id': 'other',
                                                          'port_id': 'p0'}]}})
        self.rt.get.return_value = sandbox
        self.driver.network_attach('ctx', c, {'network': NET,
                                              'preserve_on_delete': False})
        request = self.rt.set_network.call_args[0][1]
        self.assertEqual(['p0', PORT],
                         [n['port_id'] for n in request['nics']])
        self.assertEqual({'other': [], NET: self.addrs}, c.addresses)
        self.assertRaises(zun_exc.ZunException, self.driver.network_attach,
                          'ctx', c, {'network': NET})
        self.driver.network_detach('ctx', c, NET)
        self.assertEqual(['p0'], [n['port_id'] for n in
                                  self.rt.set_network.call_args[0][1][
                                      'nics']])
        self.api.delete_or_unbind_ports.assert_called_once_with({PORT},
                                                                {PORT})
        self.api.delete_security_group.assert_not_called()
        self.assertEqual({'other': []}, c.addresses)
        # The last network detached: still a Neutron request (slots).
        self.driver.network_detach('ctx', c, 'other')
        self.assertEqual({'network': 'neutron', 'nics': []},
                         self.rt.set_network.call_args[0][1])
        # Running: the runtime hotplugs; paused: refused before any port.
        sandbox.status, sandbox.shim_alive = 'running', True
        self.api.create_port.reset_mock()
        self.driver.network_attach('ctx', c, {'network': NET})
        # (the mocked runtime still holds p0)
        request = self.rt.set_network.call_args[0][1]
        self.assertEqual(['p0', PORT],
                         [n['port_id'] for n in request['nics']])
        sandbox.status = 'paused'
        self.api.create_port.reset_mock()
        self.assertRaises(zun_exc.Conflict, self.driver.network_detach,
                          'ctx', c, NET)
        self.assertRaises(zun_exc.Conflict, self.driver.network_attach,
                          'ctx', c, {'network': 'n3'})
        self.api.create_port.assert_not_called()
