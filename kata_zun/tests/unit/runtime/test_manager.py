import os
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun import network
from kata_zun.runtime import archiveops
from kata_zun.runtime import fileutils
from kata_zun.runtime import manager
from kata_zun.runtime import record
from kata_zun.runtime import validate


class ManagerHelpersTestCase(base.BaseTestCase):

    def test_clean_stat_bounds_what_the_guest_says(self):
        self.assertEqual({'name': '', 'size': 0, 'mode': 0, 'mtime': 0,
                          'linkTarget': ''}, archiveops._clean_stat('junk'))
        stat = archiveops._clean_stat({'name': 'x' * 10000, 'size': -1,
                                       'mode': True, 'mtime': 1.5,
                                       'linkTarget': ['a']})
        self.assertEqual(4096, len(stat['name']))
        self.assertEqual((0, 0, 1.5, ''), (stat['size'], stat['mode'],
                                           stat['mtime'],
                                           stat['linkTarget']))

    def test_restart_policies(self):
        self.assertEqual({'name': 'no', 'max_retries': 0},
                         validate.parse_restart_policy(None))
        self.assertEqual({'name': 'on-failure', 'max_retries': 3},
                         validate.parse_restart_policy('on-failure:3'))
        self.assertEqual({'name': 'always', 'max_retries': 0},
                         validate.parse_restart_policy('always'))
        for bad in ('sometimes', 'always:3', 'on-failure:x', 'on-failure:'):
            self.assertRaises(exception.InvalidInput,
                              validate.parse_restart_policy, bad)

    def test_env_merge_keeps_order_and_overrides(self):
        self.assertEqual(['A=1', 'B=3', 'C=4'],
                         validate.merge_env(['A=1', 'B=2'], ['B=3', 'C=4']))


class LostSandboxTestCase(base.BaseTestCase):

    def container(self, state, alive):
        return record.Container('/nowhere', {'id': 'c' * 64}, state, alive)

    def test_host_restart_crash_and_clean_exit(self):
        with mock.patch.object(fileutils, 'boot_id',
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


class DamagedRecordsTestCase(base.BaseTestCase):
    """One damaged record never hides a container nor the others."""

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            group='kata')
        self.rt = manager.Runtime()

    def _record(self, cid, config=None, state=None, raw_config=None,
                raw_state=None, created=1):
        cdir = os.path.join(self.rt.containers_dir, cid)
        os.makedirs(cdir)
        if raw_config is not None:
            with open(os.path.join(cdir, 'config.json'), 'wb') as f:
                f.write(raw_config)
        else:
            fileutils.write_json(os.path.join(cdir, 'config.json'),
                                 config or {'id': cid, 'name': 'n' + cid[:8],
                                            'created': created})
        if raw_state is not None:
            with open(os.path.join(cdir, 'state.json'), 'wb') as f:
                f.write(raw_state)
        else:
            fileutils.write_json(os.path.join(cdir, 'state.json'),
                                 state or {'status': 'exited',
                                           'exit_code': 0})
        return cdir

    def test_every_kind_of_damage_is_listed_with_an_error(self):
        good = 'a' * 64
        self._record(good)
        damaged = {
            'b' * 64: dict(raw_config=b'\x00garbage'),
            'c' * 64: dict(raw_config=b'{"id": "cc'),            # torn
            'd' * 64: dict(raw_state=b' ' * (4 * 1024 * 1024 + 1)),
            'e' * 64: dict(raw_state=b'[' * 100000),
            'f' * 64: dict(config=['not', 'an', 'object']),
            '1' * 64: dict(config={'id': 'x', 'name': 'n', 'created': 1}),
        }
        for cid, kw in damaged.items():
            self._record(cid, **kw)
        listed = {c.id: c for c in self.rt.list()}
        self.assertEqual(set(damaged) | {good}, set(listed))
        self.assertIsNone(listed[good].error)
        for cid in damaged:
            c = listed[cid]
            self.assertEqual(record.UNKNOWN, c.status, cid)
            self.assertIn('damaged sandbox record', c.error)
            self.assertNotIn('\n', c.error)
            self.assertEqual(cid, self.rt.get(cid).id)
        self.rt.remove('b' * 64)
        self.assertNotIn('b' * 64, [c.id for c in self.rt.list()])

    def test_wrong_types_in_state_are_left_out_and_reported(self):
        cid = 'a' * 64
        self._record(cid, state={
            'status': 'running\n', 'exit_code': 'zero', 'shim_pid': [1],
            'started_at': 'yesterday', 'error': {'x': 1},
            'health': {'log': ['x']}, 'oom_killed': 1})
        c = self.rt.get(cid)
        self.assertEqual('created', c.status)
        self.assertFalse(c.shim_alive)
        self.assertIsNone(c.exit_code)
        for key in ('error', 'exit_code', 'health', 'oom_killed',
                    'shim_pid', 'started_at', 'status'):
            self.assertIn(key, c.error)
        self.assertIsNone(c.health)

    def test_a_record_being_created_is_not_listed(self):
        os.makedirs(os.path.join(self.rt.containers_dir, 'a' * 64))
        self.assertEqual([], self.rt.list())


