"""Health check definitions and the health state machine."""

from oslotest import base

from kata_zun import exception
from kata_zun.runtime import health


class DefinitionTestCase(base.BaseTestCase):

    def test_test_forms(self):
        self.assertEqual(['/bin/sh', '-c', 'curl -f x'],
                         health.test_argv('curl -f x'))
        self.assertEqual(['/bin/true', '-v'],
                         health.test_argv(['CMD', '/bin/true', '-v']))
        self.assertEqual(['/bin/sh', '-c', 'a && b'],
                         health.test_argv(['CMD-SHELL', 'a && b']))
        self.assertIsNone(health.test_argv(['NONE']))
        for bad in ('', '  ', [], ['CMD'], ['CMD-SHELL', 'a', 'b'],
                    ['RUN', 'x'], ['CMD', 1], 42, 'x' * 5000):
            self.assertRaises(exception.InvalidInput, health.test_argv, bad)

    def test_defaults_and_limits(self):
        d = health.normalize('true')
        self.assertEqual({'argv': ['/bin/sh', '-c', 'true'],
                          'interval': 30.0, 'timeout': 30.0, 'retries': 3,
                          'start_period': 0.0}, d)
        # Zun sends 0 for what the user left out, like Docker's API.
        self.assertEqual(d, health.normalize('true', 0, 0, 0, None))
        d = health.normalize('true', interval=2, timeout='1.5', retries=5,
                             start_period=10)
        self.assertEqual((2.0, 1.5, 5, 10.0), (
            d['interval'], d['timeout'], d['retries'], d['start_period']))
        self.assertIsNone(health.normalize(['NONE'], interval=5))
        for kwargs in ({'interval': 0.1}, {'interval': 'soon'},
                       {'timeout': 10 ** 9}, {'retries': -1},
                       {'retries': 'many'}, {'start_period': -5}):
            self.assertRaises(exception.InvalidInput, health.normalize,
                              'true', **kwargs)

    def test_image_config(self):
        self.assertIsNone(health.from_image_config({}))
        self.assertIsNone(health.from_image_config(None))
        d = health.from_image_config({'Healthcheck': {
            'Test': ['CMD-SHELL', 'wget -q localhost'],
            'Interval': 5 * 10 ** 9, 'Timeout': 2 * 10 ** 9, 'Retries': 4,
            'StartPeriod': 10 ** 10}})
        self.assertEqual({'argv': ['/bin/sh', '-c', 'wget -q localhost'],
                          'interval': 5.0, 'timeout': 2.0, 'retries': 4,
                          'start_period': 10.0}, d)
        self.assertIsNone(health.from_image_config(
            {'Healthcheck': {'Test': ['NONE']}}))
        for bad in ('yes', {'Test': []}, {'Test': ['CMD', 'x'],
                                          'Interval': 'often'},
                    {'Test': ['CMD', 'x'], 'Timeout': -1}):
            self.assertRaises(exception.InvalidInput,
                              health.from_image_config, {'Healthcheck': bad})


class TrackerTestCase(base.BaseTestCase):

    def tracker(self, **kwargs):
        t = health.Tracker(health.normalize('true', **kwargs))
        t.container_started(1000.0)
        return t

    def test_healthy_then_unhealthy_after_retries(self):
        t = self.tracker(retries=2)
        self.assertEqual('starting', t.status)
        self.assertTrue(t.record(1001, 1001.1, 0, b'ok'))
        self.assertEqual('healthy', t.status)
        self.assertFalse(t.record(1002, 1002.1, 1, b'down'))
        self.assertEqual(('healthy', 1), (t.status, t.failing_streak))
        self.assertTrue(t.record(1003, 1003.1, None, b'timed out'))
        self.assertEqual(('unhealthy', 2), (t.status, t.failing_streak))
        self.assertTrue(t.record(1004, 1004.1, 0, b''))
        self.assertEqual(('healthy', 0), (t.status, t.failing_streak))

    def test_start_period(self):
        t = self.tracker(retries=1, start_period=10)
        self.assertFalse(t.record(1005, 1005.1, 1, b'not yet'))
        self.assertEqual(('starting', 0), (t.status, t.failing_streak))
        self.assertTrue(t.record(1011, 1011.1, 1, b'still not'))
        self.assertEqual('unhealthy', t.status)
        # A restart gives a new grace period.
        t.container_started(2000.0)
        self.assertEqual(('starting', 0), (t.status, t.failing_streak))
        self.assertFalse(t.record(2001, 2001.1, 1, b''))

    def test_start_period_ignores_wall_clock_steps(self):
        # Regression: the grace period was measured on the wall clock, so
        # a host clock stepped back 1 h stretched it by an hour and one
        # stepped forward ended it at once. The monotonic reading decides.
        t = self.tracker(retries=1, start_period=10)
        # Wall clock stepped +1 h, 5 s (monotonic) after the start.
        self.assertFalse(t.record(4605, 4605.1, 1, b'', clock=1005.0))
        self.assertEqual(('starting', 0), (t.status, t.failing_streak))
        # Wall clock stepped -1 h, 11 s (monotonic) after the start.
        self.assertTrue(t.record(-2589, -2588.9, 1, b'', clock=1011.0))
        self.assertEqual('unhealthy', t.status)
        # The log keeps the wall-clock times, as Docker shows them.
        self.assertEqual(-2589, t.state()['log'][-1]['start'])

    def test_log_is_bounded(self):
        t = self.tracker()
        for i in range(health.LOG_ENTRIES + 3):
            t.record(1000 + i, 1000 + i, i % 2, b'\xff' + b'x' * 10000)
        state = t.state()
        self.assertEqual(health.LOG_ENTRIES, len(state['log']))
        self.assertEqual(1000 + 3, state['log'][0]['start'])
        for entry in state['log']:
            self.assertLessEqual(len(entry['output']), health.OUTPUT_BYTES)
            self.assertTrue(entry['output'].startswith('\ufffd'))
