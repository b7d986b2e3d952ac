"""The driver's side of attach and interactive exec."""

import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun.console import sessions
from kata_zun import exception


class DriverConsoleTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        from zun.common import exception as zun_exc
        self.zun_exc = zun_exc
        self.mod = driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        # Not in an eventlet-patched process: nothing was started.
        self.assertIsNone(self.driver._console)
        p = mock.patch.object(driver.console_server, 'from_conf')
        self.from_conf = p.start()
        self.addCleanup(p.stop)
        self.console = self.from_conf.return_value
        self.console.start.return_value = self.console
        self.console.port = 2375
        self.console.running = True
        self.console.ssl_context = None

    def _container(self, **kw):
        c = types.SimpleNamespace(uuid='6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f',
                                  container_id='ab' * 16, tty=True)
        c.__dict__.update(kw)
        return c

    def test_interactive_exec_registers_with_the_console(self):
        self.console.add_exec.return_value = 'e' * 64
        exec_id = self.driver.execute_create(None, self._container(),
                                             'sh -c "echo a"',
                                             interactive=True)
        self.assertEqual('e' * 64, exec_id)
        self.console.add_exec.assert_called_once_with(
            'ab' * 16, ['sh', '-c', 'echo a'], tty=True, stdin=True,
            project=None)
        self.from_conf.assert_called_once_with(self.driver.rt, conf.CONF)
        # Started once, reused while it runs.
        self.driver.execute_create(None, self._container(), 'sh',
                                   interactive=True)
        self.assertEqual(1, self.console.start.call_count)
        self.assertEqual({}, self.driver._execs)
        self.assertRaises(self.zun_exc.Invalid, self.driver.execute_create,
                          None, self._container(), '  ', interactive=True)

    def test_busy_console_is_a_conflict(self):
        self.console.add_exec.side_effect = sessions.Busy('too many')
        self.assertRaises(self.zun_exc.Conflict, self.driver.execute_create,
                          None, self._container(), 'sh', interactive=True)
        self.console.attach_url.side_effect = sessions.Busy('too many')
        self.assertRaises(self.zun_exc.Conflict,
                          self.driver.get_websocket_url, None,
                          self._container())

    def test_execute_resize(self):
        self.assertRaises(self.zun_exc.Invalid, self.driver.execute_resize,
                          'e' * 64, '24', '80')     # no console yet
        self.driver._console_server()
        self.driver.execute_resize('e' * 64, '24', '80')
        self.console.resize_exec.assert_called_once_with('e' * 64, 24, 80)
        self.assertRaises(self.zun_exc.Invalid, self.driver.execute_resize,
                          'e' * 64, 'x', '80')
        self.console.resize_exec.side_effect = sessions.NotFound()
        self.assertRaises(self.zun_exc.Invalid, self.driver.execute_resize,
                          'e' * 64, '24', '80')
        # The process just exited: no error for a resize.
        self.console.resize_exec.side_effect = exception.ShimError(
            reason='gone')
        self.driver.execute_resize('e' * 64, '24', '80')

    def test_get_websocket_url(self):
        self.console.attach_url.return_value = 'ws://h:2375/attach/x?token=y'
        self.assertEqual('ws://h:2375/attach/x?token=y',
                         self.driver.get_websocket_url(None,
                                                       self._container()))
        self.console.attach_url.assert_called_once_with('ab' * 16,
                                                        project=None)
        self.driver.get_websocket_url(None, self._container(project_id='p'))
        self.console.attach_url.assert_called_with('ab' * 16, project='p')
        self.driver.execute_create(None, self._container(project_id='p'),
                                   'sh', interactive=True)
        self.console.add_exec.assert_called_with('ab' * 16, ['sh'], tty=True,
                                                 stdin=True, project='p')

    def test_resize_main_process(self):
        c = self._container()
        self.assertIs(c, self.driver.resize(None, c, '30', '100'))
        self.rt.call.assert_called_once_with('ab' * 16, 'resize',
                                             {'rows': 30, 'cols': 100})
        self.rt.call.reset_mock()
        self.driver.resize(None, self._container(tty=False), '30', '100')
        self.rt.call.assert_not_called()
        self.assertRaises(self.zun_exc.Invalid, self.driver.resize, None,
                          c, '0', '100')

    def test_disabled(self):
        self.cfg.config(enabled=False, group='kata_console')
        self.assertRaisesRegex(self.zun_exc.Invalid, 'disabled',
                               self.driver.get_websocket_url, None,
                               self._container())
        self.assertRaisesRegex(self.zun_exc.Invalid, 'disabled',
                               self.driver.execute_create, None,
                               self._container(), 'sh', interactive=True)
        self.from_conf.assert_not_called()

    def test_cannot_listen(self):
        self.console.start.side_effect = OSError(98, 'Address in use')
        self.console.host, self.console.port = '10.0.0.1', 2375
        self.assertRaisesRegex(self.zun_exc.ZunException,
                               'cannot listen on 10.0.0.1:2375',
                               self.driver.get_websocket_url, None,
                               self._container())

    def test_docker_remote_api_url_mismatch_is_logged(self):
        self.console.port = 2376
        self.console.advertise_host = '10.0.0.1'
        with mock.patch.object(self.mod, 'LOG') as log:
            self.driver._console_server()
        self.assertIn('%s://%s:%s', log.warning.call_args[0][0])
        self.assertEqual(('tcp', '10.0.0.1', 2376),
                         log.warning.call_args[0][4:])

    def test_tls_console_wants_an_https_docker_url(self):
        self.console.ssl_context = object()
        self.console.advertise_host = '10.0.0.1'
        self.cfg.config(docker_remote_api_url='tcp://10.0.0.1:2375',
                        group='docker')
        with mock.patch.object(self.mod, 'LOG') as log:
            self.driver._console_server()
        self.assertEqual(('https', '10.0.0.1', 2375),
                         log.warning.call_args[0][4:])
        self.driver._console = None
        self.cfg.config(docker_remote_api_url='https://10.0.0.1:2375',
                        group='docker')
        with mock.patch.object(self.mod, 'LOG') as log:
            self.driver._console_server()
        log.warning.assert_not_called()

    def test_unusable_tls_files_are_a_clear_error(self):
        self.from_conf.side_effect = exception.KataZunException(
            '[kata_console] TLS files ... cannot be used')
        self.assertRaisesRegex(self.zun_exc.ZunException, 'TLS files',
                               self.driver.get_websocket_url, None,
                               self._container())

    def test_started_in_an_eventlet_patched_process(self):
        with mock.patch.object(self.mod.manager, 'Runtime'), \
                mock.patch.object(self.mod.patcher, 'is_monkey_patched',
                                  return_value=True):
            driver = self.mod.KataDriver()
        self.assertIs(self.console, driver._console)
        # A failure to listen is logged, zun-compute still starts.
        self.console.start.side_effect = OSError(98, 'Address in use')
        with mock.patch.object(self.mod.manager, 'Runtime'), \
                mock.patch.object(self.mod.patcher, 'is_monkey_patched',
                                  return_value=True), \
                mock.patch.object(self.mod, 'LOG') as log:
            driver = self.mod.KataDriver()
        self.assertIsNone(driver._console)
        self.assertTrue(log.error.called)
