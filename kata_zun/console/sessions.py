"""The secrets that open the console: exec ids and attach tokens.

An interactive exec is registered by the driver (``execute_create``) and
started once, by the first ``POST /exec/<id>/start``; an attach token is
made by ``get_websocket_url`` and used once. Both are 256-bit random hex
strings (``secrets.token_hex``), expire when unused, and are bounded in
number, overall and per project: a flood of API calls cannot grow
zun-compute's memory, nor can one project's flood leave no room for the
others. :class:`ProjectSlots` caps the sessions each project holds open.
"""

import hmac
import secrets
import threading
import time

CREATED = 'created'
RUNNING = 'running'
EXITED = 'exited'

DEFAULT_MAX_RECORDS = 1024
DEFAULT_MAX_PER_PROJECT = 128


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class Busy(Exception):
    pass


def new_secret():
    """:returns: 64 hex digits (256 bits), like a Docker exec id."""
    return secrets.token_hex(32)


def is_secret(text):
    """:returns: True if ``text`` looks like :func:`new_secret` output."""
    return (isinstance(text, str) and len(text) == 64 and
            all(c in '0123456789abcdef' for c in text))


class ExecRecord(object):
    """One interactive exec: what to run, then how it went."""

    def __init__(self, exec_id, cid, argv, tty, stdin, expires,
                 project=None):
        self.id = exec_id
        self.cid = cid
        self.project = project
        self.argv = list(argv)
        self.tty = tty
        self.stdin = stdin
        self.expires = expires
        self.state = CREATED
        self.handle = None            # the shim's process handle
        self.size = None              # (rows, cols) asked for
        self.exit_code = None

    def inspect(self):
        """:returns: the Docker ``GET /exec/<id>/json`` shape (subset)."""
        return {'ID': self.id, 'Running': self.state == RUNNING,
                'ExitCode': self.exit_code, 'OpenStdin': self.stdin,
                'OpenStdout': True, 'OpenStderr': True,
                'ContainerID': self.cid,
                'ProcessConfig': {'tty': self.tty,
                                  'entrypoint': self.argv[0],
                                  'arguments': self.argv[1:]}}


class Registry(object):
    """Exec records and attach tokens, thread-safe (and green-safe).

    :param ttl: seconds an unused secret stays valid; an exec that has
        exited is kept as long again, for ``GET /exec/<id>/json``.
    :param max_records: most exec records plus attach tokens held.
    :param max_per_project: most of them held for one project.
    """

    def __init__(self, ttl, max_records=DEFAULT_MAX_RECORDS,
                 clock=time.monotonic,
                 max_per_project=DEFAULT_MAX_PER_PROJECT):
        self.ttl = ttl
        self.max_records = max_records
        self.max_per_project = max_per_project
        self.clock = clock
        self._lock = threading.Lock()
        self._execs = {}
        self._attach = {}             # token -> (cid, expires, project)

    def __len__(self):
        return len(self._execs) + len(self._attach)

    def _purge(self, now):
        for key in [k for k, r in self._execs.items()
                    if r.state != RUNNING and r.expires <= now]:
            del self._execs[key]
        for key in [k for k, (_c, exp, _p) in self._attach.items()
                    if exp <= now]:
            del self._attach[key]

    def _room(self, now, project):
        self._purge(now)
        if len(self) >= self.max_records:
            raise Busy('too many pending console sessions (%d); retry '
                       'later' % len(self))
        held = (sum(1 for r in self._execs.values()
                    if r.project == project) +
                sum(1 for _c, _e, p in self._attach.values()
                    if p == project))
        if held >= self.max_per_project:
            raise Busy('project %s holds %d console sessions or pending '
                       'exec ids and attach URLs, the most one project may; '
                       'retry later' % (project, held))

    # ------------------------------------------------------------ exec
    def add_exec(self, cid, argv, tty=True, stdin=True, project=None):
        """:param project: the project that owns the container.
        :returns: the new exec id.
        :raises: Busy
        """
        with self._lock:
            now = self.clock()
            self._room(now, project)
            exec_id = new_secret()
            self._execs[exec_id] = ExecRecord(exec_id, cid, argv, tty,
                                              stdin, now + self.ttl,
                                              project)
            return exec_id

    def get_exec(self, exec_id):
        """:returns: the record of a known, unexpired exec.

        :raises: NotFound
        """
        with self._lock:
            record = self._execs.get(exec_id) if is_secret(exec_id) \
                else None
            if record is None or (record.state != RUNNING and
                                  record.expires <= self.clock()):
                raise NotFound('no such exec instance')
            return record

    def start_exec(self, exec_id):
        """Claim an exec for its one start.

        :raises: NotFound, Conflict if it was started already.
        """
        record = self.get_exec(exec_id)
        with self._lock:
            if record.state != CREATED:
                raise Conflict('exec instance %s was started already' %
                               exec_id[:12])
            record.state = RUNNING
            return record

    def exec_started(self, record, handle):
        """Note the process handle; :returns: the size asked so far."""
        with self._lock:
            record.handle = handle
            return record.size

    def exec_finished(self, record, exit_code):
        with self._lock:
            record.state = EXITED
            record.exit_code = exit_code
            record.expires = self.clock() + self.ttl

    def resize_exec(self, exec_id, rows, cols):
        """Remember a tty size.

        :returns: (container id, process handle) to resize now, or None
            when the process has not started yet (it starts with this
            size) or has exited.
        :raises: NotFound
        """
        record = self.get_exec(exec_id)
        with self._lock:
            record.size = (rows, cols)
            if record.state == RUNNING and record.handle is not None:
                return record.cid, record.handle
            return None

    # ---------------------------------------------------------- attach
    def add_attach(self, cid, project=None):
        """:param project: the project that owns the container.
        :returns: a new single-use attach token for container ``cid``.
        :raises: Busy
        """
        with self._lock:
            now = self.clock()
            self._room(now, project)
            token = new_secret()
            self._attach[token] = (cid, now + self.ttl, project)
            return token

    def take_attach(self, cid, token):
        """Use an attach token.

        :returns: the project of the container if ``token`` is valid for
            ``cid`` (it is then spent).
        :raises: NotFound otherwise.
        """
        if not is_secret(token) or not isinstance(cid, str):
            raise NotFound('invalid attach token')
        with self._lock:
            entry = self._attach.get(token)
            if entry is None:
                raise NotFound('invalid attach token')
            owner, expires, project = entry
            if expires <= self.clock():
                del self._attach[token]
                raise NotFound('expired attach token')
            if not hmac.compare_digest(owner.encode(), cid.encode()):
                raise NotFound('invalid attach token')
            del self._attach[token]
            return project


class ProjectSlots(object):
    """Console sessions open per project, capped.

    :param limit: sessions one project may hold at once.
    """

    def __init__(self, limit):
        self.limit = limit
        self._lock = threading.Lock()
        self._open = {}

    def acquire(self, project):
        """Take a slot of ``project``.

        :raises: Busy when the project holds ``limit`` sessions already.
        """
        with self._lock:
            held = self._open.get(project, 0)
            if held >= self.limit:
                raise Busy('project %s has %d console sessions open, the '
                           'most one project may; retry later' %
                           (project, held))
            self._open[project] = held + 1

    def release(self, project):
        with self._lock:
            held = self._open.get(project, 0) - 1
            if held > 0:
                self._open[project] = held
            else:
                self._open.pop(project, None)

    def held(self, project):
        with self._lock:
            return self._open.get(project, 0)
