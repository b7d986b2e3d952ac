from oslotest import base

from kata_zun.network import nftrules
from kata_zun.network import ports

CID = 'ab' * 32
TAG = 'kz:kz0:' + CID


class RulesTestCase(base.BaseTestCase):

    def test_base_ruleset(self):
        self.assertEqual([
            'add table inet kata_zun',
            'add chain inet kata_zun prerouting { type nat hook prerouting '
            'priority -100; policy accept; }',
            'add chain inet kata_zun output { type nat hook output '
            'priority -100; policy accept; }',
            'add chain inet kata_zun postrouting { type nat hook '
            'postrouting priority 100; policy accept; }',
        ], nftrules.base_ruleset())

    def test_bridge_rules(self):
        self.assertEqual([
            'add rule inet kata_zun postrouting ip saddr 10.88.0.0/16 '
            'oifname != "kz0" masquerade comment "kz-br:kz0"',
            'add rule inet kata_zun postrouting oifname "kz0" ip saddr '
            '127.0.0.0/8 masquerade comment "kz-br:kz0"',
            'add rule inet kata_zun postrouting oifname "kz0" ip saddr '
            '10.88.0.0/16 ct status dnat masquerade comment "kz-br:kz0"',
        ], nftrules.bridge_rules('kz0', '10.88.0.0/16'))

    def test_port_rules(self):
        mappings = ports.parse_all(['8080:80', '127.0.0.1:5353:53/udp'])
        self.assertEqual([
            'add rule inet kata_zun prerouting fib daddr type local tcp '
            'dport 8080 dnat ip to 10.88.0.2:80 comment "%s"' % TAG,
            'add rule inet kata_zun output fib daddr type local tcp '
            'dport 8080 dnat ip to 10.88.0.2:80 comment "%s"' % TAG,
            'add rule inet kata_zun prerouting ip daddr 127.0.0.1 udp '
            'dport 5353 dnat ip to 10.88.0.2:53 comment "%s"' % TAG,
            'add rule inet kata_zun output ip daddr 127.0.0.1 udp '
            'dport 5353 dnat ip to 10.88.0.2:53 comment "%s"' % TAG,
        ], nftrules.port_rules('kz0', CID, '10.88.0.2', mappings))
        self.assertEqual([], nftrules.port_rules('kz0', CID, '10.88.0.2',
                                                 []))
