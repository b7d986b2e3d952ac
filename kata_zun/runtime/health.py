"""Container health checks, Docker's semantics.

A health check is a command run in the container every ``interval``
seconds (the shim runs it through the agent, so checks go on while
zun-compute or the CLI are away).  A probe that exits 0 within
``timeout`` passes; any other exit, or a timeout, fails.  The container
is ``starting`` until the first pass, ``healthy`` after a pass and
``unhealthy`` after ``retries`` failures in a row; failures within
``start_period`` of a start do not count.  The last few results are kept
with their (bounded) output, as ``docker inspect`` shows them.

This module holds the pure parts: :func:`normalize` checks a user's or
an image's definition, :class:`Tracker` is the state machine.
"""

from kata_zun import exception

STARTING = 'starting'
HEALTHY = 'healthy'
UNHEALTHY = 'unhealthy'

# Docker's defaults (seconds), used for unset or zero values.
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MIN_INTERVAL = 0.5
MAX_SECONDS = 24 * 3600.0
MAX_RETRIES = 1000
MAX_TEST_BYTES = 4096
#: Results kept, and output kept per result (as Docker: 5 and 4 KiB).
LOG_ENTRIES = 5
OUTPUT_BYTES = 4096


def _bad(reason):
    return exception.InvalidInput(reason='healthcheck: %s' % reason)


def _seconds(value, name, default):
    if value in (None, 0, '0', ''):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _bad('%s must be a number of seconds, not %r' % (name, value))
    if not MIN_INTERVAL <= seconds <= MAX_SECONDS:
        raise _bad('%s must be between %s and %d seconds' % (
            name, MIN_INTERVAL, MAX_SECONDS))
    return seconds


def test_argv(test):
    """The argv of a health check test.

    :param test: a string (a shell command, like Zun and ``docker run
        --health-cmd`` give it) or Docker's list form: ``["CMD", argv...]``,
        ``["CMD-SHELL", command]`` or ``["NONE"]``.
    :returns: the argv list, or None for ``NONE`` (no check).
    :raises: InvalidInput
    """
    if isinstance(test, str):
        if not test.strip():
            raise _bad('empty test command')
        if len(test.encode('utf-8')) > MAX_TEST_BYTES:
            raise _bad('test command longer than %d bytes' % MAX_TEST_BYTES)
        return ['/bin/sh', '-c', test]
    if (not isinstance(test, (list, tuple)) or not test or
            not all(isinstance(a, str) for a in test)):
        raise _bad('test must be a string or a list of strings')
    if sum(len(a.encode('utf-8')) for a in test) > MAX_TEST_BYTES:
        raise _bad('test command longer than %d bytes' % MAX_TEST_BYTES)
    kind, args = test[0], list(test[1:])
    if kind == 'NONE':
        return None
    if kind == 'CMD' and args:
        return args
    if kind == 'CMD-SHELL' and len(args) == 1 and args[0].strip():
        return ['/bin/sh', '-c', args[0]]
    raise _bad('test must start with CMD (and an argv), CMD-SHELL (and '
               'one command) or NONE: %r' % (test,))


def normalize(test, interval=None, timeout=None, retries=None,
              start_period=None):
    """A checked health check definition.

    :param test: see :func:`test_argv`.
    :param interval: seconds between probes (0/None: 30).
    :param timeout: seconds a probe may take (0/None: 30).
    :param retries: failures in a row that make the container unhealthy
        (0/None: 3).
    :param start_period: seconds after a start when failures do not
        count (None: 0).
    :returns: ``{'argv', 'interval', 'timeout', 'retries',
        'start_period'}``, or None when the test is ``NONE``.
    :raises: InvalidInput
    """
    argv = test_argv(test)
    if argv is None:
        return None
    if retries in (None, 0, ''):
        retries = DEFAULT_RETRIES
    try:
        retries = int(retries)
    except (TypeError, ValueError):
        raise _bad('retries must be an integer, not %r' % (retries,))
    if not 1 <= retries <= MAX_RETRIES:
        raise _bad('retries must be between 1 and %d' % MAX_RETRIES)
    return {'argv': argv,
            'interval': _seconds(interval, 'interval', DEFAULT_INTERVAL),
            'timeout': _seconds(timeout, 'timeout', DEFAULT_TIMEOUT),
            'retries': retries,
            'start_period': (0.0 if start_period in (None, 0, '0', '')
                             else _seconds(start_period, 'start_period',
                                           0.0))}


def from_image_config(config):
    """The health check of an image's config (``Healthcheck``, durations
    in nanoseconds), or None.

    An image's definition is untrusted input like any other: a bad one
    is refused with the reason.

    :raises: InvalidInput
    """
    hc = (config or {}).get('Healthcheck')
    if not hc:
        return None
    if not isinstance(hc, dict) or not hc.get('Test'):
        raise _bad('the image has a malformed Healthcheck')

    def seconds(key):
        value = hc.get(key)
        if value in (None, 0):
            return None
        if not isinstance(value, int) or value < 0:
            raise _bad('the image has a malformed Healthcheck %s' % key)
        return value / 1e9

    return normalize(hc['Test'], seconds('Interval'), seconds('Timeout'),
                     hc.get('Retries') or None, seconds('StartPeriod'))


class Tracker(object):
    """The health state of one container, fed with probe results.

    ``state()`` is what the shim stores: ``status``, ``failing_streak``
    and ``log`` (the last :data:`LOG_ENTRIES` results).
    """

    def __init__(self, definition, state=None):
        self.definition = definition
        state = state or {}
        self.status = STARTING
        self.failing_streak = 0
        self.log = list(state.get('log') or [])[-LOG_ENTRIES:]
        self.started_at = None

    def container_started(self, now):
        """A (re)start: ``starting`` again, a fresh grace period.

        :param now: a monotonic clock reading (``time.monotonic()``): the
            grace period must not stretch or vanish when the host's wall
            clock is stepped.
        """
        self.status = STARTING
        self.failing_streak = 0
        self.started_at = now

    def record(self, start, end, exit_code, output, clock=None):
        """Account one probe.

        :param start: wall-clock time the probe started (shown in the log).
        :param end: wall-clock time it ended (shown in the log).
        :param exit_code: the probe's exit status; None when it timed out
            or could not run (a failure).
        :param output: its output (bytes or text), truncated here.
        :param clock: the monotonic reading when the probe started, on the
            clock given to :meth:`container_started`; None: ``start``.
        :returns: True when the status changed.
        """
        if isinstance(output, bytes):
            output = output[:OUTPUT_BYTES].decode('utf-8', 'replace')
        self.log = (self.log + [{'start': start, 'end': end,
                                 'exit_code': exit_code,
                                 'output': output[:OUTPUT_BYTES]}]
                    )[-LOG_ENTRIES:]
        before = self.status
        if exit_code == 0:
            self.status, self.failing_streak = HEALTHY, 0
        elif (self.started_at is not None and self.status == STARTING and
              (start if clock is None else clock) - self.started_at <
              self.definition['start_period']):
            pass    # still in its grace period
        else:
            self.failing_streak += 1
            if self.failing_streak >= self.definition['retries']:
                self.status = UNHEALTHY
        return self.status != before

    def state(self):
        return {'status': self.status,
                'failing_streak': self.failing_streak, 'log': self.log}
