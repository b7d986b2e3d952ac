"""The Docker verbs of kata_zun.cmd.verbs, with a mocked runtime."""

import contextlib
import io
import types
from unittest import mock

from oslotest import base

from kata_zun.cmd import cli
from kata_zun.cmd import verbs
from kata_zun import exception


def _container(status='running', ports=None, name='web'):
    c = mock.Mock()
    c.status, c.name, c.id = status, name, 'a' * 64
    c.to_dict.return_value = {'NetworkSettings': {'Ports': ports or {}}}
    return c


class VerbsTestCase(base.BaseTestCase):

    def run_cli(self, func, rt, **kwargs):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            code = func(rt, types.SimpleNamespace(**kwargs))
        return code, out.getvalue(), err.getvalue()

    def test_parsers(self):
        parser = cli.build_parser()
        args = parser.parse_args(['create', '--name', 'x', '-p', '8080:80',
                                  '--rm', 'busybox', 'sh', '-c', 'true'])
        self.assertIs(verbs.cmd_create, args.func)
        self.assertEqual(('x', ['8080:80'], True, 'busybox',
                          ['sh', '-c', 'true']),
                         (args.name, args.publish, args.rm, args.image,
                          args.command))
        self.assertFalse(hasattr(args, 'detach'))
        args = parser.parse_args(['run', '-d', 'busybox'])
        self.assertTrue(args.detach)
        args = parser.parse_args(['restart', '-t', '3', 'a', 'b'])
        self.assertEqual((3, ['a', 'b']), (args.time, args.containers))
        args = parser.parse_args(['rename', 'a', 'b'])
        self.assertEqual(('a', 'b'), (args.container, args.new_name))
        args = parser.parse_args(['port', 'a', '80/udp'])
        self.assertEqual('80/udp', args.private_port)
        args = parser.parse_args(['tag', 'busybox', 'mine:1'])
        self.assertEqual(('busybox', 'mine:1'), (args.source, args.target))
        for verb in ('version', 'info'):
            self.assertIsNotNone(parser.parse_args([verb]).func)

    def test_create_prints_the_id(self):
        rt = mock.Mock()
        with mock.patch.object(cli, 'create_container',
                               return_value=_container()) as create:
            code, out, _err = self.run_cli(verbs.cmd_create, rt, x=1)
        self.assertEqual((0, 'a' * 64 + '\n'), (code, out))
        create.assert_called_once_with(rt, mock.ANY)

    def test_wait_prints_codes_and_goes_on(self):
        rt = mock.Mock()
        rt.wait.side_effect = [0, exception.ContainerNotFound(ref='b'), 137]
        code, out, err = self.run_cli(verbs.cmd_wait, rt,
                                      containers=['a', 'b', 'c'])
        self.assertEqual(1, code)
        self.assertEqual('0\n137\n', out)
        self.assertEqual('kata-zun: error: No such container: b\n', err)
        rt.wait.side_effect = [3]
        self.assertEqual((0, '3\n', ''), self.run_cli(
            verbs.cmd_wait, rt, containers=['a']))

    def test_restart(self):
        rt = mock.Mock()
        client = mock.Mock()
        rt.restart.return_value = ('c', client)
        code, out, _err = self.run_cli(verbs.cmd_restart, rt, time=2,
                                       containers=['a'])
        self.assertEqual((0, 'a\n'), (code, out))
        rt.restart.assert_called_once_with('a', timeout=2)
        client.close.assert_called_once_with()

    def test_rename_and_tag_print_nothing(self):
        rt = mock.Mock()
        self.assertEqual((0, '', ''), self.run_cli(
            verbs.cmd_rename, rt, container='a', new_name='b'))
        rt.rename.assert_called_once_with('a', 'b')
        self.assertEqual((0, '', ''), self.run_cli(
            verbs.cmd_tag, rt, source='busybox', target='mine:1'))
        rt.images.tag.assert_called_once_with('busybox', 'mine:1')

    def test_port(self):
        rt = mock.Mock()
        rt.get.return_value = _container(ports={
            '80/tcp': [{'HostIp': '0.0.0.0', 'HostPort': '8080'},
                       {'HostIp': '127.0.0.1', 'HostPort': '8081'}],
            '53/udp': [{'HostIp': '0.0.0.0', 'HostPort': '5353'}]})
        code, out, _err = self.run_cli(verbs.cmd_port, rt, container='web',
                                       private_port=None)
        self.assertEqual((0, '53/udp -> 0.0.0.0:5353\n'
                             '80/tcp -> 0.0.0.0:8080\n'
                             '80/tcp -> 127.0.0.1:8081\n'), (code, out))
        self.assertEqual((0, '0.0.0.0:8080\n127.0.0.1:8081\n', ''),
                         self.run_cli(verbs.cmd_port, rt, container='web',
                                      private_port='80'))
        self.assertEqual((0, '0.0.0.0:5353\n', ''),
                         self.run_cli(verbs.cmd_port, rt, container='web',
                                      private_port='53/UDP'))
        e = self.assertRaises(cli.CliError, verbs.cmd_port, rt,
                              types.SimpleNamespace(container='web',
                                                    private_port='53'))
        self.assertEqual("No public port '53/tcp' published for web", str(e))
        for bad in ('0', '65536', 'x', '80/icmp', '/tcp', '-1', '8 0'):
            self.assertRaises(cli.CliError, verbs.parse_port_filter, bad)

    def test_stopped_container_publishes_nothing(self):
        rt = mock.Mock()
        rt.get.return_value = _container(status='exited', ports={
            '80/tcp': [{'HostIp': '0.0.0.0', 'HostPort': '8080'}]})
        self.assertEqual((0, '', ''), self.run_cli(
            verbs.cmd_port, rt, container='web', private_port=None))
        self.assertRaises(cli.CliError, verbs.cmd_port, rt,
                          types.SimpleNamespace(container='web',
                                                private_port='80'))

    def test_container_counts(self):
        cs = [types.SimpleNamespace(status=s) for s in (
            'running', 'restarting', 'paused', 'created', 'exited',
            'unknown')]
        self.assertEqual({'Containers': 6, 'Running': 2, 'Paused': 1,
                          'Stopped': 3}, verbs.container_counts(cs))

    def test_version_and_info(self):
        with mock.patch.object(verbs, '_qemu_version',
                               return_value='QEMU 7.2'), \
                mock.patch.object(verbs, '_guest_version',
                                  return_value='v9'):
            code, out, _err = self.run_cli(verbs.cmd_version, None)
            self.assertEqual(0, code)
            self.assertIn(' QEMU: QEMU 7.2\n', out)
            self.assertIn(' Guest assets: v9\n', out)
            rt = mock.Mock()
            rt.list.return_value = [types.SimpleNamespace(
                status='running')]
            rt.images.list.return_value = [1, 2]
            code, out, _err = self.run_cli(verbs.cmd_info, rt)
        self.assertEqual(0, code)
        self.assertTrue(out.startswith('Containers: 1\n Running: 1\n'
                                       ' Paused: 0\n Stopped: 0\n'
                                       'Images: 2\n'), out)
        self.assertIn('Insecure Registries:\n 127.0.0.0/8\n ::1\n'
                      ' localhost\n', out)
