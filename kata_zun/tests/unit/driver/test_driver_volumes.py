"""KataDriver's volume calls: devices for the VM, never a host mount."""

import base64
import json
import os
import stat
import types
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception

UUID = '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f'
VOL = '0d6b8a4e-7c9f-4e21-8a3b-5f6e7d8c9b0a'


def _volmap(provider='cinder', device='/dev/loop7', access_mode='rw',
            connected=True, **kw):
    info = {'driver_volume_type': 'local',
            'data': {'device_path': device, 'access_mode': access_mode}}
    v = types.SimpleNamespace(
        volume_provider=provider, volume_id=3, cinder_volume_id='cv-1',
        container_uuid=UUID, container_path='/data', auto_remove=False,
        connection_info=json.dumps(info) if connected else None,
        contents=None, volume=types.SimpleNamespace(uuid=VOL),
        save=mock.Mock())
    v.__dict__.update(kw)
    return v


class VolumeDriverTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun import driver
        from kata_zun.driver import volumes
        import zun.conf
        self.mod = volumes
        self.zconf = self.useFixture(config_fixture.Config(zun.conf.CONF))
        self.voldir = self.useFixture(fixtures.TempDir()).path
        self.zconf.config(volume_dir=self.voldir, group='volume')
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        self.rt.get.side_effect = exception.ContainerNotFound(ref='x')
        self.workflow = self.useFixture(fixtures.MockPatch(
            'zun.volume.cinder_workflow.CinderWorkflow')).mock.return_value
        self.mount = self.useFixture(fixtures.MockPatch(
            'zun.common.mount.do_mount')).mock
        self.isblk = self.useFixture(fixtures.MockPatch(
            'os.stat', wraps=os.stat)).mock

    def _as_block_device(self, *paths):
        real = os.stat

        def fake(path, *a, **kw):
            if path in paths:
                return os.stat_result((stat.S_IFBLK | 0o600,) + (0,) * 9)
            return real(path, *a, **kw)
        self.isblk.side_effect = fake

    def test_cinder_attach_connects_and_never_mounts(self):
        self._as_block_device('/dev/loop7')
        self.workflow.attach_volume.return_value = '/dev/loop7'
        vm = _volmap(connected=False)
        self.driver.attach_volume(None, vm)
        self.workflow.attach_volume.assert_called_once_with(vm)
        self.mount.assert_not_called()
        self.workflow.detach_volume.assert_not_called()

    def test_cinder_reattach_takes_the_new_device_name(self):
        self._as_block_device('/dev/loop9')
        self.workflow._connect_volume.return_value = {'path': '/dev/loop9'}
        vm = _volmap(device='/dev/loop7')
        self.driver.attach_volume('ctx', vm)
        self.assertEqual('/dev/loop9', json.loads(
            vm.connection_info)['data']['device_path'])
        vm.save.assert_called_once_with('ctx')
        self.mount.assert_not_called()

    def test_cinder_attach_of_a_non_block_device_is_undone(self):
        from zun.common import exception as zun_exc
        path = os.path.join(self.voldir, 'regular')
        open(path, 'w').close()
        self.workflow.attach_volume.return_value = path
        vm = _volmap(connected=False)
        self.assertRaises(zun_exc.ZunException, self.driver.attach_volume,
                          'ctx', vm)
        self.workflow.detach_volume.assert_called_once_with('ctx', vm)

    def test_other_fstype_is_refused_before_attach(self):
        from zun.common import exception as zun_exc
        self.zconf.config(fstype='xfs', group='volume')
        e = self.assertRaises(zun_exc.Invalid, self.driver.attach_volume,
                              None, _volmap(connected=False))
        self.assertIn('ext4', str(e))
        self.workflow.attach_volume.assert_not_called()

    def test_unknown_provider(self):
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.ZunException, self.driver.attach_volume,
                          None, _volmap(provider='nfs'))

    def test_injected_file_written_once(self):
        vm = _volmap(provider='local', connected=False,
                     contents=base64.b64encode(b'hello\n').decode())
        self.driver.attach_volume(None, vm)
        path = self.mod.injected_file(vm)
        self.assertEqual(os.path.join(self.voldir, VOL, VOL),
                         path)
        with open(path, 'rb') as f:
            self.assertEqual(b'hello\n', f.read())
        # The container changed it; zun-compute restarts and attaches
        # again: the change stays.
        with open(path, 'wb') as f:
            f.write(b'changed\n')
        self.driver.attach_volume(None, vm)
        with open(path, 'rb') as f:
            self.assertEqual(b'changed\n', f.read())

    def test_injected_file_needs_a_real_uuid(self):
        from zun.common import exception as zun_exc
        for bad in ('..', '../x', '', None):
            vm = _volmap(provider='local',
                         volume=types.SimpleNamespace(uuid=bad))
            self.assertRaises(zun_exc.ZunException,
                              self.driver.detach_volume, None, vm)
        self.assertTrue(os.path.isdir(self.voldir))

    def test_injected_file_too_big_or_not_base64(self):
        from zun.common import exception as zun_exc
        big = base64.b64encode(b'x' * (self.mod.MAX_INJECTED_BYTES + 1))
        self.assertRaises(zun_exc.Invalid, self.driver.attach_volume, None,
                          _volmap(provider='local', contents=big.decode()))
        self.assertRaises(zun_exc.Invalid, self.driver.attach_volume, None,
                          _volmap(provider='local', contents='%%%'))
        self.assertFalse(os.path.exists(
            os.path.join(self.voldir, VOL, VOL)))

    def test_injected_file_does_not_follow_a_planted_symlink(self):
        vm = _volmap(provider='local', connected=False,
                     contents=base64.b64encode(b'x').decode())
        path = self.mod.injected_file(vm)
        os.makedirs(os.path.dirname(path))
        victim = os.path.join(self.voldir, 'victim')
        open(victim, 'w').close()
        os.symlink(victim, path + '.tmp')
        # The temporary file has an unpredictable name (made O_EXCL):
        # the planted link is not followed, nor in the way.
        self.driver.attach_volume(None, vm)
        with open(victim) as f:
            self.assertEqual('', f.read())
        with open(path) as f:
            self.assertEqual('x', f.read())
        self.assertEqual(0o644, os.stat(path).st_mode & 0o777)

    def test_requests(self):
        self._as_block_device('/dev/loop7', '/dev/loop8')
        local = _volmap(provider='local', volume_id=4,
                        container_path='/etc/app.conf')
        reqs = self.mod.requests([
            _volmap(), _volmap(device='/dev/loop8', access_mode='ro',
                               volume_id=5, container_path='/ro'),
            local])
        self.assertEqual([
            {'type': 'block', 'source': '/dev/loop7', 'target': '/data',
             'readonly': False, 'ref': 'cinder:3'},
            {'type': 'block', 'source': '/dev/loop8', 'target': '/ro',
             'readonly': True, 'ref': 'cinder:5'},
            {'type': 'bind', 'target': '/etc/app.conf', 'readonly': False,
             'source': os.path.join(self.voldir, VOL, VOL),
             'ref': 'local:4'}], reqs)

    def test_requests_refuse_unattached_and_bad_targets(self):
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.ZunException, self.mod.requests,
                          [_volmap(connected=False)])
        self.assertRaises(zun_exc.ZunException, self.mod.requests,
                          [_volmap(connection_info='{"data": {}}')])
        self._as_block_device('/dev/loop7')
        self.assertRaises(zun_exc.Invalid, self.mod.requests,
                          [_volmap(container_path='/a/../..')])
        self.assertRaises(zun_exc.Invalid, self.mod.requests,
                          [_volmap(container_path='relative')])

    def test_detach_stops_a_running_vm_first(self):
        from kata_zun.runtime import record
        calls = []
        self.rt.get.side_effect = None
        self.rt.get.return_value = mock.Mock(status=record.RUNNING)
        self.rt.stop.side_effect = lambda cid: calls.append(('stop', cid))
        self.workflow.detach_volume.side_effect = (
            lambda ctx, vm: calls.append(('detach', vm.cinder_volume_id)))
        self.driver.detach_volume('ctx', _volmap())
        self.assertEqual([('stop', UUID.replace('-', '')),
                          ('detach', 'cv-1')], calls)

    def test_detach_without_vm(self):
        self.driver.detach_volume('ctx', _volmap())
        self.rt.stop.assert_not_called()
        self.workflow.detach_volume.assert_called_once()

    def test_detach_injected_file_removes_it(self):
        vm = _volmap(provider='local', connected=False,
                     contents=base64.b64encode(b'x').decode())
        self.driver.attach_volume(None, vm)
        self.driver.detach_volume(None, vm)
        self.assertFalse(os.path.exists(os.path.dirname(
            self.mod.injected_file(vm))))

    def test_start_rebinds_then_starts(self):
        from kata_zun.driver import volumes
        self._as_block_device('/dev/loop9')
        c = types.SimpleNamespace(uuid=UUID, container_id='ab' * 16,
                                  status='Stopped', status_reason=None)
        self.rt.start.return_value = (None, mock.Mock(start_error=None))
        with mock.patch.object(volumes.objects.VolumeMapping,
                               'list_by_container',
                               return_value=[_volmap(device='/dev/loop9')]):
            self.driver.start('ctx', c)
        want = {'cinder:3': {'type': 'block', 'source': '/dev/loop9',
                             'target': '/data', 'readonly': False,
                             'ref': 'cinder:3'}}
        self.rt.rebind_volumes.assert_called_once_with('ab' * 16, want)
        self.assertEqual('Running', c.status)

    def test_start_refused_when_a_volume_was_detached(self):
        from kata_zun.driver import volumes
        from zun.common import exception as zun_exc
        c = types.SimpleNamespace(uuid=UUID, container_id='ab' * 16)
        self.rt.rebind_volumes.side_effect = exception.Conflict(
            'the volume at /data (cinder:3) is no longer attached')
        with mock.patch.object(volumes.objects.VolumeMapping,
                               'list_by_container', return_value=[]):
            self.assertRaises(zun_exc.Conflict, self.driver.start, 'ctx', c)
        self.rt.start.assert_not_called()
