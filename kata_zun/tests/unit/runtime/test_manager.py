from oslotest import base

from kata_zun import exception
from kata_zun.runtime import manager


class ManagerHelpersTestCase(base.BaseTestCase):

    def test_clean_stat_bounds_what_the_guest_says(self):
        self.assertEqual({'name': '', 'size': 0, 'mode': 0, 'mtime': 0,
                          'linkTarget': ''}, manager._clean_stat('junk'))
        stat = manager._clean_stat({'name': 'x' * 10000, 'size': -1,
                                    'mode': True, 'mtime': 1.5,
                                    'linkTarget': ['a']})
        self.assertEqual(4096, len(stat['name']))
        self.assertEqual((0, 0, 1.5, ''), (stat['size'], stat['mode'],
                                           stat['mtime'],
                                           stat['linkTarget']))

    def test_restart_policies(self):
        self.assertEqual({'name': 'no', 'max_retries': 0},
                         manager.parse_restart_policy(None))
        self.assertEqual({'name': 'on-failure', 'max_retries': 3},
                         manager.parse_restart_policy('on-failure:3'))
        self.assertEqual({'name': 'always', 'max_retries': 0},
                         manager.parse_restart_policy('always'))
        for bad in ('sometimes', 'always:3', 'on-failure:x', 'on-failure:'):
            self.assertRaises(exception.InvalidInput,
                              manager.parse_restart_policy, bad)

    def test_env_merge_keeps_order_and_overrides(self):
        self.assertEqual(['A=1', 'B=3', 'C=4'],
                         manager._merge_env(['A=1', 'B=2'], ['B=3', 'C=4']))


class LostSandboxTestCase(base.BaseTestCase):

    def container(self, state, alive):
        return manager.Container('/nowhere', {'id': 'c' * 64}, state, alive)

    def test_host_restart_crash_and_clean_exit(self):
        from unittest import mock
        with mock.patch.object(manager.fileutils, 'boot_id',
                               return_value='boot-2'):
            c = self.container({'status': 'running', 'boot_id': 'boot-1',
                                'exit_code': None}, alive=False)
            self.assertEqual(('exited', 'host-restart', 255),
                             (c.status, c.lost, c.exit_code))
            self.assertIn('host restarted', c.error)
            c = self.container({'status': 'paused', 'boot_id': 'boot-2'},
                               alive=False)
            self.assertEqual('crash', c.lost)
            self.assertIn('shim died', c.error)
            # Records from before boot ids were kept: a crash.
            self.assertEqual('crash', self.container(
                {'status': 'running'}, alive=False).lost)
            c = self.container({'status': 'exited', 'exit_code': 3,
                                'boot_id': 'boot-1'}, alive=False)
            self.assertEqual((None, 3, None), (c.lost, c.exit_code, c.error))
            self.assertIsNone(self.container(
                {'status': 'running', 'boot_id': 'boot-1'}, alive=True).lost)
