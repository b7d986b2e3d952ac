import os
import socket
import struct
from unittest import mock

import fixtures
from oslotest import base

from kata_zun.agent import guestnet

MAC = '02:6b:0a:58:00:02'
SPEC = {'interfaces': [{'mac': MAC, 'address': '10.88.0.2', 'prefix': 16,
                        'mtu': 1400, 'gateway': '10.88.0.1'}],
        'dns': ['10.88.0.1', 'fd00::1'], 'hostname': 'web'}


def _recording_netlink():
    """A Netlink whose requests are recorded, not sent."""
    sent = []
    nl = guestnet.Netlink.__new__(guestnet.Netlink)
    nl.request = lambda *a: sent.append(a)
    return nl, sent


class EncodingTestCase(base.BaseTestCase):

    def test_attr_padding(self):
        self.assertEqual(struct.pack('=HH', 7, 3) + b'kz\0\0',
                         guestnet.attr(3, 'kz'))
        self.assertEqual(struct.pack('=HHI', 8, 4, 1500),
                         guestnet.attr(4, 1500))
        self.assertEqual(struct.pack('=HH', 8, 1) + socket.inet_aton(
            '10.0.0.1'), guestnet.attr(1, socket.inet_aton('10.0.0.1')))

    def test_requests(self):
        nl, sent = _recording_netlink()
        nl.addr_add(5, '10.88.0.2', 16)
        mtype, flags, payload, _what = sent[-1]
        self.assertEqual(guestnet.RTM_NEWADDR, mtype)
        self.assertEqual(guestnet.NLM_F_CREATE | guestnet.NLM_F_REPLACE,
                         flags)
        self.assertEqual((socket.AF_INET, 16, 0, 0, 5),
                         struct.unpack_from('=BBBBI', payload))
        self.assertIn(socket.inet_aton('10.88.255.255'), payload)
        nl.link_set(5, up=True, mtu=1400, master=3)
        _t, _f, payload, _w = sent[-1]
        self.assertEqual((0, 0, 5, 1, 1),
                         struct.unpack_from('=BxHiII', payload))
        self.assertTrue(payload.endswith(guestnet.attr(4, 1400) +
                                         guestnet.attr(10, 3)))
        nl.default_route(5, '10.88.0.1')
        mtype, _f, payload, _w = sent[-1]
        self.assertEqual(guestnet.RTM_NEWROUTE, mtype)
        self.assertIn(socket.inet_aton('10.88.0.1'), payload)

    def test_ipv6_requests(self):
        nl, sent = _recording_netlink()
        nl.addr_add(5, 'fd00::5', 64)
        _t, _f, payload, _w = sent[-1]
        # No broadcast, no DAD: the address is usable at once.
        self.assertEqual((socket.AF_INET6, 64, guestnet.IFA_F_NODAD, 0, 5),
                         struct.unpack_from('=BBBBI', payload))
        self.assertEqual(guestnet.attr(guestnet.IFA_ADDRESS,
                                       socket.inet_pton(socket.AF_INET6,
                                                        'fd00::5')),
                         payload[8:])
        nl.default_route(5, 'fd00::1')
        _t, _f, payload, _w = sent[-1]
        self.assertEqual(socket.AF_INET6, payload[0])
        self.assertIn(socket.inet_pton(socket.AF_INET6, 'fd00::1'), payload)

    def test_real_ack_parsing(self):
        # Ask the kernel for something that fails without privileges or
        # with a bad index: the errno comes back as an OSError.
        with guestnet.Netlink() as nl:
            exc = self.assertRaises(OSError, nl.link_set, 2 ** 31 - 1,
                                    up=True)
        self.assertIn('configure link', str(exc))


