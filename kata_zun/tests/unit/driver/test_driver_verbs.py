"""Driver top (ps_args), search_image (exact_match, Glance) and the
reasons of failed calls in Zun's actions.
"""

import types
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base
from zun.common import context as zun_context
from zun.common import exception as zun_exc

from kata_zun import conf
from kata_zun.driver import actionevents
from kata_zun.driver import common
from kata_zun import exception


class DriverVerbsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(state_path=root + '/state', run_path=root + '/run',
                        group='kata')
        from kata_zun import driver
        self.driver = driver.KataDriver()
        self.driver.rt = mock.Mock()
        self.container = types.SimpleNamespace(
            uuid='11111111-2222-3333-4444-555555555555',
            container_id='a' * 32)

    def test_top_honours_ps_args_and_refuses_before_the_guest(self):
        self.driver.rt.call.return_value = {'processes': [
            {'pid': 5, 'ppid': 1, 'uid': 0, 'state': 'S', 'cpu_time': 1,
             'start_time': 0, 'rss_kb': 12, 'cmd': '/bin/sleep 9'}]}
        top = self.driver.top(None, self.container, '-o pid,comm,rss')
        self.assertEqual({'Titles': ['PID', 'COMMAND', 'RSS'],
                          'Processes': [['5', 'sleep', '12']]}, top)
        self.driver.rt.call.reset_mock()
        # The message names %cpu: zun's printf-formatting must not break
        # it into an HTTP 500.
        e = self.assertRaises(zun_exc.Invalid, self.driver.top, None,
                              self.container, 'aux')
        self.assertIn('VSZ', str(e))
        self.assertIn('\uff05cpu', str(e))
        self.driver.rt.call.assert_not_called()

    def test_exec_whose_sandbox_died_says_so_not_timeout(self):
        # Found by tools/fault-matrix-zun.py (exec x qemu): QEMU killed
        # under an exec was reported as "Timeout on executing command".
        client = mock.MagicMock()
        client.__enter__.return_value = client
        client.collect.side_effect = exception.ShimError(
            reason='the shim closed the connection')
        self.driver.rt.exec_client.return_value = (client, 7, None)
        self.driver.rt.get.return_value = types.SimpleNamespace(
            status='exited', error='agent link lost', exit_code=255)
        exec_id = self.driver.execute_create(None, self.container,
                                             'sleep 8')
        e = self.assertRaises(zun_exc.Conflict, self.driver.execute_run,
                              exec_id, 'sleep 8')
        self.assertNotIn('Timeout', str(e))
        self.assertIn('the shim closed the connection', str(e))
        self.assertIn('the container exited: agent link lost', str(e))
        # A container that still runs: the shim's reason alone.
        self.driver.rt.get.return_value = types.SimpleNamespace(
            status='running', error=None, exit_code=None)
        exec_id = self.driver.execute_create(None, self.container,
                                             'sleep 8')
        e = self.assertRaises(zun_exc.Conflict, self.driver.execute_run,
                              exec_id, 'sleep 8')
        self.assertTrue(str(e).endswith('the shim closed the connection'),
                        str(e))

    def test_delete_of_a_create_that_died_sweeps_its_record(self):
        # Found by tools/fault-matrix-zun.py (create x compute): a
        # container whose create zun-compute never finished has no
        # container_id; its half-made record must go with it.
        self.container.container_id = None
        self.container.addresses = {}
        self.container.exposed_ports = None
        self.driver.delete(None, self.container, True)
        self.driver.rt.sweep_incomplete.assert_called_once_with()
        self.driver.rt.remove.assert_not_called()

    def test_start_of_a_create_that_died_says_why(self):
        # Found by tools/fault-matrix-zun.py (create x compute): its start
        # failed with "No such container: None".
        self.container.container_id = None
        e = self.assertRaises(zun_exc.Conflict, self.driver.start, None,
                              self.container)
        self.assertIn('its create never finished', str(e))
        self.assertNotIn('None', str(e))
        self.driver.rt.start.assert_not_called()

    def test_search_image_exact_match_and_glance(self):
        store = self.driver.rt.images
        store.list.return_value = [
            types.SimpleNamespace(id='sha256:1', size=5, created='x',
                                  repo_tags=['busybox:latest',
                                             'busybox:1.36']),
            types.SimpleNamespace(id='sha256:2', size=7, created='y',
                                  repo_tags=['mybusybox:latest'])]
        found = self.driver.search_image(None, 'busybox', None, 'docker',
                                         False)
        self.assertEqual([('busybox', ['latest', '1.36']),
                          ('mybusybox', ['latest'])],
                         [(f['name'], f['tags']) for f in found])
        found = self.driver.search_image(None, 'busybox', None, 'docker',
                                         True)
        self.assertEqual(['busybox'], [f['name'] for f in found])
        found = self.driver.search_image(None, 'busybox', '1.36', None,
                                         True)
        self.assertEqual([('busybox', ['1.36'], 'sha256:1', 5)],
                         [(f['name'], f['tags'], f['id'], f['size'])
                          for f in found])
        self.assertEqual([], self.driver.search_image(
            None, 'busy', None, 'docker', True))
        with mock.patch('zun.image.glance.driver.GlanceDriver') as glance:
            glance.return_value.search_image.return_value = ['g']
            self.assertEqual(['g'], self.driver.search_image(
                'ctx', 'cirros', 'v1', 'glance', True))
            glance.return_value.search_image.assert_called_once_with(
                'ctx', 'cirros', 'v1', True)
        store.list.assert_called()


class ActionEventsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.context = zun_context.RequestContext(
            project_id='p1', user_id='u1', request_id='req-1',
            is_admin=False)
        self.container = types.SimpleNamespace(uuid='c-uuid')
        self.start = self.useFixture(fixtures.MockPatch(
            'zun.db.api.action_event_start')).mock
        self.finish = self.useFixture(fixtures.MockPatch(
            'zun.db.api.action_event_finish')).mock

    def test_failure_recorded_with_our_message(self):
        @common.wrap
        def start(self, context, container):
            raise exception.ShimError(reason='no VM \x1b[31m' + 'x' * 400)
        self.assertRaises(zun_exc.ZunException, start, None, self.context,
                          self.container)
        values = self.finish.call_args[0][1]
        self.assertEqual('kata_start', values['event'])
        self.assertEqual(('c-uuid', 'req-1'), (values['container_uuid'],
                                               values['request_id']))
        self.assertTrue(values['result'].startswith(
            'Error: Sandbox shim error: no VM \\x1b[31m'))
        self.assertEqual(255, len(values['result']))
        self.assertIn('Traceback', values['traceback'])
        self.assertEqual('kata_start', self.start.call_args[0][1]['event'])

    def test_pull_finds_the_container_of_the_request(self):
        @common.wrap
        def pull_image(self, context, repo, tag):
            raise exception.ImageNotFound(ref=repo)
        with mock.patch.object(actionevents, '_uuid_of_request',
                               return_value='from-action') as lookup:
            self.assertRaises(zun_exc.ImageNotFound, pull_image, None,
                              self.context, 'busybox', 'latest')
        lookup.assert_called_once_with(self.context)
        self.assertEqual('from-action',
                         self.finish.call_args[0][1]['container_uuid'])

    def test_nothing_recorded_without_a_user_request(self):
        @common.wrap
        def stop(self, context, container):
            raise exception.Conflict(reason='x')
        admin = zun_context.RequestContext(request_id='req-2',
                                           project_id=None, is_admin=True)
        self.assertRaises(zun_exc.Conflict, stop, None, admin,
                          self.container)
        self.assertRaises(zun_exc.Conflict, stop, None, None,
                          self.container)
        self.start.assert_not_called()

    def test_a_database_failure_never_changes_the_outcome(self):
        self.start.side_effect = RuntimeError('db down')

        @common.wrap
        def start(self, context, container):
            raise exception.InvalidInput(reason='100% bad')
        e = self.assertRaises(zun_exc.Invalid, start, None, self.context,
                              self.container)
        self.assertEqual('Invalid input: 100\uff05 bad', str(e))
