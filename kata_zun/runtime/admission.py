"""Host memory admission: a start that cannot fit is refused, not run.

Without it, the host is the only judge: 43 cold VMs booting at once
each touched ~470 MiB, MemAvailable fell to 80 MiB and the host thrashed
(load ~150) until they were stopped by hand. zun's placement does not
prevent that (it allows ``ram_allocation_ratio`` 1.5 times the host's
RAM, and a container's VM costs more than its memory limit), and the CLI
asks no one. So every sandbox start passes here, whoever asked for it
(the CLI, zun-compute, a pod), just before its QEMU runs.

The rule, checked against the kernel's ``MemAvailable``:

- MemAvailable misses what starts in flight will touch soon: a cold
  boot touches most of its guest RAM within seconds, and fifty starts
  all read the same MemAvailable before the first touched a page. So
  each start holds a *reservation* for what it may touch
  (:func:`kata_zun.hypervisor.base.Hypervisor.start` says how much: a
  cold boot, or a restore from a VM template that loads the whole RAM,
  its whole memory limit; a restore that maps the template's sealed RAM
  only QEMU's own) until its boot is done.
  Once its QEMU runs, the claim counts only what that QEMU has not
  touched yet (its claim less its resident memory): what it touched is
  already missing from MemAvailable, and counting it twice would hold
  back starts there is room for.
- A start that does not fit in MemAvailable minus ``[kata]
  host_memory_reserve_mb`` is refused at once (:class:`InsufficientResources`):
  the starts in flight can only take more.
- A start that fits only once the reservations in flight are gone waits
  for them (each is bounded by its own boot's progress), then is judged
  again. It waits at most half of ``[kata] shim_start_timeout``, the
  last-resort bound (the other half is its own boot's).

The ledger is a directory of small files under ``<run_path>/admission``,
one per start in flight, each ``flock``-ed by the shim that holds it: the
kernel drops a dead shim's lock, and a file nobody holds is stale and
removed. ``ledger.lock`` serialises the judging (held for microseconds).

Running sandboxes that later grow into their limits are not reserved
for: that is the overcommit the operator chose (each one is bounded by
its sandbox cgroup). A clone of a VM template grows one way only: it
cannot give back what its guest frees (see
:mod:`kata_zun.hypervisor.template`). Admission keeps the *starts*
from running the host out of memory, and tells the user why.
"""

import contextlib
import fcntl
import json
import os
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

LEDGER_DIR = 'admission'
# How a shim's ready report starts when admission refused its start (the
# starter raises InsufficientResources, not a boot failure).
REFUSED = 'refused: '
LEDGER_LOCK = 'ledger.lock'
# Longest entry read back; ours are ~60 bytes.
_ENTRY_MAX = 512
# Entries read at most: one per start in flight on this host.
_ENTRIES_MAX = 4096
# Seconds between two looks while waiting for starts in flight.
_POLL = 0.2
# Seconds the ledger lock may be waited for (it is held for microseconds
# by a live holder; a kernel lock is never stale).
_LOCK_WAIT = 30.0


def mem_available_mib(path='/proc/meminfo'):
    """:returns: the kernel's MemAvailable in MiB.
    :raises: InsufficientResources when it cannot be read (nothing can
        be judged, so nothing is admitted).
    """
    try:
        with open(path, 'rb') as f:
            text = f.read(64 * 1024).decode('ascii', 'replace')
    except OSError as exc:
        raise exception.InsufficientResources(
            reason='cannot read %s to judge host memory: %s' % (path, exc))
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == 'MemAvailable:':
            try:
                return int(words[1]) // 1024
            except ValueError:
                break
    raise exception.InsufficientResources(
        reason='%s has no MemAvailable: host memory cannot be judged (set '
        '[kata] memory_admission = false to start without)' % path)