def _nic(n):
    return {'port_id': '%08d-0000-4000-8000-000000000000' % n,
            'net_id': 'net%d' % n, 'mac': 'fa:16:3e:00:00:%02x' % n,
            'mtu': 1450, 'bridge': 'br-int', 'datapath_type': 'netdev',
            'ips': [{'address': '10.0.%d.5' % n, 'prefix': 24,
                     'gateway': '10.0.%d.1' % n, 'version': 4}]}


class LiveNetworkChangeTestCase(base.BaseTestCase):
    """Runtime.set_network on a running container: the order of the
    shim's hotplug calls and the host's plugging, and what is recorded.
    """

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            group='kata')
        self.rt = manager.Runtime()
        cdir = os.path.join(self.rt.containers_dir, 'c' * 64)
        os.makedirs(cdir)
        self.request = {'network': 'neutron', 'ports': [],
                        'nics': [_nic(1)]}
        fileutils.write_json(os.path.join(cdir, 'config.json'), {
            'id': 'c' * 64, 'name': 'web', 'created': 1,
            'sandbox': {'hostname': 'web'}, 'network': self.request})
        fileutils.write_json(os.path.join(cdir, 'state.json'),
                             {'status': 'running'})
        network.write_attachment(cdir, 'web', self.request)
        self.dir = cdir
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True))
        self.order = mock.Mock()
        self.client = self.order.client
        self.client.__enter__ = mock.Mock(return_value=self.client)
        self.client.__exit__ = mock.Mock(return_value=False)
        self.useFixture(fixtures.MockPatchObject(
            self.rt, 'connect', return_value=self.client))
        self.useFixture(fixtures.MockPatchObject(
            network, 'plug_nic', self.order.plug_nic))
        self.useFixture(fixtures.MockPatchObject(
            network, 'unplug_nic', self.order.unplug_nic))
        self.useFixture(fixtures.MockPatchObject(
            network, 'validate'))

    def _config(self):
        return fileutils.read_json(os.path.join(self.dir, 'config.json'))

    def test_replace_a_nic_while_running(self):
        self.rt.set_network('c' * 64, {'network': 'neutron',
                                       'nics': [_nic(2)]})
        state = self.rt.state_path
        self.assertEqual([
            mock.call.client.call('nic_remove', {
                'tap': 'kzt000000010000', 'mac': 'fa:16:3e:00:00:01'},
                timeout=mock.ANY),
            mock.call.unplug_nic(state, 'c' * 64, _nic(1)),
            mock.call.plug_nic(state, 'c' * 64, _nic(2)),
            mock.call.client.call('nic_add', {
                'tap': 'kzt000000020000', 'mac': 'fa:16:3e:00:00:02',
                # Open vSwitch userspace datapath: no checksum offload
                'checksum_offload': False,
                # the only NIC now: it carries the default route
                'interface': {'mac': 'fa:16:3e:00:00:02',
                              'address': '10.0.2.5', 'prefix': 24,
                              'mtu': 1450, 'gateway': '10.0.2.1'}},
                timeout=mock.ANY)],
            [c for c in self.order.mock_calls
             if c[0] in ('client.call', 'plug_nic', 'unplug_nic')])
        self.assertEqual([_nic(2)], self._config()['network']['nics'])
        att = network.read_attachment(self.dir)
        self.assertEqual((['fa:16:3e:00:00:02'], True),
                         ([n['mac'] for n in att['nics']], att['hotplug']))

    def test_default_route_moves_to_a_remaining_nic(self):
        self.request['nics'] = [_nic(1), _nic(2)]
        config = self._config()
        config['network'] = self.request
        fileutils.write_json(os.path.join(self.dir, 'config.json'), config)
        network.write_attachment(self.dir, 'web', self.request)
        self.rt.set_network('c' * 64, {'network': 'neutron',
                                       'nics': [_nic(2)]})
        calls = [c for c in self.order.mock_calls if c[0] == 'client.call']
        self.assertEqual(['nic_remove', 'nic_configure'],
                         [c[1][0] for c in calls])
        self.assertEqual({'mac': 'fa:16:3e:00:00:02', 'address': '10.0.2.5',
                          'prefix': 24, 'mtu': 1450,
                          'gateway': '10.0.2.1'},
                         calls[1][1][1]['interface'])
        # Nothing to reconfigure when the removed NIC had no route.
        self.order.reset_mock()
        self.rt.set_network('c' * 64, {'network': 'neutron', 'nics': []})
        self.assertEqual(['nic_remove'], [
            c[1][0] for c in self.order.mock_calls if c[0] == 'client.call'])

    def test_failed_hotplug_unplugs_the_host_side(self):
        self.client.call.side_effect = exception.ShimError(reason='slots')
        want = {'network': 'neutron', 'nics': [_nic(1), _nic(2)]}
        self.assertRaises(exception.ShimError, self.rt.set_network,
                          'c' * 64, want)
        self.order.unplug_nic.assert_called_once_with(
            self.rt.state_path, 'c' * 64, _nic(2))
        self.assertEqual([_nic(1)], self._config()['network']['nics'])

    def test_refused_when_paused_or_fixed(self):
        want = {'network': 'neutron', 'nics': []}
        fileutils.write_json(os.path.join(self.dir, 'state.json'),
                             {'status': 'paused'})
        exc = self.assertRaises(exception.Conflict, self.rt.set_network,
                                'c' * 64, want)
        self.assertIn('paused', str(exc))
        fileutils.write_json(os.path.join(self.dir, 'state.json'),
                             {'status': 'running'})
        # Started before hotplug slots existed: its NICs are fixed.
        os.unlink(os.path.join(self.dir, 'network.json'))
        exc = self.assertRaises(exception.Conflict, self.rt.set_network,
                                'c' * 64, want)
        self.assertIn('fixed while it runs', str(exc))
        self.client.call.assert_not_called()


