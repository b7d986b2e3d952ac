"""The capsule driver: a Zun capsule is one pod (one VM), its containers
are the pod's, and what zun shows follows the pod.
"""

import json
import os
import stat
import time
import types
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import podspec

CAPSULE = '11111111-2222-4333-8444-555555555555'
C1 = 'aaaaaaaa-0000-4000-8000-000000000001'
C2 = 'aaaaaaaa-0000-4000-8000-000000000002'
INIT = 'aaaaaaaa-0000-4000-8000-000000000003'


def _volmap(container_uuid, cinder_id, path, device='/dev/loop7',
            access_mode='rw', provider='cinder', connected=True):
    info = {'data': {'device_path': device, 'access_mode': access_mode}}
    return types.SimpleNamespace(
        volume_provider=provider, cinder_volume_id=cinder_id,
        container_uuid=container_uuid, container_path=path,
        connection_info=json.dumps(info) if connected else None)


def _zc(uuid, db_id, **kw):
    zc = mock.Mock(
        uuid=uuid, id=db_id, image='busybox', image_driver='docker',
        image_pull_policy='ifnotpresent', registry=None, entrypoint=None,
        command=['sleep', '1000'], workdir=None, environment={'A': '1'},
        cpu=None, memory='64', tty=False, interactive=False,
        exposed_ports=None, container_id=None, status='Creating',
        status_reason=None, status_detail=None)
    zc.name = 'capsule-x-%s' % uuid[-1]
    zc.configure_mock(**kw)
    return zc


def _record(cid, status='running', exit_code=None, error=None):
    return types.SimpleNamespace(
        id=cid, status=status, exit_code=exit_code, error=error,
        lost=None, health=None,
        state={'started_at': time.time() - 5,
               'finished_at': time.time() - 1})


class _Pod(object):
    shim_alive = True

    def __init__(self, inits, containers, status, error=None):
        self.id = CAPSULE.replace('-', '')
        self.init_containers = inits
        self.containers = containers
        self.status = status
        self.error = error


class PodVolumesTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        from kata_zun.driver import capsule
        self.mod = capsule
        real = os.stat

        def fake(path, *a, **kw):
            if path.startswith('/dev/loop'):
                return os.stat_result((stat.S_IFBLK | 0o600,) + (0,) * 9)
            return real(path, *a, **kw)
        self.useFixture(fixtures.MockPatch('os.stat', side_effect=fake))

    def test_a_volume_two_containers_mount_is_one_disk(self):
        c1, c2 = _zc(C1, 1), _zc(C2, 2)
        volumes, mounts = self.mod.pod_volumes([c1, c2], {
            C1: [_volmap(C1, 'v-1', '/data')],
            C2: [_volmap(C2, 'v-1', '/in', access_mode='ro'),
                 _volmap(C2, 'v-2', '/other', device='/dev/loop8')]})
        self.assertEqual([
            {'name': 'vol0', 'type': 'block', 'source': '/dev/loop7',
             'readonly': False},
            {'name': 'vol1', 'type': 'block', 'source': '/dev/loop8',
             'readonly': False}], volumes)
        self.assertEqual([{'name': 'vol0', 'target': '/data',
                           'readonly': False}], mounts[C1])
        self.assertEqual(['vol0', 'vol1'], [m['name'] for m in mounts[C2]])

    def test_a_read_only_attachment_is_read_only(self):
        volumes, mounts = self.mod.pod_volumes([_zc(C1, 1)], {
            C1: [_volmap(C1, 'v-1', '/data', access_mode='ro')]})
        self.assertTrue(volumes[0]['readonly'])
        self.assertTrue(mounts[C1][0]['readonly'])

    def test_unattached_or_foreign_volumes_are_refused(self):
        from zun.common import exception as zun_exc
        for vm in (_volmap(C1, 'v', '/d', connected=False),
                   _volmap(C1, 'v', '/d', provider='local'),
                   _volmap(C1, 'v', '/d', device='/etc/passwd')):
            self.assertRaises(zun_exc.ZunException, self.mod.pod_volumes,
                              [_zc(C1, 1)], {C1: [vm]})


class CapsuleDriverTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        import zun.conf
        self.zconf = self.useFixture(config_fixture.Config(zun.conf.CONF))
        from kata_zun.driver import capsule
        self.mod = capsule
        with mock.patch.object(capsule.manager, 'Runtime') as rt:
            self.driver = capsule.KataCapsuleDriver()
        self.rt = rt.return_value
        self.rt.images.get.side_effect = lambda ref: types.SimpleNamespace(
            id='img-' + ref, config={'Cmd': ['sh'], 'WorkingDir': '/w'})
        self.pull = self.useFixture(fixtures.MockPatchObject(
            capsule.KataCapsuleDriver, 'pull_image',
            side_effect=lambda ctx, repo, tag, policy, drv, registry=None:
            ({'id': repo, 'path': None}, True))).mock
        self.setup_net = self.useFixture(fixtures.MockPatchObject(
            capsule.KataCapsuleDriver, '_setup_network',
            return_value=({'net': [{'addr': '10.0.0.5'}]},
                          {'network': 'neutron', 'nics': []}))).mock
        self.release = self.useFixture(fixtures.MockPatchObject(
            capsule.KataCapsuleDriver, '_release_network')).mock
        self.init, self.c1, self.c2 = (_zc(INIT, 3), _zc(C1, 1),
                                       _zc(C2, 2, command=None))
        self.capsule = mock.Mock(
            uuid=CAPSULE, hostname=None, labels={'a': 'b'},
            restart_policy={'Name': 'on-failure'}, host='h1',
            init_containers=[self.init], containers=[self.c2, self.c1],
            addresses=None, container_id=None)
        self.members = [_record(INIT.replace('-', ''), 'exited', 0),
                        _record(C1.replace('-', '')),
                        _record(C2.replace('-', ''))]
        made = _Pod(self.members[:1], self.members[1:], podspec.PENDING)
        self.rt.create_pod.return_value = made

    def _pod_now(self, status, error=None):
        pod = _Pod(self.members[:1], self.members[1:], status, error)
        self.rt.get_pod.return_value = pod
        return pod

    def test_create_makes_one_pod_and_runs_it(self):
        self._pod_now(podspec.RUNNING)
        out = self.driver.create_capsule('ctx', self.capsule, {}, [{}], {})
        self.assertEqual('Running', out.status)
        args, kw = self.rt.create_pod.call_args
        self.assertEqual(['c0', 'c1'], [s.name for s in args[0]])
        # zun's order of creation, whatever order the list came in.
        self.assertEqual(['img-busybox'] * 2, [s.image for s in args[0]])
        self.assertEqual(['sleep', '1000'], args[0][0].args)
        self.assertEqual([C1.replace('-', ''), C2.replace('-', '')],
                         [s.cid for s in args[0]])
        # A command left to the image: zun shows the image's.
        self.assertEqual(['sh'], self.c2.command)
        self.assertEqual(['init0'], [s.name for s in kw['init_containers']])
        self.assertEqual(CAPSULE.replace('-', ''), kw['pod_id'])
        self.assertEqual('on-failure', kw['restart_policy'])
        self.assertEqual({'network': 'neutron', 'nics': []},
                         kw['network'])
        self.rt.start_pod.assert_called_once_with(mock.ANY, wait=True)
        self.assertEqual(C1.replace('-', ''), self.c1.container_id)
        self.assertEqual(C2.replace('-', ''), self.c2.container_id)
        self.assertEqual(INIT.replace('-', ''), self.init.container_id)
        self.assertEqual('Running', self.c1.status)
        self.assertEqual('Stopped', self.init.status)
        self.assertEqual({'net': [{'addr': '10.0.0.5'}]},
                         self.capsule.addresses)
        self.release.assert_not_called()

    def test_a_failing_init_container_fails_the_capsule_with_why(self):
        self.members[0] = _record(INIT.replace('-', ''), 'exited', 3)
        self.members[1] = _record(C1.replace('-', ''), 'created')
        self.members[2] = _record(C2.replace('-', ''), 'created')
        self._pod_now(podspec.FAILED)
        out = self.driver.create_capsule('ctx', self.capsule, {}, [{}], {})
        self.assertEqual('Error', out.status)
        self.assertEqual('init container %s exited with 3' %
                         self.init.name, out.status_reason)
        # Kept: its logs stay readable, capsule delete removes it.
        self.rt.remove_pod.assert_not_called()

    def test_a_failed_start_leaves_nothing(self):
        self.rt.start_pod.side_effect = exception.ShimError(
            reason='VM died')
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.ZunException, self.driver.create_capsule,
                          'ctx', self.capsule, {}, [{}], {})
        self.rt.remove_pod.assert_called_once_with(
            CAPSULE.replace('-', ''), force=True)
        self.release.assert_called_once()

    def test_a_bad_image_makes_nothing(self):
        self.pull.side_effect = exception.ImageNotFound(image='nope')
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.ZunException, self.driver.create_capsule,
                          'ctx', self.capsule, {}, [{}], {})
        self.setup_net.assert_not_called()
        self.rt.create_pod.assert_not_called()

    def test_a_refused_pod_releases_its_ports(self):
        self.rt.create_pod.side_effect = exception.InvalidInput(
            reason='too big')
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.Invalid, self.driver.create_capsule,
                          'ctx', self.capsule, {}, [{}], {})
        self.release.assert_called_once_with(
            'ctx', self.capsule, {'net': [{'addr': '10.0.0.5'}]})
        self.rt.remove_pod.assert_not_called()

    def test_delete_removes_the_pod_and_the_ports(self):
        self.capsule.container_id = 'p' * 32
        self.capsule.addresses = {'n': []}
        self.rt.remove_pod.side_effect = exception.NotFound(what='pod')
        self.driver.delete_capsule('ctx', self.capsule, False)
        self.rt.remove_pod.assert_called_once_with('p' * 32, force=True)
        self.release.assert_called_once_with('ctx', self.capsule,
                                             {'n': []})

    def test_sync_follows_the_pod_and_says_when_it_is_gone(self):
        self.capsule.container_id = 'p' * 32
        self.capsule.status = 'Running'
        self.capsule.task_state = None
        self.members[2] = _record(C2.replace('-', ''), 'exited', 1)
        self.c2.container_id = C2.replace('-', '')
        self._pod_now(podspec.RUNNING)
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('Stopped', self.c2.status)
        self.assertEqual('Running', self.capsule.status)
        self.c2.save.assert_called_with('ctx')
        self.rt.get_pod.side_effect = exception.NotFound(what='pod')
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('Error', self.capsule.status)
        self.assertIn('gone', self.capsule.status_reason)
        # Never raises: the sync of the others goes on.
        self.rt.get_pod.side_effect = RuntimeError('boom')
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)

    def test_a_create_cut_short_by_a_restart(self):
        import datetime
        self.capsule.task_state = 'container_creating'
        self.capsule.status = 'Creating'
        self.capsule.container_id = None
        # Begun by this process: left alone.
        self.capsule.updated_at = datetime.datetime.utcnow()
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('Creating', self.capsule.status)
        self.rt.get_pod.assert_not_called()
        # Begun before this process started, and its pod was made: the
        # VM went on, the capsule follows it.
        self.capsule.updated_at = (self.mod._STARTED -
                                   datetime.timedelta(seconds=1)).replace(
            tzinfo=datetime.timezone.utc)
        self.c1.container_id = None
        self._pod_now(podspec.RUNNING)
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.rt.get_pod.assert_called_with(CAPSULE.replace('-', ''))
        self.assertEqual('Running', self.capsule.status)
        self.assertIsNone(self.capsule.task_state)
        self.assertEqual(CAPSULE.replace('-', ''), self.capsule.container_id)
        self.assertEqual(C1.replace('-', ''), self.c1.container_id)
        # No pod: an Error that says why.
        self.capsule.task_state = 'container_creating'
        self.rt.get_pod.side_effect = exception.NotFound(what='pod')
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('Error', self.capsule.status)
        self.assertIsNone(self.capsule.task_state)
        self.assertIn('zun-compute restarted', self.capsule.status_reason)
        self.capsule.save.assert_called_with('ctx')

    def test_an_abandoned_start_is_an_error(self):
        self.capsule.task_state = None
        self.capsule.container_id = 'p' * 32
        pod = self._pod_now(podspec.PENDING, error='the start was abandoned')
        pod.shim_alive = False
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('Error', self.capsule.status)
        self.assertEqual('the start was abandoned',
                         self.capsule.status_reason)

    def test_a_capsule_without_a_pod_keeps_its_reason(self):
        self.capsule.task_state = None
        self.capsule.container_id = None
        self.capsule.status_reason = 'image not found'
        self.mod.sync_capsule(self.rt, 'ctx', self.capsule)
        self.assertEqual('image not found', self.capsule.status_reason)


