"""keystoneauth1's rate semaphore across a backward step of the wall
clock (issue 14, infrastructure faults: found by
``test_zun_infra_faults.test_clock_steps``, where zun-compute's placement
client would sleep until the clock caught up).
"""

import importlib
import time
from unittest import mock

from keystoneauth1 import _fair_semaphore
from oslotest import base

from kata_zun.driver import steadyclock

HOUR = 3600.0


class _Clocks(object):
    """A wall clock the test steps and a monotonic clock that only runs
    forward; sleeps are recorded, not slept.
    """

    def __init__(self):
        self.wall = 1_000_000.0
        self.mono = 500.0
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds):
        self.wall += seconds


class SteadyClockTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        # A fresh module: install() changes module state.
        self.fs = importlib.reload(_fair_semaphore)
        self.addCleanup(importlib.reload, _fair_semaphore)
        self.clocks = _Clocks()
        for name, value in (('time', lambda: self.clocks.wall),
                            ('monotonic', lambda: self.clocks.mono),
                            ('sleep', self.clocks.sleep)):
            p = mock.patch.object(time, name, value)
            p.start()
            self.addCleanup(p.stop)

    def _request(self, sem):
        with sem:
            pass

    def test_upstream_semaphore_sleeps_out_a_backward_step(self):
        # The defect, as keystoneauth1 5.x has it: an adapter's semaphore
        # (no rate limit) made before a step back of an hour sleeps an
        # hour before its next request.
        sem = self.fs.FairSemaphore(None, 0.0)
        self._request(sem)
        self.assertEqual([], self.clocks.slept)
        self.clocks.step(-HOUR)
        self._request(sem)
        self.assertEqual(1, len(self.clocks.slept))
        self.assertAlmostEqual(HOUR, self.clocks.slept[0], delta=1)

    def test_installed_semaphore_rides_through_steps(self):
        # Made before install, as zun-compute's placement client may be.
        early = self.fs.FairSemaphore(None, 0.0)
        self.assertTrue(steadyclock.install())
        self.assertIsInstance(self.fs.time, steadyclock.SteadyTime)
        late = self.fs.FairSemaphore(None, 0.0)
        for step in (-HOUR, HOUR, -2 * HOUR):
            self.clocks.step(step)
            self._request(early)
            self._request(late)
        self.assertEqual([], self.clocks.slept)

    def test_rate_limit_still_paces(self):
        steadyclock.install()
        sem = self.fs.FairSemaphore(None, 0.5)   # 2 requests a second
        self.clocks.step(-HOUR)
        for _ in range(3):
            self._request(sem)
        # Each waits its 0.5 s turn after the previous one, not an hour.
        self.assertEqual(3, len(self.clocks.slept))
        for s in self.clocks.slept:
            self.assertAlmostEqual(0.5, s, delta=0.01)

    def test_install_is_idempotent(self):
        self.assertTrue(steadyclock.install())
        installed = self.fs.time
        self.assertTrue(steadyclock.install())
        self.assertIs(installed, self.fs.time)

    def test_install_leaves_an_unknown_module_alone(self):
        # A keystoneauth1 that no longer reads the time module: nothing
        # is replaced behind its back.
        other = object()
        self.fs.time = other
        self.assertFalse(steadyclock.install())
        self.assertIs(other, self.fs.time)

    def test_steady_time_follows_the_monotonic_clock(self):
        st = steadyclock.SteadyTime()
        self.assertEqual(self.clocks.wall, st.time())
        self.clocks.step(-HOUR)
        self.clocks.mono += 2.0
        self.assertEqual(self.clocks.wall + HOUR + 2.0, st.time())
        # Everything else is the time module's, looked up at call time.
        st.sleep(0.25)
        self.assertEqual(0.25, self.clocks.slept[-1])
