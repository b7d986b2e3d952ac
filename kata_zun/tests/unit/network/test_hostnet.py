import ipaddress
import os
import socket

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.network import hostnet

N = ipaddress.IPv4Network
TABLE = [
    {'dst': 'default', 'dev': 'eth0', 'table': 'main', 'type': 'unicast'},
    {'dst': N('192.0.2.0/24'), 'dev': 'eth0', 'table': 'main',
     'type': 'unicast'},
    {'dst': N('127.0.0.0/8'), 'dev': 'lo', 'table': 'local',
     'type': 'local'},
    {'dst': N('10.88.0.0/16'), 'dev': 'kz0', 'table': 'main',
     'type': 'unicast'},
]


class HostNetTestCase(base.BaseTestCase):

    def test_overlaps(self):
        self.assertEqual([], hostnet.overlaps(N('10.88.0.0/16'), 'kz0',
                                              TABLE))
        self.assertEqual(['10.88.0.0/16 dev kz0'],
                         hostnet.overlaps(N('10.88.5.0/24'), 'kz1', TABLE))
        self.assertEqual(['192.0.2.0/24 dev eth0'],
                         hostnet.overlaps(N('192.0.0.0/16'), None, TABLE))
        self.assertEqual(['127.0.0.0/8 dev lo'],
                         hostnet.overlaps(N('127.1.0.0/16'), None, TABLE))

    def test_routes_of_this_host_parse(self):
        # Whatever this host has, it parses into networks.
        for r in hostnet.routes():
            self.assertTrue(r['dst'] == 'default' or
                            isinstance(r['dst'], N))

    def test_default_mtu(self):
        d = self.useFixture(fixtures.TempDir()).path
        os.makedirs(os.path.join(d, 'eth0'))
        with open(os.path.join(d, 'eth0', 'mtu'), 'w') as f:
            f.write('1400\n')
        self.assertEqual(1400, hostnet.default_mtu(TABLE, sys_net=d))
        self.assertEqual(1500, hostnet.default_mtu(TABLE[1:], sys_net=d))

    def test_host_dns(self):
        d = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(d, 'resolv.conf')
        with open(path, 'w') as f:
            f.write('# x\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n'
                    'nameserver ::1\nnameserver fd00::53\nsearch x\n'
                    'nameserver bogus\nnameserver 10.1.1.1\n')
        self.assertEqual(['10.1.1.1', 'fd00::53'], hostnet.host_dns(path))
        self.assertEqual([], hostnet.host_dns(path + '.missing'))

    def test_check_port_free(self):
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        mapping = {'proto': 'tcp', 'host_ip': '127.0.0.1',
                   'host_port': port, 'container_port': 80}
        self.assertRaises(exception.Conflict, hostnet.check_port_free,
                          mapping)
        self.assertRaises(exception.Conflict, hostnet.check_port_free,
                          dict(mapping, host_ip='0.0.0.0'))
        hostnet.check_port_free(dict(mapping, proto='udp'))
        self.assertRaises(exception.InvalidInput, hostnet.check_port_free,
                          dict(mapping, host_ip='192.0.2.254'))
