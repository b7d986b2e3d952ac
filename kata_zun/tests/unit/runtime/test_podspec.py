"""Capsule templates, pod sizing and pod status rules."""

import copy

from oslotest import base

from kata_zun import exception
from kata_zun.runtime import podspec

TEMPLATE = {
    'kind': 'capsule',
    'capsuleVersion': 'beta',
    'metadata': {'name': 'web', 'labels': {'app': 'web'}},
    'spec': {
        'restartPolicy': 'OnFailure',
        'initContainers': [{
            'name': 'init', 'image': 'busybox',
            'command': ['sh', '-c'], 'args': ['echo hi > /data/f'],
            'volumeMounts': [{'name': 'shared', 'mountPath': '/data'}]}],
        'containers': [{
            'name': 'server', 'image': 'busybox:1.36',
            'command': ['httpd', '-f'],
            'env': {'A': 'b'}, 'workDir': '/srv',
            'resources': {'requests': {'cpu': 0.5, 'memory': 128}},
            'ports': [{'containerPort': 80, 'hostPort': 8080,
                       'protocol': 'TCP'}],
            'volumeMounts': [{'name': 'shared', 'mountPath': '/data',
                              'readOnly': True}]}, {
            'image': 'registry.local:5000/lib/client:v1'}],
        'volumes': [{'name': 'shared', 'cinder': {'size': 1}}],
    },
}


class TemplateTest(base.BaseTestCase):

    def _error(self, mutate):
        data = copy.deepcopy(TEMPLATE)
        mutate(data)
        exc = self.assertRaises(exception.InvalidInput,
                                podspec.from_template, data)
        return str(exc)

    def test_reads_zun_template(self):
        t = podspec.from_template(copy.deepcopy(TEMPLATE))
        self.assertEqual('web', t.name)
        self.assertEqual({'app': 'web'}, t.labels)
        self.assertEqual('on-failure', t.restart_policy)
        self.assertEqual(['init'], [c.name for c in t.init_containers])
        server, client = t.containers
        self.assertEqual(['httpd', '-f'], server.command)
        self.assertIsNone(server.args)
        self.assertEqual(['A=b'], server.env)
        self.assertEqual('/srv', server.workdir)
        self.assertEqual(0.5, server.cpus)
        self.assertEqual(128, server.memory_mb)
        self.assertEqual(['8080:80/tcp'], server.ports)
        self.assertEqual([{'name': 'shared', 'target': '/data',
                           'readonly': True}], server.volume_mounts)
        # Unnamed containers get a name from their image.
        self.assertEqual('client-2', client.name)
        self.assertEqual([{'name': 'shared', 'size_gb': 1,
                           'volume_id': None, 'auto_remove': False}],
                         t.volumes)

    def test_default_restart_policy_is_always(self):
        data = copy.deepcopy(TEMPLATE)
        del data['spec']['restartPolicy']
        self.assertEqual('always', podspec.from_template(data).
                         restart_policy)

    def test_unknown_fields(self):
        self.assertIn("template: unknown field 'spek'", self._error(
            lambda d: d.update(spek={})))
        self.assertIn("spec.containers[0] (server): unknown field "
                      "'imag'", self._error(
                          lambda d: d['spec']['containers'][0].update(
                              imag='x')))
        self.assertIn("unknown field 'limits'", self._error(
            lambda d: d['spec']['containers'][0]['resources'].update(
                limits={})))
        self.assertIn("volumeMounts[0]: unknown field 'path'",
                      self._error(lambda d: d['spec']['initContainers'][0][
                          'volumeMounts'][0].update(path='/x')))

    def test_duplicate_names(self):
        self.assertIn("two containers are named 'server'", self._error(
            lambda d: d['spec']['initContainers'][0].update(
                name='server')))
        self.assertIn("two volumes are named 'shared'", self._error(
            lambda d: d['spec']['volumes'].append(
                {'name': 'shared', 'cinder': {'size': 2}})))

    def test_bad_images_and_values(self):
        self.assertIn("invalid image '../../etc'", self._error(
            lambda d: d['spec']['containers'][0].update(image='../../etc')))
        self.assertIn('the image is needed', self._error(
            lambda d: d['spec']['containers'][0].pop('image')))
        self.assertIn('kind must be capsule', self._error(
            lambda d: d.update(kind='pod')))
        self.assertIn('one container at least', self._error(
            lambda d: d['spec'].update(containers=[])))
        self.assertIn('memory (MiB) must be a whole number', self._error(
            lambda d: d['spec']['containers'][0]['resources']['requests']
            .update(memory='1Gi')))
        self.assertIn('restartPolicy must be', self._error(
            lambda d: d['spec'].update(restartPolicy='Sometimes')))
        self.assertIn('env must map names to strings', self._error(
            lambda d: d['spec']['containers'][0].update(env={'A': 1})))
        self.assertIn('a port is in [1, 65535]', self._error(
            lambda d: d['spec']['containers'][0]['ports'][0].update(
                containerPort=70000)))
        self.assertIn('workDir must be an absolute path', self._error(
            lambda d: d['spec']['containers'][0].update(workDir='srv')))

    def test_volumes(self):
        self.assertIn("mounts the volume 'other' the pod does not have",
                      self._error(lambda d: d['spec']['containers'][0][
                          'volumeMounts'].append(
                              {'name': 'other', 'mountPath': '/o'})))
        self.assertIn('only cinder volumes', self._error(
            lambda d: d['spec']['volumes'][0].pop('cinder')))
        self.assertIn('either cinder.size or cinder.volumeID', self._error(
            lambda d: d['spec']['volumes'][0]['cinder'].update(
                volumeID='0' * 36)))
        self.assertIn('two volumes at /data', self._error(
            lambda d: d['spec']['containers'][0]['volumeMounts'].append(
                {'name': 'shared', 'mountPath': '/data'})))

    def test_init_containers_publish_nothing(self):
        self.assertIn('init container init cannot publish ports',
                      self._error(lambda d: d['spec']['initContainers'][0]
                                  .update(ports=[{'containerPort': 1}])))

    def test_not_a_mapping(self):
        self.assertRaises(exception.InvalidInput, podspec.from_template,
                          'kind: capsule')
        self.assertRaises(exception.InvalidInput, podspec.from_template,
                          None)