class ValidateTestCase(base.BaseTestCase):

    def test_good(self):
        self.assertEqual([{'mac': MAC, 'address': '10.88.0.2', 'prefix': 16,
                           'mtu': 1400, 'gateway': '10.88.0.1',
                           'addresses': [{'address': '10.88.0.2',
                                          'prefix': 16,
                                          'gateway': '10.88.0.1'}]}],
                         guestnet.validate(SPEC))
        dual = dict(SPEC['interfaces'][0], extra=[
            {'address': 'fd00::2', 'prefix': 64, 'gateway': 'fd00::1'}])
        self.assertEqual(
            [('10.88.0.2', 16, '10.88.0.1'), ('fd00::2', 64, 'fd00::1')],
            [(a['address'], a['prefix'], a['gateway']) for a in
             guestnet.validate({'interfaces': [dual]})[0]['addresses']])
        v6 = {'mac': MAC, 'address': 'fd00::2', 'prefix': 128, 'mtu': None}
        self.assertEqual(128, guestnet.validate({'interfaces': [v6]})[0][
            'prefix'])
        self.assertEqual([], guestnet.validate({'interfaces': []}))

    def test_bad(self):
        def iface(**kw):
            d = dict(SPEC['interfaces'][0])
            d.update(kw)
            return {'interfaces': [d]}
        for bad in (None, [], {'interfaces': 'x'},
                    {'interfaces': [None]},
                    {'interfaces': [SPEC['interfaces'][0]] * 9},
                    iface(mac='02:6b:0a:58:00'), iface(mac=None),
                    iface(address='10.88.0.256'), iface(address=None),
                    iface(prefix=33), iface(prefix=None),
                    iface(prefix=True), iface(mtu=20),
                    iface(gateway='x'), iface(gateway='fd00::1'),
                    iface(address='fd00::2', prefix=129),
                    iface(address='fd00::2', gateway='10.88.0.1'),
                    iface(address='fd00::2' * 8),
                    iface(extra='x'), iface(extra=[None]),
                    iface(extra=[{'address': 'fd00::3'}]),
                    iface(extra=[{'address': 'fd00::3',
                                  'prefix': 64}] * 8),
                    {'interfaces': [], 'dns': 'x'},
                    {'interfaces': [], 'dns': ['nope']},
                    {'interfaces': [], 'dns': ['1.1.1.1'] * 9}):
            self.assertRaises(ValueError, guestnet.validate, bad)


class FakeSysNetTestCase(base.BaseTestCase):
    """A fake /sys/class/net with lo and eth0; netlink mocked."""

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.sys_net = os.path.join(self.dir, 'net')
        for name, mac in (('lo', '00:00:00:00:00:00'), ('eth0', MAC)):
            os.makedirs(os.path.join(self.sys_net, name))
            with open(os.path.join(self.sys_net, name, 'address'),
                      'w') as f:
                f.write(mac.upper() + '\n')
        self.nl = mock.MagicMock()
        self.useFixture(fixtures.MockPatchObject(
            guestnet, 'Netlink', return_value=self.nl))
        self.nl.__enter__.return_value = self.nl
        self.useFixture(fixtures.MockPatch(
            'socket.if_nametoindex',
            side_effect=lambda n: {'lo': 1, 'eth0': 2}[n]))


class ConfigureTestCase(FakeSysNetTestCase):

    def test_configure(self):
        resolv = os.path.join(self.dir, 'resolv.conf')
        result = guestnet.configure(SPEC, sys_net=self.sys_net,
                                    resolv_conf=resolv)
        self.assertEqual([{'name': 'eth0', 'mac': MAC,
                           'address': '10.88.0.2',
                           'addresses': ['10.88.0.2']}],
                         result['interfaces'])
        self.assertEqual([mock.call.link_set(1, up=True),
                          mock.call.link_set(2, up=True, mtu=1400),
                          mock.call.addr_add(2, '10.88.0.2', 16),
                          mock.call.default_route(2, '10.88.0.1')],
                         [c for c in self.nl.mock_calls
                          if c[0] in ('link_set', 'addr_add',
                                      'default_route')])
        with open(resolv) as f:
            self.assertEqual('nameserver 10.88.0.1\nnameserver fd00::1\n',
                             f.read())

    def test_dual_stack(self):
        spec = {'interfaces': [dict(SPEC['interfaces'][0], extra=[
            {'address': 'fd00::2', 'prefix': 64, 'gateway': 'fd00::1'}])]}
        guestnet.configure(spec, sys_net=self.sys_net, resolv_conf=None)
        self.assertEqual([mock.call.addr_add(2, '10.88.0.2', 16),
                          mock.call.addr_add(2, 'fd00::2', 64),
                          mock.call.default_route(2, '10.88.0.1'),
                          mock.call.default_route(2, 'fd00::1')],
                         [c for c in self.nl.mock_calls
                          if c[0] in ('addr_add', 'default_route')])

    def test_loopback_only_and_missing_nic(self):
        guestnet.configure({'interfaces': []}, sys_net=self.sys_net,
                           resolv_conf=None)
        self.nl.link_set.assert_called_once_with(1, up=True)
        self.useFixture(fixtures.MockPatchObject(guestnet, 'NIC_WAIT', 0))
        spec = {'interfaces': [dict(SPEC['interfaces'][0],
                                    mac='02:00:00:00:00:09')]}
        exc = self.assertRaises(ValueError, guestnet.configure, spec,
                                sys_net=self.sys_net, resolv_conf=None)
        self.assertIn('02:00:00:00:00:09', str(exc))


