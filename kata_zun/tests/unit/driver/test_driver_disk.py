"""The driver's disk contract: Zun's ``--disk`` reaches the runtime, and
zun-compute's own checks (run here, unchanged) accept it.
"""

import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base
from zun.common import exception as zun_exc
from zun.compute import manager as zun_manager

from kata_zun import conf

UUID = '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f'


class DriverDiskTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        self.rt.containers_dir = '/var/lib/kata-zun/containers'
        self.rt.create.return_value = mock.Mock(id=UUID.replace('-', ''))

    def _container(self, disk):
        return types.SimpleNamespace(
            uuid=UUID, privileged=False, entrypoint=None,
            command=['sleep', '1'], workdir=None, memory=None, cpu=None,
            hostname=None, auto_remove=False, labels={}, tty=False,
            interactive=False, healthcheck=None, disk=disk)

    def _disk_mb(self, disk):
        self.driver._rt_create(self._container(disk), mock.Mock(id='i'),
                               [], None, None, None)
        return self.rt.create.call_args[1]['disk_mb']

    def test_disk_gib_becomes_mib(self):
        self.assertEqual(5 * 1024, self._disk_mb(5))
        self.assertEqual(160 * 1024, self._disk_mb('160'))
        self.assertIsNone(self._disk_mb(None))
        self.assertIsNone(self._disk_mb(0))

    def _zun_check(self, disk):
        """zun-compute's _check_support_disk_quota, as in container_create.
        """
        compute = mock.Mock()
        compute._get_driver.return_value = self.driver
        container = types.SimpleNamespace(disk=disk)
        zun_manager.Manager._check_support_disk_quota(compute, None,
                                                      container)
        self.assertFalse(compute._fail_container.called)
        return container.disk

    def test_zun_accepts_disk(self):
        self.assertTrue(self.driver.node_support_disk_quota())
        self.assertIsNone(self.driver.get_host_default_base_size())
        self.assertEqual(5, self._zun_check(5))
        self.assertEqual(1, self._zun_check(1))
        # No --disk: zun's default_disk (GiB), which the runtime makes.
        self.cfg.config(default_disk=3)
        self.assertEqual(3, self._zun_check(None))

    def test_without_quota_support_zun_refuses_disk(self):
        # What zun did before: proves _zun_check runs zun's real check.
        with mock.patch.object(self.driver, 'node_support_disk_quota',
                               return_value=False), \
                mock.patch.object(self.driver, 'get_host_default_base_size',
                                  return_value=None):
            self.assertRaises(zun_exc.Invalid, self._zun_check, 5)

    def _statvfs(self, total_gib):
        return mock.patch('os.statvfs', return_value=mock.Mock(
            f_frsize=4096, f_blocks=total_gib * 262144, f_bavail=0))

    def test_disk_total_is_the_state_path_filesystem(self):
        self.cfg.config(reserve_disk_for_image=0.2, group='compute')
        with self._statvfs(100) as statvfs:
            self.assertEqual((100, 20),
                             self.driver.get_total_disk_for_container())
        statvfs.assert_called_once_with('/var/lib/kata-zun/containers')
        self.cfg.config(reserve_disk_for_image=0.0, group='compute')
        with self._statvfs(3):
            self.assertEqual((3, 0),
                             self.driver.get_total_disk_for_container())

    def test_a_state_filesystem_under_1_gib_is_reported_as_1(self):
        # Regression: a 256 MiB state filesystem gave DISK_GB total 0,
        # which placement refuses with the whole inventory (VCPU and
        # MEMORY_MB too): zun-compute never got a resource provider.
        self.cfg.config(reserve_disk_for_image=0.0, group='compute')
        with mock.patch('os.statvfs', return_value=mock.Mock(
                f_frsize=4096, f_blocks=65536, f_bavail=0)):
            self.assertEqual((1, 0),
                             self.driver.get_total_disk_for_container())

    def test_resources_report_disk_and_quota(self):
        self.cfg.config(reserve_disk_for_image=0.25, group='compute')
        self.rt.list.return_value = []
        with self._statvfs(40):
            data = self.driver.get_available_resources()
        self.assertEqual(30, data['disk_total'])
        self.assertIs(True, data['disk_quota_supported'])

    def test_placement_disk_inventory(self):
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
        self.cfg.config(reserved_host_disk_mb=2048, group='compute')
        with self._statvfs(250), \
                mock.patch.object(self.driver, 'get_host_mem',
                                  return_value=(8 << 20, 0, 0, 0)):
            self.driver.update_provider_tree(tree, 'node')
        disk = tree.data('node').inventory['DISK_GB']
        self.assertEqual((250, 250, 2),
                         (disk['total'], disk['max_unit'], disk['reserved']))