class SizeTest(base.BaseTestCase):

    def spec(self, cpus=None, memory_mb=None):
        return podspec.ContainerSpec('c', 'busybox', cpus=cpus,
                                     memory_mb=memory_mb)

    def size(self, containers, init=(), host_cpus=8):
        return podspec.vm_size(containers, init, overhead_mb=96,
                               default_vcpus=1, default_memory_mb=256,
                               host_cpus=host_cpus)

    def test_sum_of_containers_plus_overhead(self):
        self.assertEqual((2, 96 + 128 + 256), self.size(
            [self.spec(0.5, 128), self.spec(1.5, 256)]))

    def test_unset_limits_count_a_default(self):
        self.assertEqual((1, 96 + 200 + podspec.DEFAULT_CONTAINER_MB),
                         self.size([self.spec(memory_mb=200),
                                    self.spec()]))

    def test_at_least_the_default_vm(self):
        self.assertEqual((1, 256), self.size([self.spec(memory_mb=16)]))

    def test_init_containers_run_alone(self):
        # The biggest init container, not the sum, against the regular
        # ones.
        self.assertEqual((3, 96 + 1024), self.size(
            [self.spec(1, 100), self.spec(1, 100)],
            [self.spec(3, 1024), self.spec(2, 512)]))
        self.assertEqual((2, 96 + 600), self.size(
            [self.spec(1, 300), self.spec(1, 300)], [self.spec(1, 64)]))

    def test_capped_at_host_cpus(self):
        self.assertEqual(2, self.size([self.spec(3), self.spec(2)],
                                      host_cpus=2)[0])