class Reservation(object):
    """One start's claim on host memory, held until :meth:`release`.

    :param ledger: the :class:`Ledger`.
    :param name: who holds it (the sandbox's VM name), for messages.
    """

    def __init__(self, ledger, name, started=None):
        self.ledger = ledger
        self.name = name
        self.started = started
        self.mib = 0
        self._fd = None
        self._path = None
        self._vm_pid = None

    def need(self, mib, deadline=None):
        """Claim ``mib`` MiB in all (replacing an earlier claim of this
        reservation: a restore that fell back to a cold boot needs more).

        :param mib: MiB this start may touch before its boot is done.
        :param deadline: ``time.monotonic()`` value after which waiting
            for the starts in flight is given up (default: half of
            ``[kata] shim_start_timeout`` from when the starter began to
            wait, the reservation's ``started``, else from now: the
            other half is left to the boot, so that the starter hears
            this reason and not its own time-out, however long a busy
            host made the shim's own start).
        :raises: InsufficientResources
        """
        mib = max(0, int(mib))
        if not self.ledger.enabled:
            self.mib = mib
            return
        started = time.monotonic() if self.started is None else self.started
        if deadline is None:
            deadline = started + CONF.kata.shim_start_timeout / 2.0
        waited = None
        while True:
            with self.ledger.locked():
                verdict = self.ledger.judge(mib, exclude=self._path)
                if verdict is None:
                    self._write(mib)
                    if waited is not None:
                        LOG.info('%s: %d MiB admitted after waiting %.1f s '
                                 'for starts in flight', self.name, mib,
                                 time.monotonic() - waited)
                    return
            refuse, why = verdict
            if refuse or time.monotonic() >= deadline:
                self.release()
                if not refuse:
                    why += ', and they were not done after %.0f s' % (
                        time.monotonic() - started)
                raise exception.InsufficientResources(
                    reason='not enough host memory to start %s: %s'
                    % (self.name, why))
            if waited is None:
                waited = time.monotonic()
                LOG.info('%s waits for starts in flight: %s', self.name,
                         why)
            time.sleep(_POLL)

    def _write(self, mib):
        entry = {'name': self.name, 'pid': os.getpid(), 'mib': mib}
        if self._vm_pid:
            entry['vm_pid'] = self._vm_pid
        data = json.dumps(entry).encode('ascii')
        if self._fd is None:
            path = os.path.join(self.ledger.root, '%s.%d.%d' % (
                self.name, os.getpid(), id(self)))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            # Ours from now until we close it; others see it as live.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd, self._path = fd, path
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        self.mib = mib

    def attach(self, vm_pid):
        """Name the QEMU this claim is for, once it runs: from then on
        the claim counts only what that process has not touched yet.

        :param vm_pid: the QEMU's pid.
        """
        if self._fd is None or not isinstance(vm_pid, int) or vm_pid <= 0:
            return
        self._vm_pid = vm_pid
        try:
            with self.ledger.locked():      # judges read entries locked
                self._write(self.mib)
        except (exception.InsufficientResources, OSError) as exc:
            # The whole claim keeps counting: conservative, not wrong.
            LOG.warning('%s: cannot name its QEMU in the admission '
                        'ledger: %s', self.name, exc)

    def release(self):
        """Give the claim back (the boot is done or failed). Idempotent."""
        if self._fd is None:
            return
        # Unlink first: a judge that opened it before sees it unheld
        # only after we close it, and then removes nothing of ours.
        try:
            os.unlink(self._path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = self._path = None
        self.mib = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class Ledger(object):
    """The host's starts in flight and what they may still touch.

    :param root: the ledger directory (default ``<run_path>/admission``).
    :param reserve_mib: MiB kept free for the host (default ``[kata]
        host_memory_reserve_mb``).
    :param enabled: judge at all (default ``[kata] memory_admission``).
    :param meminfo: where MemAvailable is read.
    :param cgroup_headroom: a callable returning the MiB the sandboxes'
        parent cgroup can still take under its memory limit, or None
        (default: :func:`cgroup_headroom_mib` when the jail is on: the
        sandboxes are in that cgroup then).
    """

    def __init__(self, root=None, reserve_mib=None, enabled=None,
                 meminfo='/proc/meminfo', cgroup_headroom=None):
        self.root = root or os.path.join(CONF.kata.run_path, LEDGER_DIR)
        self.reserve_mib = (CONF.kata.host_memory_reserve_mb
                            if reserve_mib is None else reserve_mib)
        self.enabled = (CONF.kata.memory_admission if enabled is None
                        else enabled)
        self.meminfo = meminfo
        if cgroup_headroom is None:
            cgroup_headroom = (cgroup_headroom_mib if CONF.kata_jail.enabled
                               else lambda: None)
        self.cgroup_headroom = cgroup_headroom

    def reservation(self, name, started=None):
        """:param started: ``time.monotonic()`` when the start began (its
            wait is bounded from then).
        :returns: an empty :class:`Reservation` for ``name``.
        """
        return Reservation(self, name, started)

    @contextlib.contextmanager
    def locked(self):
        """Hold the ledger's lock (judging and writing an entry).

        :raises: InsufficientResources if the ledger cannot be used.
        """
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.root, LEDGER_LOCK),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise exception.InsufficientResources(
                reason='the memory admission ledger %s cannot be used: %s'
                % (self.root, exc))
        try:
            if not fileutils.poll_flock(fd, time.monotonic() + _LOCK_WAIT,
                                        interval=0.01):
                raise exception.InsufficientResources(
                    reason='the memory admission ledger %s stayed locked '
                    'for %d s' % (self.root, _LOCK_WAIT))
            yield
        finally:
            os.close(fd)

    def in_flight(self, exclude=None):
        """Read the live entries (removing stale ones). Call it locked.

        :param exclude: an entry's path not to count (the caller's own).
        :returns: (count, MiB) of the starts in flight.
        """
        count = mib = 0
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0, 0
        for name in names[:_ENTRIES_MAX]:
            path = os.path.join(self.root, name)
            if name == LEDGER_LOCK or path == exclude:
                continue
            held = _held_claim(path)
            if held is None:
                continue
            count += 1
            mib += held
        return count, mib

    def judge(self, mib, exclude=None):
        """Judge a claim of ``mib`` MiB. Call it locked.

        :returns: None when it fits now, else (refuse, why): refuse is
            True when it cannot fit even once the starts in flight are
            done, False when it may fit after them.
        :raises: InsufficientResources if MemAvailable cannot be read.
        """
        available = mem_available_mib(self.meminfo)
        usable = available - self.reserve_mib
        where = ('the host has %d MiB available and keeps %d MiB free'
                 % (available, self.reserve_mib))
        option = ' ([kata] host_memory_reserve_mb)'
        headroom = self.cgroup_headroom()
        if headroom is not None and headroom < usable:
            # The sandboxes' cgroups are under a parent with a memory
            # limit: a start the host has room for would be OOM-killed
            # there.
            usable = headroom
            where = ('the sandboxes\' cgroup %s has %d MiB left under its '
                     'memory limit' % (CONF.kata_jail.cgroup_parent,
                                       headroom))
            option = ''
        if mib > usable:
            return True, 'it needs %d MiB, %s%s' % (mib, where, option)
        count, held = self.in_flight(exclude)
        if mib > usable - held:
            return False, ('it needs %d MiB, %s, and %d start(s) in '
                           'flight hold %d MiB' % (mib, where, count, held))
        return None


