import signal
import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception


class DriverTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        self.mod = driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value

    def _container(self, **kw):
        c = types.SimpleNamespace(
            uuid='6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f',
            container_id='ab' * 16,
            status='Running', status_reason=None, status_detail=None,
            task_state=None, auto_remove=False, auto_heal=False, name='c1',
            host='h')
        c.__dict__.update(kw)
        return c

    def _sandbox(self, status, **state):
        s = mock.Mock(status=status, state=state, exit_code=state.get(
            'exit_code'), error=state.get('error'), shim_alive=True,
            health=state.get('health', {}).get('status'))
        return s

    def test_host_restart_is_stopped_not_error(self):
        c = self._container()
        s = self._sandbox('exited', exit_code=255, started_at=1,
                          error='the host restarted while the container ran')
        s.lost = 'host-restart'
        self.rt.get.return_value = s
        self.driver.show(None, c)
        self.assertEqual(('Stopped', 'the host restarted while the '
                          'container ran'), (c.status, c.status_reason))
        self.assertTrue(c.status_detail.startswith('Exited(255)'))

    def test_resume_after_host_restart(self):
        sandboxes = []
        for name, policy, lost in (('a', 'always', 'host-restart'),
                                   ('u', 'unless-stopped', 'host-restart'),
                                   ('n', 'no', 'host-restart'),
                                   ('f', 'on-failure', 'host-restart'),
                                   ('c', 'always', 'crash'),
                                   ('s', 'always', None)):
            sandboxes.append(mock.Mock(
                id=name * 64, lost=lost,
                config={'restart_policy': {'name': policy}}))
            sandboxes[-1].name = name
        self.rt.list.return_value = sandboxes
        self.rt.start.side_effect = [RuntimeError('no'),
                                     (None, mock.Mock())]
        self.driver._resume_after_host_restart()
        self.assertEqual([mock.call('a' * 64), mock.call('u' * 64)],
                         self.rt.start.call_args_list)

    def test_a_start_refused_for_memory_is_zuns_resources_unavailable(self):
        from zun.common import exception as zun_exc
        self.rt.start.side_effect = exception.InsufficientResources(
            reason='not enough host memory to start kz-ab: it needs 612 MiB')
        c = self._container(status='Created')
        with mock.patch.object(self.driver, '_bind_volumes'):
            exc = self.assertRaises(zun_exc.ResourcesUnavailable,
                                    self.driver.start, None, c)
        self.assertIn('not enough host memory to start kz-ab: it needs '
                      '612 MiB', str(exc))

    def test_a_failed_start_shows_as_error_and_may_start_again(self):
        c = self._container(status='Created')
        s = self._sandbox('created', error='Insufficient resources: not '
                          'enough host memory to start kz-ab')
        s.lost = None
        self.rt.get.return_value = s
        self.driver.show(None, c)
        self.assertEqual(('Error', 'Insufficient resources: not enough '
                          'host memory to start kz-ab', 'Created (start '
                          'failed)'), (c.status, c.status_reason,
                                       c.status_detail))
        # A capsule's member never started (an init container failed)
        # stays Created with its reason.
        from kata_zun.driver import status
        c = self._container(status='Created', status_reason=None)
        status.copy_state(c, s, failed_start_is_error=False)
        self.assertEqual(('Created', 'Created'), (c.status,
                                                  c.status_detail))

    def test_health_in_status_detail_and_reason(self):
        c = self._container()
        self.rt.get.return_value = self._sandbox(
            'running', started_at=1, health={'status': 'healthy'})
        self.driver.show(None, c)
        self.assertRegex(c.status_detail, r'^Up .* \(healthy\)$')
        self.assertIsNone(c.status_reason)
        self.rt.get.return_value = self._sandbox(
            'running', started_at=1, health={
                'status': 'unhealthy', 'log': [
                    {'exit_code': 7, 'output': ' refused\n'}]})
        self.driver.show(None, c)
        self.assertRegex(c.status_detail, r'\(unhealthy\)$')
        self.assertEqual('health check failing (exit 7): refused',
                         c.status_reason)

    def _sync(self, containers, sandboxes=()):
        manager_ = mock.Mock()
        self.rt.list.return_value = list(sandboxes)
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=containers), \
                mock.patch('zun.objects.ContainerAction.action_start') as a:
            self.driver.update_containers_states(
                mock.Mock(project_id=None), containers, manager_)
        return manager_, a

    def test_the_sync_retries_failed_network_releases(self):
        # An OVS port of a deleted container stayed on the bridge until
        # the host's next start (test_zun_neutron_e2e): the sync retries.
        self.rt.release_orphan_networks.return_value = ['cd' * 32]
        self._sync([])
        self.rt.release_orphan_networks.assert_called_once_with()
        # A release that fails again is logged, and the sync goes on.
        from kata_zun.network import base as net_base
        self.rt.release_orphan_networks.side_effect = net_base.NetworkError(
            reason='ovsdb timed out')
        gone = self._container(save=mock.Mock(), status='Running',
                               auto_heal=False)
        self._sync([gone])
        self.assertEqual('Error', gone.status)
        self.assertEqual(2, self.rt.release_orphan_networks.call_count)

    def test_auto_heal_rebuilds_missing_sandboxes(self):
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())
        manager_, action = self._sync([heal])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, heal, True)
        self.assertEqual('p1', manager_.container_rebuild.call_args[0][
            0].project_id)
        action.assert_called_once_with(mock.ANY, heal.uuid, 'rebuild',
                                       want_result=False)
        self.assertFalse(heal.save.called)   # the rebuild owns it now

    def test_auto_heal_keeps_starting_after_a_failed_rebuild(self):
        # A rebuild of a running container fails (zun saves it Error);
        # the next heal still starts it (CI: it ended Created).
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())

        def fails(ctx, container, run):
            container.status = 'Error'
        manager_ = mock.Mock()
        manager_.container_rebuild.side_effect = fails
        self.rt.list.return_value = []
        finished = mock.Mock(finish_time='2026-12-06T12:00:00')
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[heal]), \
                mock.patch('zun.objects.ContainerAction.action_start'), \
                mock.patch('zun.objects.ContainerAction.get_by_request_id',
                           return_value=finished):
            self.driver.update_containers_states(
                mock.Mock(project_id=None), [heal], manager_)
            self.assertEqual('Error', heal.status)

            def works(ctx, container, run):
                container.status = 'Running' if run else 'Created'
            manager_.container_rebuild.side_effect = works
            self.driver.update_containers_states(
                mock.Mock(project_id=None), [heal], manager_)
        self.assertEqual([True, True], [
            c[0][2] for c in manager_.container_rebuild.call_args_list])
        self.assertEqual('Running', heal.status)
        # Kept until a sync finds its sandbox again.
        self.assertEqual({heal.uuid}, self.driver._healer.to_run)
        self._sync([heal], sandboxes=[mock.Mock(id=heal.container_id)])
        self.assertEqual(set(), self.driver._healer.to_run)
        # A container that was not running is healed as created.
        heal.status = 'Stopped'
        manager_, _a = self._sync([heal])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, heal, False)

    def test_a_healed_container_stopped_later_is_not_started(self):
        # Healed from Error (so started because it had been running),
        # later stopped by its user, then lost again: that heal must not
        # start it. The healer once kept "was running" for good.
        heal = self._container(auto_heal=True, project_id='p1',
                               status='Running', save=mock.Mock())

        def show_finds_it_gone():
            self.rt.get.side_effect = exception.ContainerNotFound(
                container=heal.container_id)
            self.driver.show(None, heal)
            self.rt.get.side_effect = None
            self.assertEqual('Error', heal.status)
        show_finds_it_gone()
        manager_, _a = self._sync([heal])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, heal, True)
        # It runs again, with a sandbox; its user stops it.
        heal.status = 'Running'
        self._sync([heal], sandboxes=[mock.Mock(id=heal.container_id)])
        self.assertEqual(set(), self.driver._healer.to_run)
        # Lost again while stopped.
        heal.status = 'Stopped'
        with mock.patch('zun.objects.ContainerAction.get_by_request_id',
                        return_value=mock.Mock(finish_time='done')):
            manager_, _a = self._sync([heal])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, heal, False)

    def test_the_capsule_call_heals_nothing_again(self):
        # zun-compute's sync calls the driver a second time with its
        # capsules: an empty list when there are none. That call healed
        # every missing container a second time (two rebuilds; CI saw the
        # container end Created).
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())
        manager_ = mock.Mock()
        self.rt.list.return_value = []
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[heal]), \
                mock.patch('zun.objects.ContainerAction.action_start'), \
                mock.patch('zun.objects.ContainerAction.get_by_request_id',
                           return_value=mock.Mock(finish_time=None)):
            ctx = mock.Mock(project_id=None)
            self.driver.update_containers_states(ctx, [heal], manager_)
            self.rt.release_orphan_networks.reset_mock()
            self.driver.update_containers_states(ctx, [], manager_)
        self.assertEqual(1, manager_.container_rebuild.call_count)
        # It still retries failed network releases.
        self.rt.release_orphan_networks.assert_called_once_with()

    def test_a_heal_under_way_is_not_started_again(self):
        # The rebuild is a green thread of zun-compute: until it runs the
        # next sync still sees no sandbox and no task_state.
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())
        manager_ = mock.Mock()
        self.rt.list.return_value = []
        action = mock.Mock(finish_time=None)
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[heal]), \
                mock.patch('zun.objects.ContainerAction.action_start') as a, \
                mock.patch('zun.objects.ContainerAction.get_by_request_id',
                           return_value=action) as get:
            ctx = mock.Mock(project_id=None, request_id='req-sync')
            for _ in range(3):
                self.driver.update_containers_states(ctx, [heal], manager_)
            self.assertEqual(1, manager_.container_rebuild.call_count)
            # Its own request id, under which its action is found.
            rebuild_ctx = manager_.container_rebuild.call_args[0][0]
            self.assertNotEqual('req-sync', rebuild_ctx.request_id)
            self.assertEqual(rebuild_ctx.request_id,
                             a.call_args[0][0].request_id)
            self.assertEqual((heal.uuid, rebuild_ctx.request_id),
                             get.call_args[0][1:])
            # Finished (and still no sandbox): healed again.
            action.finish_time = '2026-12-06T12:00:00'
            self.driver.update_containers_states(ctx, [heal], manager_)
            self.assertEqual(2, manager_.container_rebuild.call_count)
        # A deleted container is forgotten by the next sync.
        self.assertIn(heal.uuid, self.driver._healer.started)
        other = self._container(uuid='other', container_id='cd' * 16,
                                save=mock.Mock())
        self._sync([other], sandboxes=[mock.Mock(id='cd' * 16)])
        self.assertEqual({}, self.driver._healer.started)

    def test_a_rebuild_that_fails_to_start_is_tried_again(self):
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())
        manager_ = mock.Mock()
        manager_.container_rebuild.side_effect = [RuntimeError('rpc'),
                                                  None]
        self.rt.list.return_value = []
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[heal]), \
                mock.patch('zun.objects.ContainerAction.action_start'), \
                mock.patch('zun.objects.ContainerAction.action_finish') as f, \
                mock.patch('zun.objects.ContainerAction.get_by_request_id',
                           return_value=mock.Mock(finish_time=None)):
            ctx = mock.Mock(project_id=None)
            self.driver.update_containers_states(ctx, [heal], manager_)
            # Its action finished as failed, nothing kept as under way.
            self.assertEqual('rebuild', f.call_args[0][2])
            self.assertIsInstance(f.call_args[1]['exc_val'], RuntimeError)
            self.assertEqual({}, self.driver._healer.started)
            self.driver.update_containers_states(ctx, [heal], manager_)
        self.assertEqual(2, manager_.container_rebuild.call_count)

    def test_missing_without_auto_heal_is_an_error(self):
        c = self._container(auto_heal=False, save=mock.Mock())
        manager_, _a = self._sync([c])
        self.assertFalse(manager_.container_rebuild.called)
        self.assertEqual('Error', c.status)
        self.assertIn('sandbox missing', c.status_reason)
        c.save.assert_called_once_with(mock.ANY)
        # An error keeps its reason; no sandbox ever: nothing to say.
        for kw in ({'status': 'Error', 'status_reason': 'pull failed'},
                   {'container_id': None, 'status_reason': 'no image'}):
            c = self._container(auto_heal=False, save=mock.Mock(), **kw)
            self._sync([c])
            self.assertEqual(kw['status_reason'], c.status_reason)
            self.assertFalse(c.save.called)
        # A stopped container that is being deleted is left alone.
        c = self._container(auto_heal=True, status='Stopped',
                            task_state='container_deleting',
                            save=mock.Mock())
        manager_, _a = self._sync([c])
        self.assertFalse(manager_.container_rebuild.called)

    def test_a_missing_sandbox_under_an_operation_is_left_alone(self):
        # A rebuild (user's or auto_heal's) deletes the sandbox, then
        # makes a new one: a sync in between must not save it Error (the
        # save could land after the rebuild's).
        for auto_heal in (False, True):
            c = self._container(auto_heal=auto_heal, status='Running',
                                task_state='container_rebuilding',
                                save=mock.Mock())
            manager_, _a = self._sync([c])
            self.assertEqual('Running', c.status)
            self.assertFalse(c.save.called)
            self.assertFalse(manager_.container_rebuild.called)

    def test_show_maps_statuses(self):
        c = self._container()
        for status, state, want in (
                ('running', {'started_at': 1}, 'Running'),
                ('paused', {}, 'Paused'),
                ('created', {}, 'Created'),
                ('exited', {'exit_code': 3}, 'Stopped'),
                ('exited', {'exit_code': 255, 'error': 'VM died'}, 'Error')):
            self.rt.get.return_value = self._sandbox(status, **state)
            self.driver.show(None, c)
            self.assertEqual(want, c.status)
        self.assertEqual('VM died', c.status_reason)
        self.assertIn('Exited(255)', c.status_detail)

    def test_show_never_raises(self):
        c = self._container()
        self.rt.get.side_effect = exception.ContainerNotFound(ref='x')
        self.driver.show(None, c)
        self.assertEqual('Error', c.status)
        self.assertIn('gone', c.status_reason)
        c = self._container(auto_remove=True)
        self.driver.show(None, c)
        self.assertEqual('Deleted', c.status)
        c = self._container()
        self.rt.get.side_effect = RuntimeError('boom')
        self.assertIs(c, self.driver.show(None, c))
        c = self._container(task_state='container_stopping')
        self.rt.get.side_effect = None
        self.rt.get.reset_mock()
        self.driver.show(None, c)
        self.assertFalse(self.rt.get.called)

    def test_a_show_before_the_heal_still_gets_it_started(self):
        # A GET saw the sandbox gone first (zun-compute saves the Error
        # it shows); the heal that followed rebuilt the container without
        # starting it, and it stayed Created (CI).
        heal = self._container(auto_heal=True, project_id='p1',
                               save=mock.Mock())
        self.rt.get.side_effect = exception.ContainerNotFound(ref='x')
        self.driver.show(None, heal)
        self.assertEqual('Error', heal.status)
        manager_, _a = self._sync([heal])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, heal, True)
        # What was not running is rebuilt, not started.
        stopped = self._container(uuid='s1', auto_heal=True, project_id='p1',
                                  status='Stopped', save=mock.Mock())
        self.driver.show(None, stopped)
        manager_, _a = self._sync([stopped])
        manager_.container_rebuild.assert_called_once_with(
            mock.ANY, stopped, False)

    def test_show_of_a_container_being_deleted(self):
        # zun-compute clears task_state after the driver's delete, then
        # frees placement and drops the row: a GET in between must not
        # turn the container into Error "gone from host".
        self.rt.get.side_effect = exception.ContainerNotFound(ref='x')
        for status in ('Deleting', 'Deleted'):
            c = self._container(status=status)
            self.driver.show(None, c)
            self.assertEqual((status, None), (c.status, c.status_reason))
        self.assertFalse(self.rt.get.called)

    def test_kill_signals(self):
        c = self._container()
        for given, want in ((None, signal.SIGKILL), ('None', signal.SIGKILL),
                            ('TERM', signal.SIGTERM),
                            ('SIGHUP', signal.SIGHUP), ('15', 15)):
            self.driver.kill(None, c, given)
            self.rt.kill.assert_called_with(c.container_id, want)

    def test_errors_become_zun_exceptions(self):
        from zun.common import exception as zun_exc
        c = self._container()
        self.rt.pause.side_effect = exception.Conflict(reason='not running')
        self.assertRaises(zun_exc.Conflict, self.driver.pause, None, c)
        self.rt.stop.side_effect = exception.ShimError(reason='x')
        self.assertRaises(zun_exc.ZunException, self.driver.stop, None, c,
                          '5')

    def test_stats_has_exactly_the_seven_keys(self):
        first = {'cpu_usage_usec': 0, 'time': 0.0, 'memory_usage': 1 << 20,
                 'memory_limit': 64 << 20, 'blkio_read': 1,
                 'blkio_write': 2, 'net_rx': 3, 'net_tx': 4}
        second = dict(first, cpu_usage_usec=100000, time=1.0)
        self.rt.call.side_effect = [first, second]
        with mock.patch('time.sleep'):
            stats = self.driver.stats(None, self._container())
        self.assertEqual({'CONTAINER', 'CPU %', 'MEM USAGE(MiB)',
                          'MEM LIMIT(MiB)', 'MEM %', 'BLOCK I/O(B)',
                          'NET I/O(B)'}, set(stats))
        self.assertEqual(10.0, stats['CPU %'])
        self.assertEqual(64.0, stats['MEM LIMIT(MiB)'])
        self.assertEqual('1/2', stats['BLOCK I/O(B)'])

    def test_update_provider_tree_fits_the_vm_overhead(self):
        # zun's ProviderTree holds a lock that only deep-copies under
        # eventlet (as in zun-compute): a plain stand-in is enough here.
        class Tree(object):
            def __init__(self):
                self.inv = {}

            def data(self, name):
                return types.SimpleNamespace(inventory=self.inv)

            def update_inventory(self, name, inventory):
                self.inv = inventory

            def has_sharing_provider(self, rc):
                return False

        tree = Tree()
        conf.CONF.set_override('memory_overhead_mb', 100, 'kata_hypervisor')
        with mock.patch.object(self.driver, 'get_host_mem',
                               return_value=(8 << 20, 0, 0, 0)), \
                mock.patch.object(self.driver,
                                  'get_total_disk_for_container',
                                  return_value=(100, 0)):
            self.driver.update_provider_tree(tree, 'node')
            first = dict(tree.data('node').inventory['MEMORY_MB'])
            self.driver.update_provider_tree(tree, 'node')
        memory = tree.data('node').inventory['MEMORY_MB']
        reserved = conf.CONF.compute.reserved_host_memory_mb
        self.assertEqual(reserved, memory['reserved'])
        self.assertEqual(8192 - 100 - reserved, memory['max_unit'])
        self.assertEqual(first, memory)     # stable from call to call

    def test_exec_create(self):
        # Interactive exec: kata_zun/tests/unit/console/test_driver.py
        from zun.common import exception as zun_exc
        c = self._container()
        self.assertRaises(zun_exc.Invalid, self.driver.execute_create,
                          None, c, '')
        exec_id = self.driver.execute_create(None, c, 'echo "a b"')
        self.assertEqual((c.container_id, ['echo', 'a b'], False),
                         self.driver._execs[exec_id])

    def test_execs_never_run_are_bounded(self):
        # POST execute?run=false&interactive=false makes an exec that
        # zun never runs: repeated, it must not grow zun-compute.
        c = self._container()
        ids = [self.driver.execute_create(None, c, 'true')
               for _i in range(self.mod.EXECS_MAX + 50)]
        self.assertEqual(self.mod.EXECS_MAX, len(self.driver._execs))
        self.assertNotIn(ids[0], self.driver._execs)
        # The newest still runs, as zun runs it right after creating it.
        self.rt.exec_client.return_value = (mock.MagicMock(), 'h', None)
        self.rt.exec_client.return_value[0].collect.return_value = (
            b'out', b'', 0)
        self.assertEqual(('out', 0), self.driver.execute_run(ids[-1],
                                                             'true'))

    def test_put_archive_below_microversion_1_25_takes_text(self):
        c = self._container()
        self.driver.put_archive(None, c, '/tmp', 'tar \u00e9')
        self.driver.put_archive(None, c, '/tmp', b'tar \xff')
        self.assertEqual(
            [mock.call('ab' * 16, '/tmp', 'tar \u00e9'.encode()),
             mock.call('ab' * 16, '/tmp', b'tar \xff')],
            self.rt.put_archive.call_args_list)

    def test_only_the_kata_runtime(self):
        from zun.common import exception as zun_exc
        c = self._container(runtime='runc')
        self.assertRaisesRegex(zun_exc.Invalid, 'runs only kata',
                               self.driver.create, None, c, {'repo': 'x'})
        self.rt.create.assert_not_called()
        with mock.patch('zun.container.driver.BaseDriver.'
                        'get_available_resources', return_value={
                            'mem_available': 1000}):
            self.rt.list.return_value = []
            self.assertEqual(
                ['kata'],
                self.driver.get_available_resources()['runtimes'])