class ContainerDriverCapsuleTest(base.BaseTestCase):
    """What the container driver does for capsules."""

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        import zun.conf
        self.zconf = self.useFixture(config_fixture.Config(zun.conf.CONF))
        from kata_zun import driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value

    def test_the_capsule_sync_touches_only_capsules(self):
        from zun import objects
        capsule = objects.Capsule(mock.Mock())
        capsule.host = conf.CONF.host
        capsule.task_state = None
        capsule.container_id = 'p' * 32
        with mock.patch('kata_zun.driver.capsule.sync_capsule') as sync, \
                mock.patch.object(self.driver, 'list') as listing:
            self.driver.update_containers_states('ctx', [capsule], None)
        sync.assert_called_once_with(self.rt, 'ctx', capsule)
        listing.assert_not_called()

    def test_the_sandbox_image_is_not_pulled(self):
        self.zconf.config(sandbox_image='kubernetes/pause:3.1',
                          sandbox_image_driver='docker')
        with mock.patch.object(self.driver, '_image_work') as work:
            image, loaded = self.driver.pull_image(
                'ctx', 'kubernetes/pause', '3.1', 'ifnotpresent', 'docker')
            self.assertTrue(loaded)
            from kata_zun.driver import images
            self.assertTrue(image[images.SANDBOX_MARK])
            work.assert_not_called()
            # Any other image is pulled.
            work.return_value = types.SimpleNamespace(id='x', repo_tags=[])
            image, _l = self.driver.pull_image(
                mock.Mock(project_id=None), 'kubernetes/pause', '3.2',
                'ifnotpresent', 'docker')
            self.assertNotIn(images.SANDBOX_MARK, image)
            work.assert_called_once()


class ZunErrorTest(base.BaseTestCase):

    def test_a_percent_in_our_reason_reaches_zun_as_it_is(self):
        from kata_zun.driver import common
        from zun.common import exception as zun_exc

        @common.wrap
        def fails(self):
            raise exception.ShimError(reason='QEMU got 1.9 % of a CPU')
        exc = self.assertRaises(zun_exc.ZunException, fails, None)
        self.assertIn('1.9 \uff05 of a CPU', str(exc))
        self.assertEqual('50 \uff05(x)s \uff05', str(common.zun_error(
            zun_exc.Invalid, '50 %(x)s %')))
