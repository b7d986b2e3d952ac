import ipaddress
import os

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun import network
from kata_zun.network import base as net_base
from kata_zun.network import bridge
from kata_zun.network import hostnet
from kata_zun.network import ipam
from kata_zun.network import ports
from kata_zun.runtime import fileutils

ORIG_PRIVILEGED = bridge._privileged
CID1 = '1' * 64
CID2 = '2' * 64
BR = 'kzu0'


class FakePriv(object):
    """Records privileged calls and what the lease file held at each."""

    def __init__(self, lease_path):
        self.lease_path = lease_path
        self.calls = []
        self.fail = None
        self.fail_once = True

    def _record(self, name, *args, **kwargs):
        try:
            leased = set(fileutils.read_json(self.lease_path)['leases'])
        except OSError:
            leased = set()
        self.calls.append((name, args, kwargs, leased))
        if name == self.fail or (isinstance(self.fail, tuple) and
                                 name in self.fail):
            if self.fail_once:
                self.fail = None
            raise OSError(17, 'boom in %s' % name)

    def __getattr__(self, name):
        if name in ('ensure_bridge', 'enable_ip_forward', 'create_tap',
                    'nat_publish', 'nat_unpublish', 'delete_link'):
            return lambda *a, **k: self._record(name, *a, **k)
        raise AttributeError(name)

    def names(self):
        return [c[0] for c in self.calls]


class BridgePluginTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.state_path = os.path.join(self.dir, 'state')
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        cfg.config(bridge=BR, subnet='10.213.9.0/24', mtu=1450,
                   dns_servers=['10.213.9.1'], group='kata_network')
        self.table = [{'dst': ipaddress.IPv4Network('127.0.0.0/8'),
                       'dev': 'lo', 'table': 'local', 'type': 'local'}]
        self.useFixture(fixtures.MockPatchObject(
            hostnet, 'routes', side_effect=lambda: self.table))
        self.useFixture(fixtures.MockPatchObject(hostnet, 'SYS_NET',
                                                 self.dir))
        self.useFixture(fixtures.MockPatchObject(hostnet, 'link_ipv4',
                                                 return_value=None))
        self.port_check = self.useFixture(fixtures.MockPatchObject(
            hostnet, 'check_port_free')).mock
        self.priv = FakePriv(os.path.join(self.state_path, 'network',
                                          'leases-%s.json' % BR))
        self.privileged = self.useFixture(fixtures.MockPatchObject(
            bridge, '_privileged', return_value=self.priv)).mock
        self.plugin = network.get_plugin('bridge', self.state_path)

    def _leases(self):
        return fileutils.read_json(self.priv.lease_path)['leases']

    def test_plug_lease_first_then_privileged_steps(self):
        request = network.make_request('bridge', ['8080:80'])
        att = self.plugin.plug(CID1, 'web', request)
        self.assertEqual(['ensure_bridge', 'enable_ip_forward',
                          'create_tap', 'nat_publish'], self.priv.names())
        # The lease existed before anything was made on the host.
        for _name, _a, _k, leased in self.priv.calls:
            self.assertEqual({CID1}, leased)
        self.assertEqual(('ensure_bridge', (BR, '10.213.9.1', 24, 1450)),
                         self.priv.calls[0][:2])
        self.assertEqual((ipam.tap_name(CID1), BR, 1450),
                         self.priv.calls[2][1])
        self.assertEqual({'owner': os.geteuid()}, self.priv.calls[2][2])
        # Typed values only, never rule text.
        self.assertEqual((BR, '10.213.9.0/24', CID1, '10.213.9.2',
                          request['ports']), self.priv.calls[3][1])
        self.assertEqual({
            'network': 'bridge', 'bridge': BR,
            'nics': [{'tap': ipam.tap_name(CID1),
                      'mac': '02:6b:0a:d5:09:02'}],
            'guest': {'interfaces': [{'mac': '02:6b:0a:d5:09:02',
                                      'address': '10.213.9.2',
                                      'prefix': 24, 'mtu': 1450,
                                      'gateway': '10.213.9.1'}],
                      'dns': ['10.213.9.1'], 'hostname': 'web'},
            'address': '10.213.9.2', 'prefix': 24,
            'gateway': '10.213.9.1', 'mac': '02:6b:0a:d5:09:02',
            'mtu': 1450, 'ports': request['ports']}, att)
        self.assertEqual(request['ports'], self._leases()[CID1]['ports'])
        # Plugging again (a restart) keeps the address.
        again = self.plugin.plug(CID1, 'web', request)
        self.assertEqual('10.213.9.2', again['address'])
        self.assertEqual(1, len(self._leases()))

    def test_port_conflicts_make_nothing(self):
        self.plugin.plug(CID1, 'a', network.make_request('bridge',
                                                         ['8080:80']))
        self.priv.calls = []
        for spec in ('8080:81', '127.0.0.1:8080:80'):
            request = network.make_request('bridge', [spec])
            exc = self.assertRaises(exception.Conflict, self.plugin.plug,
                                    CID2, 'b', request)
            self.assertIn('already published by container 111111111111',
                          str(exc))
            self.assertRaises(exception.Conflict, self.plugin.validate,
                              request)
        self.assertEqual([], self.priv.calls)
        self.assertEqual({CID1}, set(self._leases()))
        # Another protocol is another port.
        self.plugin.plug(CID2, 'b', network.make_request('bridge',
                                                         ['8080:80/udp']))
        self.port_check.side_effect = exception.Conflict(reason='bound')
        self.assertRaises(exception.Conflict, self.plugin.plug, '3' * 64,
                          'c', network.make_request('bridge', ['9:9']))
        self.assertEqual({CID1, CID2}, set(self._leases()))

    def test_create_time_check_ignores_vanished_containers(self):
        self.plugin.plug(CID1, 'a', network.make_request('bridge',
                                                         ['8080:80']))
        request = network.make_request('bridge', ['8080:80'])
        self.assertRaises(exception.Conflict, self.plugin.validate,
                          request, lambda cid: True)
        # CID1's record is gone: its lease is released at the next start.
        network.validate(self.state_path, request, lambda cid: False)
        self.plugin.reconcile(lambda cid: False)
        self.plugin.plug(CID2, 'b', request)
        self.assertEqual({CID2}, set(self._leases()))

    def test_failure_undoes_everything_of_this_container(self):
        self.plugin.plug(CID1, 'a', network.make_request('bridge', []))
        self.priv.calls = []
        self.priv.fail = 'nat_publish'
        exc = self.assertRaises(net_base.NetworkError, self.plugin.plug,
                                CID2, 'b',
                                network.make_request('bridge', ['1:1']))
        self.assertIn('boom in nat_publish', str(exc))
        self.priv.fail = None
        names = self.priv.names()
        self.assertEqual(['ensure_bridge', 'enable_ip_forward',
                          'create_tap', 'nat_publish', 'nat_unpublish',
                          'delete_link'], names)
        self.assertEqual((BR, CID2), self.priv.calls[4][1])
        self.assertEqual((ipam.tap_name(CID2),), self.priv.calls[5][1])
        self.assertEqual({CID1}, set(self._leases()))

    def test_failed_undo_keeps_the_lease(self):
        self.priv.fail_once = False
        self.priv.fail = ('nat_publish', 'nat_unpublish')
        self.assertRaises(net_base.NetworkError, self.plugin.plug, CID2,
                          'b', network.make_request('bridge', []))
        # Rules could not be removed: the lease still records the
        # container, so its rm (or a restart) finishes the job.
        self.assertEqual({CID2}, set(self._leases()))
        self.assertIn('delete_link', self.priv.names())
        self.priv.fail = None
        self.assertTrue(self.plugin.unplug(CID2))
        self.assertEqual({}, self._leases())

    def test_unplug_and_reconcile(self):
        for cid in (CID1, CID2):
            self.plugin.plug(cid, 'x', network.make_request('bridge', []))
        self.privileged.reset_mock()
        self.priv.calls = []
        # Nothing stale: no privileges needed at all.
        self.assertEqual([], self.plugin.reconcile(lambda cid: True))
        self.privileged.assert_not_called()
        self.assertEqual([CID2], self.plugin.reconcile(
            lambda cid: cid == CID1))
        self.assertEqual(['nat_unpublish', 'delete_link'],
                         self.priv.names())
        self.assertEqual({CID1}, set(self._leases()))
        self.assertTrue(network.unplug(self.state_path, CID1))
        self.assertEqual({}, self._leases())
        self.privileged.reset_mock()
        self.assertFalse(network.unplug(self.state_path, CID1))
        self.privileged.assert_not_called()

    def test_release_failures(self):
        for cid in (CID1, CID2):
            self.plugin.plug(cid, 'x', network.make_request('bridge', []))
        self.priv.fail, self.priv.fail_once = 'delete_link', False
        exc = self.assertRaises(net_base.NetworkError, network.unplug,
                                self.state_path, CID1)
        self.assertIn('lease is kept', str(exc))
        # Reconciliation is best effort: it logs and keeps the lease.
        self.assertEqual([], self.plugin.reconcile(lambda cid: False))
        self.assertEqual({CID1, CID2}, set(self._leases()))
        self.priv.fail = None
        self.assertEqual({CID1, CID2},
                         set(self.plugin.reconcile(lambda cid: False)))

    def test_no_privileges_is_a_clear_error(self):
        import kata_zun.privsep
        self.useFixture(fixtures.MockPatchObject(
            kata_zun.privsep, 'start',
            side_effect=OSError(1, 'sudo: a password is required')))
        exc = self.assertRaises(net_base.NetworkError, ORIG_PRIVILEGED)
        self.assertIn('needs root, or sudo for privsep-helper', str(exc))

    def test_host_overlap_and_bad_settings_make_nothing(self):
        self.table.append({'dst': ipaddress.IPv4Network('10.213.0.0/16'),
                           'dev': 'kzother', 'table': 'main',
                           'type': 'unicast'})
        request = network.make_request('bridge', [])
        exc = self.assertRaises(net_base.NetworkError, self.plugin.plug,
                                CID1, 'a', request)
        self.assertIn('overlaps 10.213.0.0/16 dev kzother', str(exc))
        self.assertRaises(net_base.NetworkError, self.plugin.validate,
                          request)
        self.assertEqual([], self.priv.calls)
        self.assertFalse(os.path.exists(self.priv.lease_path))
        for br, subnet in (('eth0', '10.1.0.0/24'), ('kzt1', '10.1.0.0/24'),
                           ('kz0', '127.0.0.0/8'), ('kz0', '10.1.0.1/24'),
                           ('kz0', '10.1.0.0/31'), ('kz0', '224.0.0.0/24'),
                           ('kz0', 'nope')):
            self.plugin.bridge, self.plugin.subnet_text = br, subnet
            self.assertRaises(net_base.NetworkError, self.plugin.validate,
                              request)

    def test_existing_bridge_with_another_address(self):
        os.makedirs(os.path.join(self.dir, BR, 'bridge'))
        hostnet.link_ipv4.return_value = ['10.5.0.1/24']
        exc = self.assertRaises(net_base.NetworkError, self.plugin.validate,
                                network.make_request('bridge', []))
        self.assertIn('has address 10.5.0.1/24', str(exc))
        hostnet.link_ipv4.return_value = ['10.213.9.1/24']
        self.plugin.validate(network.make_request('bridge', []))
        os.makedirs(os.path.join(self.dir, 'kznotbr'))
        self.plugin.bridge = 'kznotbr'
        self.assertRaises(net_base.NetworkError, self.plugin.validate,
                          network.make_request('bridge', []))


class FacadeTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_make_request(self):
        self.assertEqual({'network': 'none', 'ports': []},
                         network.make_request('none'))
        for bad in ('host', 'Bridge', '', None):
            self.assertRaises(exception.InvalidInput, network.make_request,
                              bad)
        self.assertRaises(exception.InvalidInput, network.get_plugin,
                          'overlay', self.dir)
        self.assertRaises(exception.InvalidInput, network.validate,
                          self.dir, network.make_request('none', ['1:1']))

    def test_none_plug_writes_attachment(self):
        cdir = os.path.join(self.dir, 'c')
        os.makedirs(cdir)
        att = network.plug(self.dir, cdir, CID1, 'h',
                           network.make_request('none'), lambda c: True)
        self.assertEqual({'interfaces': [], 'dns': [], 'hostname': 'h'},
                         att['guest'])
        self.assertEqual(att, network.read_attachment(cdir))
        self.assertIsNone(network.read_attachment(self.dir))
        self.assertEqual('none', network.settings(cdir, None)['Network'])

    def test_settings_and_container_spec(self):
        cdir = self.dir
        request = network.make_request('bridge', ['127.0.0.1:8080:80'])
        before = network.settings(cdir, request)
        self.assertEqual(('bridge', None), (before['Network'],
                                            before['IPAddress']))
        self.assertEqual({'80/tcp': [{'HostIp': '127.0.0.1',
                                      'HostPort': '8080'}]},
                         before['Ports'])
        att = {'network': 'bridge', 'address': '10.0.0.2',
               'nics': [{'tap': 'kzt1', 'mac': 'm'}],
               'guest': {'dns': ['10.0.0.1'], 'hostname': 'web'},
               'ports': ports.parse_all(['9:9/udp'])}
        fileutils.write_json(os.path.join(cdir, network.ATTACHMENT), att)
        after = network.settings(cdir, request)
        self.assertEqual(('10.0.0.2', 'kzt1', ['10.0.0.1']),
                         (after['IPAddress'], after['Tap'], after['DNS']))
        self.assertEqual({'9/udp': [{'HostIp': '0.0.0.0',
                                     'HostPort': '9'}]}, after['Ports'])
        spec = {'hostname': 'web', 'dns': [], 'hosts': ['1.2.3.4\tx']}
        self.assertEqual({'hostname': 'web', 'dns': ['10.0.0.1'],
                          'hosts': ['1.2.3.4\tx', '10.0.0.2\tweb']},
                         network.container_spec(spec, att))
        self.assertEqual(['8.8.8.8'], network.container_spec(
            dict(spec, dns=['8.8.8.8']), att)['dns'])
        self.assertIs(spec, network.container_spec(spec, None))