class PhaseTest(base.BaseTestCase):

    def test_pending(self):
        self.assertEqual(podspec.PENDING, podspec.phase(
            False, [('created', None)], [('created', None)]))
        # Its init container runs: still pending, as in Kubernetes.
        self.assertEqual(podspec.PENDING, podspec.phase(
            True, [('running', None)], [('created', None)]))

    def test_running(self):
        self.assertEqual(podspec.RUNNING, podspec.phase(
            True, [('exited', 0)], [('running', None), ('exited', 0)]))
        self.assertEqual(podspec.RUNNING, podspec.phase(
            True, [], [('restarting', 1), ('exited', 0)]))

    def test_succeeded_and_failed(self):
        self.assertEqual(podspec.SUCCEEDED, podspec.phase(
            True, [('exited', 0)], [('exited', 0), ('exited', 0)]))
        self.assertEqual(podspec.FAILED, podspec.phase(
            True, [], [('exited', 0), ('exited', 2)]))

    def test_failed_init_container_fails_the_pod(self):
        self.assertEqual(podspec.FAILED, podspec.phase(
            True, [('exited', 0), ('exited', 1)], [('created', None)]))

    def test_stopped(self):
        self.assertEqual(podspec.STOPPED, podspec.phase(
            True, [], [('exited', 137), ('exited', 0)], stopped=True))
        self.assertEqual(podspec.SUCCEEDED, podspec.phase(
            True, [], [('exited', 0)], stopped=True))

    def test_unknown(self):
        self.assertEqual(podspec.UNKNOWN, podspec.phase(
            True, [], [('running', None), ('unknown', None)]))


class CheckContainersTest(base.BaseTestCase):

    def test_too_many(self):
        specs = [podspec.ContainerSpec('c%d' % i, 'busybox')
                 for i in range(podspec.MAX_CONTAINERS + 1)]
        self.assertRaises(exception.InvalidInput,
                          podspec.check_containers, specs, [], set())

    def test_empty_pod_allowed_when_asked(self):
        podspec.check_containers([], [], set(), need_one=False)
        self.assertRaises(exception.InvalidInput,
                          podspec.check_containers, [], [], set())

    def test_bad_limits(self):
        for kwargs in ({'cpus': 0}, {'cpus': True}, {'memory_mb': 5},
                       {'memory_mb': 1.5}):
            self.assertRaises(
                exception.InvalidInput, podspec.check_containers,
                [podspec.ContainerSpec('c1', 'busybox', **kwargs)], [],
                set())


class HostileTemplateTest(base.BaseTestCase):

    def test_yaml_aliases_cannot_blow_up_env_or_labels(self):
        import yaml
        big = 'x' * 100000
        text = ('kind: capsule\nmetadata:\n  name: bomb\n  labels:\n'
                '    l0: &big %s\n' % big +
                ''.join('    l%d: *big\n' % i for i in range(1, 50)) +
                'spec:\n  containers:\n  - image: busybox\n')
        exc = self.assertRaises(exception.InvalidInput,
                                podspec.from_template, yaml.safe_load(text))
        self.assertIn('labels: more than', str(exc))
        text = ('kind: capsule\nmetadata: {name: bomb}\nspec:\n'
                '  containers:\n  - image: busybox\n    env:\n'
                '      E0: &big %s\n' % big +
                ''.join('      E%d: *big\n' % i for i in range(1, 50)))
        exc = self.assertRaises(exception.InvalidInput,
                                podspec.from_template, yaml.safe_load(text))
        self.assertIn('env: more than', str(exc))
        text = ('kind: capsule\nmetadata: {name: bomb}\nspec:\n'
                '  containers:\n  - image: busybox\n    command: [&big %s'
                % big + ', *big' * 49 + ']\n')
        exc = self.assertRaises(exception.InvalidInput,
                                podspec.from_template, yaml.safe_load(text))
        self.assertIn('command and args: more than', str(exc))

    def test_container_ids(self):
        data = copy.deepcopy(TEMPLATE)
        t = podspec.from_template(data)
        t.containers[0].cid = 'A' * 32
        self.assertRaises(exception.InvalidInput, podspec.check_containers,
                          t.containers, t.init_containers, {'shared'})
        t.containers[0].cid = 'a' * 32
        podspec.check_containers(t.containers, t.init_containers,
                                 {'shared'})
