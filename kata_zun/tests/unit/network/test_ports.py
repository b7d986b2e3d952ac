from oslotest import base

from kata_zun import exception
from kata_zun.network import ports


class ParseTestCase(base.BaseTestCase):

    def test_forms(self):
        self.assertEqual({'proto': 'tcp', 'host_ip': '0.0.0.0',
                          'host_port': 8080, 'container_port': 80},
                         ports.parse('8080:80'))
        self.assertEqual({'proto': 'udp', 'host_ip': '127.0.0.1',
                          'host_port': 53, 'container_port': 5353},
                         ports.parse('127.0.0.1:53:5353/udp'))
        self.assertEqual('tcp', ports.parse('1:65535/tcp')['proto'])

    def test_rejects(self):
        for bad in ('80', '8080:', ':80', '0:80', '8080:0', '65536:80',
                    '8080:80/sctp', '8080-8090:80', '[::1]:80:80',
                    '1.2.3:80:80', '300.1.1.1:80:80', '224.0.0.1:80:80',
                    '255.255.255.255:80:80', 'a:b', '',
                    '8080:80/tcp;x', None, 8080):
            self.assertRaises(exception.InvalidInput, ports.parse, bad)

    def test_parse_all_refuses_a_host_port_twice(self):
        self.assertEqual(2, len(ports.parse_all(['8080:80', '8080:80/udp'])))
        self.assertEqual(2, len(ports.parse_all(['127.0.0.1:80:80',
                                                 '127.0.0.2:80:80'])))
        for pair in (['8080:80', '8080:81'],
                     ['8080:80', '127.0.0.1:8080:81']):
            self.assertRaises(exception.InvalidInput, ports.parse_all, pair)
        self.assertEqual([], ports.parse_all(None))

    def test_overlap_and_describe(self):
        any_ = ports.parse('8080:80')
        lo = ports.parse('127.0.0.1:8080:80')
        other = ports.parse('127.0.0.2:8080:80')
        self.assertTrue(ports.overlap(any_, lo))
        self.assertTrue(ports.overlap(lo, any_))
        self.assertFalse(ports.overlap(lo, other))
        self.assertFalse(ports.overlap(any_, ports.parse('8080:80/udp')))
        self.assertEqual('127.0.0.1:8080->80/tcp', ports.describe(lo))
        self.assertEqual('0.0.0.0:8080/tcp', ports.describe_host(any_))
