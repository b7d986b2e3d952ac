"""events, system df/prune, container/image prune and attach helpers."""

import contextlib
import io
import types
from unittest import mock

import fixtures
from oslo_config import fixture as cfg_fixture
from oslotest import base

from kata_zun.cmd import attach
from kata_zun.cmd import cli
from kata_zun.cmd import system
from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import events


def _event(kind='container', action='start', actor='a' * 64, ns=10 ** 18,
           **attrs):
    return {'Type': kind, 'Action': action, 'timeNano': ns,
            'time': ns // 10 ** 9,
            'Actor': {'ID': actor, 'Attributes': attrs}}


class ParsingTestCase(base.BaseTestCase):

    def test_times(self):
        now = 1_000_000.0
        self.assertEqual(1700000000.5, system.parse_time('1700000000.5'))
        self.assertEqual(now - 600, system.parse_time('10m', now))
        self.assertEqual(now - 5400, system.parse_time('1h30m', now))
        self.assertEqual(0.0, system.parse_time('1970-01-01T00:00:00Z'))
        self.assertEqual(3600.0,
                         system.parse_time('1970-01-01T02:00:00+01:00'))
        for bad in ('yesterday', '10x', '', '-5m', '2024-13-01'):
            self.assertRaises(cli.CliError, system.parse_time, bad, now)

    def test_filters(self):
        self.assertEqual({'event': {'start', 'die'}, 'type': {'container'}},
                         system.parse_filters(['event=start', 'event=die',
                                               'type=container'],
                                              system.EVENT_FILTERS))
        e = self.assertRaises(cli.CliError, system.parse_filters,
                              ['label=x'], system.EVENT_FILTERS)
        self.assertEqual("invalid filter 'label'", str(e))
        e = self.assertRaises(cli.CliError, system.parse_filters, ['x'],
                              system.EVENT_FILTERS)
        self.assertIn('expected name=value', str(e))

    def test_matching(self):
        start = _event(name='web', image='busybox')
        pull = _event('image', 'pull', 'sha256:' + 'b' * 64,
                      name='busybox')
        match = system.event_matches
        self.assertTrue(match(start, {}))
        self.assertTrue(match(start, {'container': {'web'}}))
        self.assertTrue(match(start, {'container': {'aaaa', 'zzz'}}))
        self.assertFalse(match(start, {'container': {'db'}}))
        self.assertTrue(match(start, {'event': {'die', 'start'},
                                      'type': {'container'}}))
        self.assertFalse(match(start, {'event': {'start'},
                                       'type': {'image'}}))
        self.assertTrue(match(start, {'image': {'busybox'}}))
        self.assertTrue(match(pull, {'image': {'busybox'}}))
        self.assertTrue(match(pull, {'image': {'bbbb'}}))
        self.assertFalse(match(pull, {'container': {'busybox'}}))

    def test_format(self):
        line = system.format_event(_event(ns=10 ** 18 + 5, name='w\x1b',
                                          image='busybox'))
        self.assertRegex(line, r'^2001-09-09T\d\d:\d\d:40\.000000005'
                               r'[+-]\d\d:\d\d container start a{64} '
                               r'\(image=busybox, name=w\\x1b\)$')
        self.assertRaises(cli.CliError, system._printer, '{{.ID}}')
        self.assertEqual('{"Action": "x"}', system._printer('{{json .}}')(
            {'Action': 'x'}))

    def test_human_size(self):
        self.assertEqual(['0B', '999B', '1kB', '16.43MB', '1.5GB'],
                         [system.human_size(n) for n in
                          (0, 999, 1000, 16430000, 1.5e9)])

    def test_detach_keys(self):
        self.assertEqual(b'\x10\x11', attach.parse_detach_keys(
            'ctrl-p,ctrl-q'))
        self.assertEqual(b'a\x00\x1b', attach.parse_detach_keys(
            'a,ctrl-@,ctrl-['))
        for bad in ('', 'ctrl-', 'ctrl-pp', 'ab', 'ctrl-1', '\x07'):
            self.assertRaises(cli.CliError, attach.parse_detach_keys, bad)
        m = attach.KeyMatcher(b'\x10\x11')
        self.assertEqual(b'ab', m.feed(b'ab\x10'))
        self.assertEqual(b'\x10x', m.feed(b'x'))     # broken: sent on
        self.assertEqual(b'', m.feed(b'\x10'))
        self.assertRaises(attach.Detached, m.feed, b'\x11')

    def test_parsers(self):
        parser = cli.build_parser()
        args = parser.parse_args(['events', '--since', '1h', '-f',
                                  'event=die', '--until', '0'])
        self.assertIs(system.cmd_events, args.func)
        self.assertIs(system.cmd_df,
                      parser.parse_args(['system', 'df']).func)
        args = parser.parse_args(['system', 'prune', '-af', '--volumes'])
        self.assertEqual((True, True, True),
                         (args.all, args.force, args.volumes))
        self.assertIs(system.cmd_container_prune, parser.parse_args(
            ['container', 'prune', '-f']).func)
        self.assertIs(system.cmd_image_prune, parser.parse_args(
            ['image', 'prune', '-a']).func)
        args = parser.parse_args(['attach', '--sig-proxy=false', 'c'])
        self.assertFalse(args.sig_proxy)
        self.assertTrue(parser.parse_args(['attach', 'c']).sig_proxy)


class EventsCommandTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(cfg_fixture.Config(conf.CONF))
        self.path = self.useFixture(fixtures.TempDir()).path
        self.rt = types.SimpleNamespace(state_path=self.path)

    def run_events(self, **kwargs):
        args = dict(since=None, until=None, filter=[], format=None)
        args.update(kwargs)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = system.cmd_events(self.rt, types.SimpleNamespace(**args))
        return code, out.getvalue().splitlines()

    def test_history_between_since_and_until(self):
        for i, action in enumerate(('create', 'start', 'die', 'destroy')):
            events.emit(self.path, 'container', action, 'c%d' % i,
                        {'name': 'web'}, now=1000 + i)
        events.emit(self.path, 'image', 'pull', 'sha256:1', now=1001.5)
        code, lines = self.run_events(since='1001', until='1002')
        self.assertEqual(0, code)
        self.assertEqual(['container start c1', 'image pull sha256:1',
                          'container die c2'],
                         [' '.join(x.split()[1:4]) for x in lines])
        _code, lines = self.run_events(since='0', until='2000',
                                       filter=['event=die', 'event=start',
                                               'container=web'])
        self.assertEqual(2, len(lines))
        _code, lines = self.run_events(since='0', until='2000',
                                       format='{{json .}}',
                                       filter=['type=image'])
        self.assertEqual(1, len(lines))
        self.assertIn('"Action": "pull"', lines[0])

    def test_until_without_since_shows_nothing_old(self):
        events.emit(self.path, 'container', 'start', 'c', now=1000)
        self.assertEqual((0, []), self.run_events(until='1500'))

    def test_follow_until_a_time_soon(self):
        import time
        real_sleep = time.sleep
        calls = []

        def sleep(seconds):
            # Something happens while the command follows the log.
            if not calls:
                events.emit(self.path, 'container', 'kill', 'c9',
                            {'signal': '15'})
            calls.append(seconds)
            real_sleep(0.01)
        with mock.patch.object(system.time, 'sleep', side_effect=sleep):
            code, lines = self.run_events(until='%f' % (time.time() + 0.5))
        self.assertEqual(0, code)
        self.assertEqual(1, len(lines))
        self.assertIn('container kill c9 (signal=15)', lines[0])