class RecordLockTestCase(base.BaseTestCase):

    def test_lock_waits_without_blocking_green_threads(self):
        # A second taker polls (and sleeps, which yields under eventlet)
        # until the first releases.
        import threading
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            group='kata')
        rt = manager.Runtime()
        first = rt._lock()
        sleeps = []
        real_sleep = manager.time.sleep

        def sleep(seconds):
            sleeps.append(seconds)
            if len(sleeps) == 3:
                os.close(first)
            real_sleep(0)
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.manager.time.sleep', side_effect=sleep))
        got = []
        t = threading.Thread(target=lambda: got.append(rt._lock()))
        t.start()
        t.join(10)
        self.assertEqual(1, len(got))
        os.close(got[0])
        self.assertEqual([0.001, 0.002, 0.004], sleeps)


class RebindVolumesTestCase(base.BaseTestCase):
    """Runtime.rebind_volumes: a stopped container's volumes follow the
    devices the Zun driver attached again; a detached one stops the boot.
    """

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            group='kata')
        self.rt = manager.Runtime()
        self.dev = {}
        for name in ('old', 'new'):
            self.dev[name] = os.path.join(root, name)
            open(self.dev[name], 'w').close()
        self.dir = os.path.join(self.rt.containers_dir, 'c' * 64)
        os.makedirs(self.dir)
        from kata_zun.volume import devices
        volumes = devices.resolve([{
            'type': 'block', 'source': self.dev['old'], 'target': '/data',
            'readonly': False, 'ref': 'cinder:3'}], self.rt.volumes)
        fileutils.write_json(os.path.join(self.dir, 'config.json'), {
            'id': 'c' * 64, 'name': 'web', 'created': 1,
            'sandbox': {'hostname': 'web'}, 'volumes': volumes,
            'agent_spec': {'volumes': devices.agent_specs(volumes)}})
        self.state = {'status': 'exited', 'exit_code': 0}
        fileutils.write_json(os.path.join(self.dir, 'state.json'),
                             self.state)
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=False))

    def _config(self):
        return fileutils.read_json(os.path.join(self.dir, 'config.json'))

    def _now(self, source, **kw):
        req = {'type': 'block', 'source': source, 'target': '/data',
               'readonly': False, 'ref': 'cinder:3'}
        req.update(kw)
        return {'cinder:3': req}

    def test_new_device_name_is_recorded(self):
        self.rt.rebind_volumes('c' * 64, self._now(self.dev['new'],
                                                   readonly=True))
        vol = self._config()['volumes'][0]
        self.assertEqual((self.dev['new'], self.dev['new'], True),
                         (vol['source'], vol['disk'], vol['readonly']))
        self.assertEqual('kz-vol0', vol['serial'])
        self.assertTrue(
            self._config()['agent_spec']['volumes'][0]['readonly'])

    def test_unchanged_is_not_rewritten(self):
        before = os.stat(os.path.join(self.dir, 'config.json')).st_ino
        self.rt.rebind_volumes('c' * 64, self._now(self.dev['old']))
        self.assertEqual(before, os.stat(
            os.path.join(self.dir, 'config.json')).st_ino)

    def test_detached_or_moved_volume_refuses(self):
        for current in ({}, self._now(self.dev['new'], target='/other'),
                        self._now(self.dev['new'], type='bind')):
            e = self.assertRaises(exception.Conflict,
                                  self.rt.rebind_volumes, 'c' * 64, current)
            self.assertIn('no longer attached', str(e))
        self.assertEqual(self.dev['old'],
                         self._config()['volumes'][0]['disk'])

    def test_a_live_vm_keeps_its_devices(self):
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True))
        fileutils.write_json(os.path.join(self.dir, 'state.json'), {
            'status': 'running', 'shim_pid': 1, 'boot_id':
            fileutils.boot_id()})
        self.rt.rebind_volumes('c' * 64, {})
        self.assertEqual(self.dev['old'],
                         self._config()['volumes'][0]['disk'])


