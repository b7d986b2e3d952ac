"""The pod shim's container lifecycle: init containers in order, a
failing one fails the pod, the restart policy per container, the end of
the pod.
"""

import os

import fixtures
from oslotest import base

from kata_zun.runtime import fileutils
from kata_zun.shim import pod


class FakePodShim(pod.PodShim):
    """A pod shim without VM: agent calls are recorded and answered."""

    def __init__(self, root, policy, init_names, names):
        self.state_dir = os.path.join(root, 'pod')
        os.makedirs(self.state_dir)
        self.config = {'id': 'p' * 64, 'restart_policy': {'name': policy}}
        self.cid = self.config['id']
        self.state = {}
        self.members = []
        for i, (name, init) in enumerate(
                [(n, True) for n in init_names] +
                [(n, False) for n in names]):
            cid = '%02d' % i * 32
            directory = os.path.join(root, cid)
            os.makedirs(directory)
            fileutils.write_json(os.path.join(directory, 'config.json'), {
                'id': cid, 'pod_member': name,
                'pod': {'id': self.cid, 'init': init}})
            self.members.append(pod.Member(directory))
        self.by_cid = {m.cid: m for m in self.members}
        self.by_handle = {}
        self.init_queue = []
        self.timers, self.waiters, self.pending = [], [], {}
        self.exited = self.manually_stopped = False
        self.logw = self.vm = self.agent = None
        self.calls = []
        self.next_handle = 100

    def _agent_call(self, op, args, callback):
        self.calls.append((op, args))
        if op == 'start':
            self.next_handle += 1
            callback({'proc': self.next_handle, 'pid': 1, 'error': None},
                     None)

    def _stop_vm(self):
        self.calls.append(('stop_vm', {}))

    def member(self, name):
        return [m for m in self.members if m.name == name][0]

    def exit(self, name, code):
        m = self.member(name)
        self._member_exited(m, code, False)

    def started(self):
        return [self.by_cid[a['id']].name for op, a in self.calls
                if op == 'start']


class PodShimTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def shim(self, policy='always', init=('i1', 'i2'), names=('a', 'b')):
        return FakePodShim(self.root, policy, init, names)

    def test_init_containers_run_in_order_then_the_others(self):
        s = self.shim()
        s.start_pod()
        self.assertEqual(['i1'], s.started())
        s.exit('i1', 0)
        self.assertEqual(['i1', 'i2'], s.started())
        s.exit('i2', 0)
        self.assertEqual(['i1', 'i2', 'a', 'b'], s.started())
        self.assertEqual('running', s.member('a').state['status'])
        self.assertFalse(s.exited)

    def test_failing_init_container_is_retried_then_fails_the_pod(self):
        s = self.shim(policy='on-failure')
        s.start_pod()
        for n in range(pod.INIT_RETRIES):
            s.exit('i1', 2)
            self.assertFalse(s.exited)
            self.assertEqual(('restarting', n + 1), (
                s.member('i1').state['status'],
                s.member('i1').state['restart_count']))
            s.timers.pop()[1]()
        self.assertEqual(['i1'] * (pod.INIT_RETRIES + 1), s.started())
        s.exit('i1', 2)
        self.assertTrue(s.exited)
        self.assertEqual('init container i1 failed: exit code 2 (Error) '
                         'after %d restarts' % pod.INIT_RETRIES,
                         s.state['error'])
        # One that succeeds on a retry lets the pod go on.
        s = FakePodShim(os.path.join(self.root, 'again'), 'always',
                        ('i1',), ('a',))
        s.start_pod()
        s.exit('i1', 1)
        s.timers.pop()[1]()
        s.exit('i1', 0)
        self.assertEqual(['i1', 'i1', 'a'], s.started())

    def test_failing_init_container_fails_the_pod(self):
        s = self.shim(policy='no')
        s.start_pod()
        s.exit('i1', 2)
        self.assertEqual(['i1'], s.started())
        self.assertTrue(s.exited)
        self.assertEqual('init container i1 failed: exit code 2 (Error)',
                         s.state['error'])
        self.assertEqual(2, s.state['exit_code'])
        self.assertIn(('shutdown', {}), s.calls)
        self.assertEqual('created', s.member('a').state['status'])
        self.assertEqual('not started: init container i1 failed: exit '
                         'code 2 (Error)', s.member('a').state['error'])
        # What the records say on disk.
        on_disk = fileutils.read_json(os.path.join(s.member('i1').dir,
                                                   'state.json'))
        self.assertEqual(('exited', 2), (on_disk['status'],
                                         on_disk['exit_code']))

    def test_always_restarts_each_container(self):
        s = self.shim(init=())
        s.start_pod()
        s.exit('a', 0)
        a = s.member('a')
        self.assertEqual(('restarting', 1),
                         (a.state['status'], a.state['restart_count']))
        deadline, callback = s.timers[-1]
        callback()
        self.assertEqual(['a', 'b', 'a'], s.started())
        self.assertEqual('running', a.state['status'])

    def test_on_failure_and_the_end_of_the_pod(self):
        s = self.shim(policy='on-failure', init=())
        s.start_pod()
        s.exit('a', 0)
        self.assertEqual('exited', s.member('a').state['status'])
        s.exit('b', 1)
        self.assertEqual('restarting', s.member('b').state['status'])
        self.assertFalse(s.exited)
        s.timers.pop()[1]()
        s.exit('b', 0)
        self.assertTrue(s.exited)
        self.assertIn(('shutdown', {}), s.calls)

    def test_no_restart_and_exit_code_of_the_pod(self):
        s = self.shim(policy='no', init=())
        s.start_pod()
        s.exit('a', 3)
        self.assertFalse(s.exited)
        s.exit('b', 0)
        self.assertTrue(s.exited)
        self.assertEqual(3, s.state['exit_code'])

    def test_a_lost_vm_ends_every_running_container(self):
        s = self.shim(init=())
        s.start_pod()
        s._container_exited(255, False, error='the VM stopped')
        for name in ('a', 'b'):
            m = s.member(name)
            self.assertEqual(('exited', 255, 'the VM stopped'), (
                m.state['status'], m.state['exit_code'],
                m.state['error']))

    def test_stop_during_init_is_no_failure(self):
        s = self.shim()
        s.start_pod()
        s.manually_stopped = True
        s.exit('i1', 143)
        self.assertTrue(s.exited)
        self.assertIsNone(s.state.get('error'))
        self.assertEqual(['i1'], s.started())