class PruneTestCase(base.BaseTestCase):

    def _rt(self):
        rt = mock.Mock()
        running = types.SimpleNamespace(
            id='r' * 64, shim_alive=True, status='running', dir='/nonexist',
            config={'created': 1.0, 'image': {'id': 'sha256:used'}})
        stopped = types.SimpleNamespace(
            id='s' * 64, shim_alive=False, status='exited', dir='/nonexist',
            config={'created': 5.0, 'image': {'id': 'sha256:used'}})
        rt.list.return_value = [running, stopped]
        rt.images.usage.return_value = {
            'images': {'sha256:used': 10, 'sha256:dangling': 2000,
                       'sha256:tagged': 300, 'sha256:tenant': 7},
            'cache': 50}
        rt.images.list.return_value = [
            types.SimpleNamespace(id=i, repo_tags=t) for i, t in (
                ('sha256:used', ['busybox:latest']),
                ('sha256:dangling', []), ('sha256:tagged', ['x:1', 'x:2']),
                ('sha256:tenant', []))]
        rt.images.named_by_projects.side_effect = \
            lambda i: i == 'sha256:tenant'
        rt.images.remove.side_effect = lambda ref, users: ref in (
            'sha256:dangling', 'x:2')
        rt.image_users.return_value = []
        rt.images.gc.return_value = {'blobs': ['sha256:cafe'], 'block': []}
        rt.volumes.list.return_value = [
            {'name': 'data', 'used_bytes': 4096},
            {'name': 'busy', 'used_bytes': 1}]
        rt.volume_users.side_effect = lambda n: ['x'] if n == 'busy' else []
        rt.remove_volume.side_effect = lambda n: (
            None if n == 'data' else (_ for _ in ()).throw(
                exception.Conflict(reason='in use')))
        return rt

    def run_cli(self, func, rt, stdin='', **kwargs):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), \
                mock.patch('sys.stdin', io.StringIO(stdin)):
            code = func(rt, types.SimpleNamespace(**kwargs))
        return code, out.getvalue()

    def test_container_prune_asks_first(self):
        rt = self._rt()
        code, out = self.run_cli(system.cmd_container_prune, rt, stdin='n\n',
                                 force=False, filter=[])
        self.assertEqual(0, code)
        self.assertIn('[y/N]', out)
        rt.remove.assert_not_called()
        code, out = self.run_cli(system.cmd_container_prune, rt, stdin='y\n',
                                 force=False, filter=[])
        rt.remove.assert_called_once_with('s' * 64)
        self.assertIn('Deleted Containers:\n' + 's' * 64, out)
        rt.remove.reset_mock()
        self.run_cli(system.cmd_container_prune, rt, force=True,
                     filter=['until=3'])
        rt.remove.assert_not_called()       # created after 'until'
        self.assertRaises(cli.CliError, self.run_cli,
                          system.cmd_container_prune, rt, force=True,
                          filter=['label=a'])

    def test_image_prune_dangling_then_all_never_a_tenant_s(self):
        rt = self._rt()
        code, out = self.run_cli(system.cmd_image_prune, rt, force=True,
                                 all=False)
        self.assertEqual('Deleted Images:\ndeleted: sha256:dangling\n\n'
                         'Total reclaimed space: 2kB\n', out)
        rt.images.remove.reset_mock()
        code, out = self.run_cli(system.cmd_image_prune, rt, force=True,
                                 all=True)
        self.assertEqual([mock.call('sha256:dangling', users=[]),
                          mock.call('x:1', users=[]),
                          mock.call('x:2', users=[])],
                         rt.images.remove.call_args_list)
        self.assertIn('untagged: x:1\nuntagged: x:2\ndeleted: '
                      'sha256:tagged', out)
        self.assertIn('Total reclaimed space: 2.3kB', out)

    def test_system_df_and_prune(self):
        rt = self._rt()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            system.cmd_df(rt, None)
        rows = [line.split() for line in out.getvalue().splitlines()]
        self.assertEqual(['TYPE', 'TOTAL', 'ACTIVE', 'SIZE', 'RECLAIMABLE'],
                         rows[0])
        self.assertEqual(['Images', '4', '1', '2.317kB', '2.307kB',
                          '(99%)'], rows[1])
        self.assertEqual(['Containers', '2', '1', '0B', '0B'], rows[2])
        self.assertEqual(['Local', 'Volumes', '2', '1', '4.097kB', '4.096kB',
                          '(99%)'], rows[3])
        self.assertEqual(['Build', 'Cache', '0', '0', '50B', '50B'],
                         rows[4])
        code, out = self.run_cli(system.cmd_system_prune, rt, force=True,
                                 all=False, volumes=True)
        self.assertEqual(0, code)
        self.assertIn('Deleted Volumes:\ndata\n', out)
        self.assertIn('Deleted build cache objects:\nsha256:cafe', out)
        self.assertIn('Total reclaimed space: 6.146kB', out)
