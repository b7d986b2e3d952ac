import types

import fixtures
from oslotest import base

from kata_zun.cmd import cli
from kata_zun import exception


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

    def test_memory_sizes_as_docker_writes_them(self):
        for text, mib in (('512m', 512), ('1g', 1024), ('1.5G', 1536),
                          ('1GiB', 1024), ('2048k', 2), ('1k', 1),
                          (' 64M ', 64), ('64', 64), ('300', 300)):
            self.assertEqual(mib, cli.memory_size(text), text)
        # Refused before anything runs (argparse says why): garbage,
        # negative, unknown units, Unicode digits, huge.
        for bad in ('', 'm', '-1', '1x', '1.g', '\u00b2', '1e9g',
                    '9' * 40, '12 gb tb'):
            self.assertRaises(cli.argparse.ArgumentTypeError,
                              cli.memory_size, bad)

    def test_memory_reaches_the_runtime_in_mib(self):
        parser = cli.build_parser()
        for argv, mib in ((['-m', '1g'], 1024), (['--memory', '256m'], 256),
                          (['--memory', '96'], 96), ([], None)):
            args = parser.parse_args(['run'] + argv + ['busybox'])
            self.assertEqual(mib, args.memory, argv)
        with fixtures.MockPatch('sys.stderr'):
            self.assertRaises(SystemExit, parser.parse_args,
                              ['run', '-m', 'lots', 'busybox'])

    def test_parse_signal(self):
        self.assertEqual(9, cli.parse_signal('KILL'))
        self.assertEqual(15, cli.parse_signal('sigterm'))
        self.assertEqual(1, cli.parse_signal('1'))
        for bad in ('NOPE', '0', '999', '__class__'):
            self.assertRaises(cli.CliError, cli.parse_signal, bad)


class CliEscapesTestCase(base.BaseTestCase):
    """What the guest or a damaged record says never drives the
    terminal: control characters are printed as escapes.
    """

    def _out(self, func, rt, args):
        import io
        from unittest import mock
        buf = io.StringIO()
        with mock.patch('sys.stdout', buf):
            self.assertEqual(0, func(rt, args))
        return buf.getvalue()

    def test_top_and_stats_tables(self):
        from unittest import mock
        rt = mock.Mock()
        rt.get.return_value = types.SimpleNamespace(id='a' * 64)
        rt.call.return_value = {'processes': [{
            'uid': 0, 'pid': 1, 'ppid': 0, 'state': 'S\x1b[2J',
            'cpu_time': 0.5,
            'cmd': 'sh\n\x1b]0;owned\x07\u202eevil\r'}]}
        out = self._out(cli.cmd_top, rt,
                        types.SimpleNamespace(container='a', ps_args=[]))
        self.assertNotIn('\x1b', out)
        self.assertNotIn('\x07', out)
        self.assertNotIn('\r', out)
        self.assertNotIn('\u202e', out)
        self.assertEqual(2, out.count('\n'))
        self.assertIn('sh\\n\\x1b]0;owned\\x07\\u202eevil\\r', out)
        out = self._out(cli.cmd_top, rt, types.SimpleNamespace(
            container='a', ps_args=['-o', 'pid,stat']))
        self.assertEqual(['PID', 'STAT', '1', 'S\\x1b[2J'], out.split())
        rt.call.reset_mock()
        self.assertRaises(exception.InvalidInput, cli.cmd_top, rt,
                          types.SimpleNamespace(container='a',
                                                ps_args=['aux']))
        rt.call.assert_not_called()

    def test_ps_shows_a_damaged_record_with_its_error(self):
        from unittest import mock
        rt = mock.Mock()
        c = types.SimpleNamespace(
            id='b' * 64, name='broken-bbbbbbbbbbbb', status='unknown',
            error='damaged sandbox record: \x1b[31mbad\nrecord',
            config={'id': 'b' * 64, 'created': 0}, state={})
        rt.list.return_value = [c]
        out = self._out(cli.cmd_ps, rt,
                        types.SimpleNamespace(all=False, quiet=False))
        self.assertIn('Unknown [damaged sandbox record', out)
        self.assertNotIn('\x1b', out)
        self.assertEqual(2, out.count('\n'))


