from oslotest import base

from kata_zun.console import sessions


class Clock(object):
    now = 1000.0

    def __call__(self):
        return self.now


class RegistryTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.clock = Clock()
        self.reg = sessions.Registry(60, max_records=4, clock=self.clock)

    def test_exec_is_single_use(self):
        exec_id = self.reg.add_exec('c' * 32, ['sh'])
        self.assertTrue(sessions.is_secret(exec_id))
        record = self.reg.start_exec(exec_id)
        self.assertEqual(['sh'], record.argv)
        self.assertRaises(sessions.Conflict, self.reg.start_exec, exec_id)
        self.assertRaises(sessions.NotFound, self.reg.start_exec, 'a' * 64)
        self.assertRaises(sessions.NotFound, self.reg.start_exec, 'nope')
        self.assertRaises(sessions.NotFound, self.reg.start_exec, None)

    def test_exec_expires_unless_running(self):
        idle = self.reg.add_exec('c' * 32, ['sh'])
        busy = self.reg.add_exec('c' * 32, ['sh'])
        record = self.reg.start_exec(busy)
        self.clock.now += 61
        self.assertRaises(sessions.NotFound, self.reg.start_exec, idle)
        self.assertIs(record, self.reg.get_exec(busy))
        self.reg.exec_finished(record, 3)
        self.assertEqual(3, self.reg.get_exec(busy).inspect()['ExitCode'])
        self.clock.now += 61
        self.assertRaises(sessions.NotFound, self.reg.get_exec, busy)

    def test_bounded(self):
        for _ in range(4):
            self.reg.add_exec('c' * 32, ['sh'])
        self.assertRaises(sessions.Busy, self.reg.add_exec, 'c' * 32,
                          ['sh'])
        self.assertRaises(sessions.Busy, self.reg.add_attach, 'c' * 32)
        self.clock.now += 61          # expired ones make room
        self.reg.add_attach('c' * 32)

    def test_resize_before_and_after_start(self):
        exec_id = self.reg.add_exec('c' * 32, ['sh'])
        self.assertIsNone(self.reg.resize_exec(exec_id, 30, 100))
        record = self.reg.start_exec(exec_id)
        self.assertEqual((30, 100), self.reg.exec_started(record, 7))
        self.assertEqual(('c' * 32, 7),
                         self.reg.resize_exec(exec_id, 40, 120))
        self.reg.exec_finished(record, 0)
        self.assertIsNone(self.reg.resize_exec(exec_id, 1, 1))
        self.assertRaises(sessions.NotFound, self.reg.resize_exec,
                          'b' * 64, 1, 1)

    def test_attach_token(self):
        token = self.reg.add_attach('c' * 32, project='p1')
        take = self.reg.take_attach
        self.assertRaises(sessions.NotFound, take, 'd' * 32, token)
        self.assertRaises(sessions.NotFound, take, 'c' * 32, 'x' * 64)
        self.assertRaises(sessions.NotFound, take, 'c' * 32, None)
        self.assertEqual('p1', take('c' * 32, token))
        self.assertRaises(sessions.NotFound, take, 'c' * 32, token)
        token = self.reg.add_attach('c' * 32)
        self.clock.now += 61
        self.assertRaises(sessions.NotFound, take, 'c' * 32, token)
        self.assertEqual(0, len(self.reg))

    def test_pending_secrets_capped_per_project(self):
        reg = sessions.Registry(60, max_records=10, clock=self.clock,
                                max_per_project=3)
        for _ in range(2):
            reg.add_exec('c' * 32, ['sh'], project='a')
        reg.add_attach('c' * 32, project='a')
        # Project a is at its cap: refused, whatever it asks for ...
        self.assertRaises(sessions.Busy, reg.add_exec, 'c' * 32, ['sh'],
                          project='a')
        exc = self.assertRaises(sessions.Busy, reg.add_attach, 'c' * 32,
                                project='a')
        self.assertIn('project a', str(exc))
        # ... and project b still gets in.
        reg.add_exec('d' * 32, ['sh'], project='b')
        reg.add_attach('d' * 32, project='b')
        self.assertEqual(5, len(reg))


class ProjectSlotsTest(base.BaseTestCase):

    def test_cap_per_project(self):
        slots = sessions.ProjectSlots(2)
        slots.acquire('a')
        slots.acquire('a')
        exc = self.assertRaises(sessions.Busy, slots.acquire, 'a')
        self.assertIn('project a has 2 console sessions open', str(exc))
        slots.acquire('b')
        slots.acquire(None)
        self.assertEqual(2, slots.held('a'))
        slots.release('a')
        slots.acquire('a')
        for project in ('a', 'a', 'b', None):
            slots.release(project)
        self.assertEqual(0, slots.held('a'))
        self.assertEqual({}, slots._open)
