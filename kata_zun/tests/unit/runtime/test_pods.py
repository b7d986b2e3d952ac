"""Pod records: what a killed create or run --pod leaves is swept, a
pod's containers are found through it, members are refused alone.
"""

import os

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.runtime import manager
from kata_zun.runtime import podspec

POD = 'a' * 64


class PodRecordsTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        cfg.config(state_path=os.path.join(root, 'state'),
                   run_path=os.path.join(root, 'run'), group='kata')
        self.rt = manager.Runtime()

    def member(self, cid, pod_id=POD, name='c1', init=False):
        directory = os.path.join(self.rt.containers_dir, cid)
        os.makedirs(directory)
        fileutils.write_json(os.path.join(directory, 'state.json'),
                             {'status': 'created'})
        fileutils.write_json(os.path.join(directory, 'config.json'), {
            'id': cid, 'name': 'p-' + name, 'created': 1.0,
            'image': {'id': 'i', 'name': 'busybox'},
            'agent_spec': {'argv': ['true']}, 'vm': {},
            'pod': {'id': pod_id, 'name': 'p', 'init': init},
            'pod_member': name})
        return directory

    def pod(self, members, init=(), pod_id=POD, complete=True):
        directory = os.path.join(self.rt.pods_dir, pod_id)
        os.makedirs(directory)
        fileutils.write_json(os.path.join(directory, 'state.json'),
                             {'status': 'created'})
        if complete:
            fileutils.write_json(os.path.join(directory, 'config.json'), {
                'id': pod_id, 'name': 'p', 'created': 1.0,
                'sandbox': {'hostname': 'p'}, 'vm': {'vcpus': 1,
                                                     'memory_mb': 256},
                'restart_policy': {'name': 'always'}, 'network': None,
                'volumes': [], 'init_containers': list(init),
                'containers': list(members)})
        return directory

    def test_a_pod_and_its_containers(self):
        self.member('1' * 64, name='i1', init=True)
        self.member('2' * 64, name='c1')
        self.pod(['2' * 64], init=['1' * 64])
        pod = self.rt.get_pod('p')
        self.assertEqual(POD, self.rt.get_pod('aaaa').id)
        self.assertEqual(podspec.PENDING, pod.status)
        info = pod.to_dict()
        self.assertEqual(['i1'], [c['Name'] for c in info['InitContainers']])
        self.assertEqual(['c1'], [c['Name'] for c in info['Containers']])
        self.assertEqual(2, len(self.rt.list()))
        # One of its containers is not started, stopped or removed alone.
        for action in (self.rt.start, self.rt.stop, self.rt.remove):
            exc = self.assertRaises(exception.Conflict, action, 'p-c1')
            self.assertIn('belongs to pod p', str(exc))
        self.assertRaises(exception.NotFound, self.rt.get_pod, 'nope')

    def test_incomplete_pod_is_hidden_then_swept(self):
        self.member('1' * 64)
        pod_dir = self.pod(['1' * 64], complete=False)
        self.assertEqual([], self.rt.list())
        self.assertEqual([], self.rt.list_pods())
        lock = self.rt._lock()
        try:
            self.rt._sweep_incomplete()
        finally:
            os.close(lock)
        self.assertFalse(os.path.exists(pod_dir))
        self.assertEqual([], [d for d in os.listdir(self.rt.containers_dir)
                              if not d.startswith('.')])

    def test_member_the_pod_does_not_name_is_swept(self):
        self.member('1' * 64)
        stray = self.member('2' * 64, name='c2')
        self.pod(['1' * 64])
        lock = self.rt._lock()
        try:
            self.rt._sweep_incomplete()
        finally:
            os.close(lock)
        self.assertFalse(os.path.exists(stray))
        self.assertEqual(['1' * 64], [c.id for c in self.rt.list()])

    def test_missing_member_record_is_shown_not_hidden(self):
        self.member('1' * 64)
        self.pod(['1' * 64, '3' * 64])
        pod = self.rt.get_pod('p')
        self.assertEqual(podspec.UNKNOWN, pod.status)
        self.assertIn('missing', pod.containers[1].error)

    def test_removal_marked_is_resumed(self):
        self.member('1' * 64)
        pod_dir = self.pod(['1' * 64])
        fileutils.write_atomic(os.path.join(pod_dir, 'removing'), '1\n',
                               0o600)
        self.assertEqual(['p'], self.rt.resume_removals())
        self.assertEqual([], self.rt.list_pods())
        self.assertEqual([], self.rt.list())