class StorageOptTestCase(base.BaseTestCase):
    """``run --storage-opt size=SIZE`` sizes the writable layer."""

    def setUp(self):
        super().setUp()
        from unittest import mock
        self.rt = mock.Mock()
        self.rt.start.return_value = (mock.Mock(id='c' * 64), mock.Mock())
        self.pull = self.useFixture(fixtures.MockPatchObject(
            cli, '_pull', return_value=mock.Mock(id='i'))).mock
        self.useFixture(fixtures.MockPatch('sys.stdout'))

    def _run(self, *argv):
        args = cli.build_parser().parse_args(['run', '-d'] + list(argv) +
                                             ['busybox', 'true'])
        cli.cmd_run(self.rt, args)
        return self.rt.create.call_args[1]['disk_mb']

    def test_size_reaches_the_runtime_in_mib(self):
        self.assertEqual(5120, self._run('--storage-opt', 'size=5G'))
        self.assertEqual(512, self._run('--storage-opt', 'size=1G',
                                        '--storage-opt', 'size=512m'))
        self.assertIsNone(self._run())

    def test_bad_options_fail_before_any_pull(self):
        from kata_zun import exception
        for bad, want in (('dm.basesize=5G', 'unknown storage option'),
                          ('size=5X', 'invalid size'),
                          ('size', 'invalid storage option')):
            exc = self.assertRaises(exception.InvalidInput, self._run,
                                    '--storage-opt', bad)
            self.assertIn(want, str(exc))
        self.assertFalse(self.pull.called)
        self.assertFalse(self.rt.create.called)


class CliBrokenPipeTestCase(base.BaseTestCase):

    def test_a_reader_that_goes_away_ends_the_cli_quietly(self):
        # `kata-zun info | head -1`: a real pipe whose reader is closed.
        import subprocess
        import sys
        proc = subprocess.Popen(
            [sys.executable, '-c',
             'import sys\n'
             'from unittest import mock\n'
             'from kata_zun.cmd import cli\n'
             'def flood(rt, args):\n'
             '    while True:\n'
             '        print("x" * 1000)\n'
             'with mock.patch.object(cli, "_runtime"), '
             'mock.patch("kata_zun.cmd.verbs.cmd_version", flood):\n'
             '    sys.exit(cli.main(["version"]))\n'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.read(10)
        proc.stdout.close()
        _out, err = proc.communicate(timeout=60)
        self.assertEqual(141, proc.returncode, err)
        self.assertNotIn(b'Traceback', err)


class CliRunAsModuleTestCase(base.BaseTestCase):

    def test_errors_of_command_modules_are_one_line(self):
        # ``python -m kata_zun.cmd.cli`` (how the tests, the benchmarks
        # and the fault matrix run it): the command modules raise the
        # CliError of the imported kata_zun.cmd.cli, a different class
        # from __main__'s; it must still end as one error line and its
        # code, not a traceback (the fault matrix's attach cells found it).
        import subprocess
        import sys
        proc = subprocess.run(
            [sys.executable, '-c',
             'import runpy, sys\n'
             'from unittest import mock\n'
             'from kata_zun.cmd import cli\n'
             'def refuse(rt, args):\n'
             '    raise cli.CliError("refused on purpose", 3)\n'
             'sys.argv = ["kata-zun", "version"]\n'
             'with mock.patch("kata_zun.cmd.verbs.cmd_version", refuse):\n'
             '    runpy.run_module("kata_zun.cmd.cli", run_name="__main__",\n'
             '                     alter_sys=True)\n'],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(3, proc.returncode, proc.stderr)
        self.assertIn('kata-zun: error: refused on purpose', proc.stderr)
        self.assertNotIn('Traceback', proc.stderr)