def cgroup_headroom_mib():
    """:returns: MiB the sandboxes' parent cgroup (``[kata_jail]
        cgroup_parent``) can still take under its memory limit, or None
        when it has none (see
        :func:`kata_zun.jail.cgroup.memory_headroom`).
    :raises: InsufficientResources when the cgroups cannot be read.
    """
    from kata_zun.jail import cgroup
    try:
        headroom = cgroup.memory_headroom(CONF.kata_jail.cgroup_parent)
    except exception.JailError as exc:
        raise exception.InsufficientResources(
            reason='the memory limit of the sandboxes\' cgroup cannot be '
            'judged: %s' % exc)
    return None if headroom is None else headroom // (1024 * 1024)


def _held_claim(path):
    """:returns: the MiB of a live entry; None for a stale entry (removed)
        or one that is not ours to read (left alone).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                     os.O_NONBLOCK)
    except OSError:
        # A symlink, a FIFO's peer, or gone already: none of ours.
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass                # held: a start in flight
        except OSError:
            return None
        else:
            # Nobody holds it: its shim died mid-start. Its claim ends.
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        try:
            entry = json.loads(os.pread(fd, _ENTRY_MAX, 0))
        except (OSError, ValueError):
            entry = None
        if not isinstance(entry, dict):
            entry = {}
        claim = entry.get('mib')
        if isinstance(claim, bool) or not isinstance(claim, int) or \
                not 0 <= claim <= 1 << 40:
            # Entries are written under the ledger lock, so a live one
            # that cannot be read was damaged: its start still runs, but
            # how much it holds is unknown. It counts as nothing (the
            # host's MemAvailable still shows what it has touched).
            LOG.warning('memory admission entry %s is unreadable: counted '
                        'as 0 MiB', path)
            return 0
        return max(0, claim - _resident_mib(entry.get('vm_pid')))
    finally:
        os.close(fd)


def _resident_mib(pid):
    """:returns: MiB resident in process ``pid`` (0 if unknown). A stale
        or lying pid can only make a claim count less than it says, down
        to what MemAvailable already shows; a live start's own QEMU is
        what the shim names.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return 0
    try:
        with open('/proc/%d/statm' % pid, 'rb') as f:
            resident = int(f.read(256).split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf('SC_PAGE_SIZE') // (1 << 20)
