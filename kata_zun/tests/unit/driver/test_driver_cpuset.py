"""cpu_policy=dedicated: what zun-compute's claim leaves on a container
(``container.cpuset``, zun's object) reaches the runtime as CPUs and
NUMA nodes to pin the VM to.
"""

import types
from unittest import mock

from oslotest import base
from zun import objects

from kata_zun import exception

UUID = '6f1c7a56-6a8e-4b5e-9f5e-0d1b2c3d4e5f'


class DriverCpusetTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        from kata_zun import driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        self.rt = rt.return_value
        self.rt.create.return_value = mock.Mock(id=UUID.replace('-', ''))

    def _create(self, policy, claim):
        container = types.SimpleNamespace(
            uuid=UUID, privileged=False, entrypoint=None,
            command=['sleep', '1'], workdir=None, memory=None, cpu=2.0,
            hostname=None, auto_remove=False, labels={}, tty=False,
            interactive=False, healthcheck=None, disk=None,
            cpu_policy=policy, cpuset=claim)
        self.driver._rt_create(container, mock.Mock(id='i'), [], None,
                               None, None)
        kwargs = self.rt.create.call_args[1]
        return kwargs['cpuset_cpus'], kwargs['cpuset_mems']

    def test_dedicated_claim_is_passed_on(self):
        claim = objects.container.Cpuset(cpuset_cpus={3, 1},
                                         cpuset_mems={1})
        self.assertEqual(([1, 3], [1]), self._create('dedicated', claim))

    def test_claim_without_nodes(self):
        claim = objects.container.Cpuset(cpuset_cpus={0},
                                         cpuset_mems=None)
        self.assertEqual(([0], None), self._create('dedicated', claim))

    def test_shared_is_not_pinned(self):
        self.assertEqual((None, None), self._create('shared', None))
        self.assertEqual((None, None), self._create(None, None))

    def test_dedicated_without_claim_is_refused(self):
        for claim in (None, objects.container.Cpuset(cpuset_cpus=None,
                                                     cpuset_mems=None)):
            self.assertRaises(exception.InvalidInput, self._create,
                              'dedicated', claim)
        self.rt.create.assert_not_called()
