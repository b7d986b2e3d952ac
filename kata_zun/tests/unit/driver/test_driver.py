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
            task_state=None, auto_remove=False, name='c1', host='h')
        c.__dict__.update(kw)
        return c

    def _sandbox(self, status, **state):
        s = mock.Mock(status=status, state=state, exit_code=state.get(
            'exit_code'), error=state.get('error'), shim_alive=True)
        return s

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

    def test_interactive_exec_is_refused_clearly(self):
        from zun.common import exception as zun_exc
        c = self._container()
        self.assertRaisesRegex(zun_exc.Invalid, 'interactive exec',
                               self.driver.execute_create, None, c,
                               'sh', interactive=True)
        self.assertRaises(zun_exc.Invalid, self.driver.execute_create,
                          None, c, '')
        exec_id = self.driver.execute_create(None, c, 'echo "a b"')
        self.assertEqual((c.container_id, ['echo', 'a b'], False),
                         self.driver._execs[exec_id])