class HotplugTestCase(FakeSysNetTestCase):
    """add_interface/remove_interface against a fake sysfs."""

    def setUp(self):
        super().setUp()
        # eth0 is a virtio NIC on PCI device 0000:01:00.0 in slot "1".
        pci = os.path.join(self.dir, 'devices', '0000:01:00.0')
        os.makedirs(os.path.join(pci, 'virtio0'))
        os.symlink(os.path.join(pci, 'virtio0'),
                   os.path.join(self.sys_net, 'eth0', 'device'))
        self.slots = os.path.join(self.dir, 'slots')
        for name, address in (('2', '0000:02:00'), ('1', '0000:01:00')):
            os.makedirs(os.path.join(self.slots, name))
            with open(os.path.join(self.slots, name, 'address'), 'w') as f:
                f.write(address + '\n')

    def _power(self, slot):
        path = os.path.join(self.slots, slot, 'power')
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()

    def test_add_interface(self):
        result = guestnet.add_interface(SPEC['interfaces'][0],
                                        sys_net=self.sys_net)
        self.assertEqual(('eth0', '10.88.0.2'),
                         (result['name'], result['address']))
        self.nl.addr_add.assert_called_once_with(2, '10.88.0.2', 16)
        self.nl.default_route.assert_called_once_with(2, '10.88.0.1')
        self.assertRaises(ValueError, guestnet.add_interface,
                          dict(SPEC['interfaces'][0], prefix=33),
                          sys_net=self.sys_net)
        self.assertRaises(ValueError, guestnet.add_interface, None,
                          sys_net=self.sys_net)

    def test_remove_interface_powers_off_its_slot(self):
        result = guestnet.remove_interface(MAC.upper(), sys_net=self.sys_net,
                                           sys_slots=self.slots)
        self.assertEqual(('eth0', '1'), (result['name'], result['slot']))
        self.nl.link_set.assert_called_once_with(2, up=False)
        self.assertEqual('0', self._power('1'))
        self.assertIsNone(self._power('2'))

    def test_remove_interface_without_slot_or_nic(self):
        os.unlink(os.path.join(self.slots, '1', 'address'))
        result = guestnet.remove_interface(MAC, sys_net=self.sys_net,
                                           sys_slots=self.slots)
        self.assertEqual(('eth0', None), (result['name'], result['slot']))
        self.nl.link_set.assert_called_once_with(2, up=False)
        gone = guestnet.remove_interface('02:00:00:00:00:09',
                                         sys_net=self.sys_net,
                                         sys_slots=self.slots)
        self.assertIsNone(gone['name'])
        self.assertRaises(ValueError, guestnet.remove_interface, 'eth0',
                          sys_net=self.sys_net, sys_slots=self.slots)

    def test_pci_address(self):
        self.assertEqual('0000:01:00.0',
                         guestnet.pci_address('eth0', self.sys_net))
        self.assertIsNone(guestnet.pci_address('lo', self.sys_net))