class DiskSizeTestCase(base.BaseTestCase):
    """Runtime.create makes the writable layer at the size asked, records
    it, shows it, and refuses a size it cannot give before making
    anything.
    """

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(state_path=root + '/state', run_path=root + '/run',
                        writable_layer_mb=32, group='kata')
        self.rt = manager.Runtime()
        self.rt._images = mock.Mock()
        self.rt._images.get.return_value = mock.Mock(
            id='sha256:' + 'e' * 64, config={'Cmd': ['sh']},
            block_image='/nowhere/image.erofs', block_fs='erofs')
        # The guest assets are looked up at create; none are needed here.
        self.useFixture(fixtures.MockPatch('kata_zun.guest.builder.find'))

    def _layer_size(self, c):
        return os.stat(os.path.join(c.dir, 'rw.img')).st_size // (1 << 20)

    def test_size_recorded_and_shown(self):
        c = self.rt.create('busybox', disk_mb=64)
        self.assertEqual(64, self._layer_size(c))
        config = fileutils.read_json(os.path.join(c.dir, 'config.json'))
        self.assertEqual(64, config['disk_mb'])
        self.assertEqual(64, self.rt.get(c.id).to_dict()['Limits'][
            'disk_mb'])

    def test_default_is_the_configured_size(self):
        c = self.rt.create('busybox')
        self.assertEqual(32, self._layer_size(c))
        self.assertEqual(32, c.to_dict()['Limits']['disk_mb'])

    def test_refused_sizes_leave_nothing_behind(self):
        from kata_zun.runtime import layer
        total_mb, _free = layer.filesystem_mb(self.rt.containers_dir)
        for bad in (total_mb + 1, layer.MIN_MB - 1, 0, -5, 2 ** 80, 1.5):
            self.assertRaises(exception.InvalidInput, self.rt.create,
                              'busybox', disk_mb=bad)
        self.assertEqual([], os.listdir(self.rt.containers_dir))

    def test_a_failed_mkfs_leaves_nothing_behind(self):
        with mock.patch('kata_zun.runtime.layer.make',
                        side_effect=exception.KataZunException('mkfs')):
            self.assertRaises(exception.KataZunException, self.rt.create,
                              'busybox', disk_mb=64)
        self.assertEqual([], self.rt.list())
        self.assertEqual(['.lock'], os.listdir(self.rt.containers_dir))
