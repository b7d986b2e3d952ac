"""zun-compute's OpenStack clients across a step of the host's clock.

keystoneauth1 (5.x) paces the requests of each ``Adapter`` with a
``FairSemaphore`` that reads the *wall* clock: it remembers when it was
made and, before each request, sleeps until the wall clock has passed
that time plus the configured rate delay (none by default). When the
host's clock steps back by S seconds (an NTP step, a wrong RTC put
right), every adapter made before the step sleeps up to S seconds before
each request, with nothing logged. In zun-compute that is the placement
client: its periodic resource update, and with it every container claim
waiting on the resource tracker's lock, stalls until the clock catches
up (an hour for a one-hour step; seen in
``test_zun_infra_faults.test_clock_steps``).

:func:`install`, called when zun-compute loads the driver, gives that
module a clock that does not step: the monotonic clock, moved to where
the wall clock was at install time, so that a semaphore made earlier
keeps comparing like with like. Only intervals matter to a rate limit,
so the pacing itself is unchanged. The services that validate tokens
through keystonemiddleware (zun-api, placement...) are not kata-zun's
processes and keep the upstream behaviour: after a backward step they
must be restarted (see the admin guide).
"""

import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class SteadyTime(object):
    """The ``time`` module with a ``time()`` that never steps."""

    def __init__(self):
        self._offset = time.time() - time.monotonic()

    def time(self):
        """:returns: seconds, as ``time.time()`` when this was made plus
            the monotonic time elapsed since.
        """
        return time.monotonic() + self._offset

    def __getattr__(self, name):
        # sleep() and the rest: the time module's, looked up at each call
        # (eventlet's green sleep in zun-compute).
        return getattr(time, name)


def install():
    """Put keystoneauth1's rate semaphore on a clock that does not step.

    Idempotent. Does nothing (and says so) when keystoneauth1 has no such
    semaphore or no longer reads the ``time`` module.

    :returns: True when the semaphore reads a :class:`SteadyTime`.
    """
    try:
        from keystoneauth1 import _fair_semaphore
    except ImportError:
        return False
    current = getattr(_fair_semaphore, 'time', None)
    if isinstance(current, SteadyTime):
        return True
    if current is not time:
        LOG.debug('keystoneauth1._fair_semaphore does not read the time '
                  'module: nothing to put on the monotonic clock')
        return False
    _fair_semaphore.time = SteadyTime()
    return True
