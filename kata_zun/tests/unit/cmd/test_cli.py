import types

from oslotest import base

from kata_zun.cmd import cli


class CliHelpersTestCase(base.BaseTestCase):

    def test_ports_column(self):
        c = types.SimpleNamespace(config={'network': {'ports': [
            {'host_ip': '0.0.0.0', 'host_port': 8080, 'container_port': 80,
             'proto': 'tcp'},
            {'host_ip': '127.0.0.1', 'host_port': 53, 'container_port': 53,
             'proto': 'udp'}]}})
        self.assertEqual('0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp',
                         cli._ports_text(c))
        self.assertEqual('', cli._ports_text(
            types.SimpleNamespace(config={})))

    def test_parse_signal(self):
        self.assertEqual(9, cli.parse_signal('KILL'))
        self.assertEqual(15, cli.parse_signal('sigterm'))
        self.assertEqual(1, cli.parse_signal('1'))
        for bad in ('NOPE', '0', '999', '__class__'):
            self.assertRaises(cli.CliError, cli.parse_signal, bad)
