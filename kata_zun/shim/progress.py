"""How long to wait for a booting guest: as long as it makes progress.

A fixed wall-clock deadline for the agent's first answer fails on a busy
host: 20 VMs booting at once on 2 cores under TCG each get a tenth of a
core, and a boot that takes 1.5 s alone takes 30 s or more. What a boot
needs is CPU time, roughly the same however busy the host is. So the
shim watches the CPU time of the VM's QEMU process:

* **stalled**: over the last ``window`` seconds QEMU did no disk I/O
  (a guest waiting on a busy host disk uses no CPU) and got less than
  ``min_share`` of one CPU, or less than a quarter of its fair share
  when the host is busier (CPUs / load average): an idle guest (a hung
  agent, a kernel waiting for nothing) uses about 0.5 %; a booting
  guest gets what the host can give it, 4 % each when 50 boot at once
  on 2 cores. The VM is not coming.
* **over budget**: QEMU has used ``cpu_budget`` CPU seconds since the
  boot began (a boot needs about 1.5 here): a guest that spins (a kernel
  stuck calibrating its delay loop) never answers.

Either ends the wait with a reason. Nothing else does, so the deadline
scales with the host's load instead of guessing it.

A low share alone cannot tell a starved guest from an idle one: when 50
VMs boot on 2 cores, or QEMU is blocked in the host's kernel (reclaim,
a slow disk), a booting guest can get less than any threshold, and the
1-minute load average lags a sudden burst, so the fair share it gives
is too high. What does tell them apart is the state of QEMU's vCPU
threads (named ``CPU n/TCG`` or ``CPU n/KVM`` with ``-name
...,debug-threads=on``): an idle guest's vCPU sleeps (the guest halted
and waits for an interrupt); a starved one is runnable (``R``, waiting
for a host CPU) or blocked in the kernel (``D``). A window in which the
vCPUs were runnable or blocked in most samples is **starved**, never
stalled: only the CPU budget, and the caller's own ceiling, end it.
(The other threads do not count: under load, an idle VM's main loop
waits for a CPU at each timer it serves.)
"""

import collections
import os
import re
import time

from kata_zun.runtime import fileutils

#: CPU ticks per second, for /proc/PID/stat.
_TICKS = os.sysconf('SC_CLK_TCK')
#: QEMU's vCPU thread names (``-name ...,debug-threads=on``).
VCPU_COMM = re.compile(rb'^CPU \d+/(TCG|KVM)$')
#: Share of a window's samples with a busy vCPU that makes it starved.
STARVED = 0.75


def cpu_seconds(pid):
    """:returns: user + system CPU seconds of process ``pid`` (threads
        included), or None when it is gone.
    """
    fields = fileutils.proc_stat_fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, TypeError, ValueError):
        return None


def io_bytes(pid):
    """:returns: bytes process ``pid`` read from and wrote to storage
        (``/proc/PID/io``), or 0 when unknown.
    """
    try:
        with open('/proc/%d/io' % pid, 'rb') as f:
            data = f.read(4096)
    except OSError:
        return 0
    total = 0
    for line in data.split(b'\n'):
        key, _, value = line.partition(b':')
        if key in (b'read_bytes', b'write_bytes'):
            try:
                total += int(value)
            except ValueError:
                pass
    return total


def vcpu_busy(pid):
    """Whether a vCPU thread of QEMU ``pid`` wants a CPU right now.

    :returns: True when one is runnable or blocked in the kernel (state
        ``R`` or ``D``), False when all sleep, None when no thread is
        named as a vCPU (QEMU without ``debug-threads=on``) or QEMU is
        gone.
    """
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return None
    seen = False
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/stat' % (pid, tid), 'rb') as f:
                data = f.read(512)
        except OSError:
            continue            # the thread ended meanwhile
        # "tid (comm) S ...": comm may hold spaces and parentheses.
        comm = data[data.find(b'(') + 1:data.rfind(b')')]
        if not VCPU_COMM.match(comm):
            continue
        seen = True
        if data[data.rfind(b')') + 2:data.rfind(b')') + 3] in (b'R', b'D'):
            return True
    return False if seen else None


def host_load():
    """:returns: (online CPUs, 1-minute load average)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return os.cpu_count() or 1, load


class NoProgress(Exception):
    """The VM stopped making progress; the message says how."""


class BootProgress(object):
    """Judges whether a booting VM is still worth waiting for.

    :param pid: the QEMU process.
    :param window: seconds over which CPU progress is measured.
    :param min_share: least share of one CPU that counts as progress.
    :param cpu_budget: most CPU seconds the whole wait may cost.
    :param clock: monotonic clock (tests).
    :param cpu: callable pid -> CPU seconds or None (tests).
    :param load: callable -> (CPUs, 1-minute load average) (tests).
    :param io: callable pid -> storage bytes so far (tests).
    :param busy: callable pid -> whether a vCPU wants a CPU, or None when
        unknown (tests).
    """

    def __init__(self, pid, window=30.0, min_share=0.02, cpu_budget=120.0,
                 clock=time.monotonic, cpu=cpu_seconds, load=host_load,
                 io=io_bytes, busy=vcpu_busy):
        self.pid = pid
        self.window = float(window)
        self.min_share = float(min_share)
        self.cpu_budget = float(cpu_budget)
        self._clock = clock
        self._cpu = cpu
        self._load = load
        self._io = io
        self._busy = busy
        now = clock()
        first = cpu(pid) or 0.0
        self.started = now
        self._cpu0 = first
        # (time, cpu, io bytes, vCPU busy) samples covering the last
        # window.
        self._samples = collections.deque([(now, first, io(pid),
                                            busy(pid))])

    def check(self):
        """Take a sample.

        :returns: seconds waited so far (wall clock).
        :raises: NoProgress
        """
        now = self._clock()
        used = self._cpu(self.pid)
        if used is None:
            raise NoProgress('QEMU (pid %d) is gone' % self.pid)
        done_io = self._io(self.pid)
        self._samples.append((now, used, done_io, self._busy(self.pid)))
        # Keep one sample at or before the window's start.
        while len(self._samples) > 2 and \
                self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        waited = now - self.started
        if used - self._cpu0 > self.cpu_budget:
            raise NoProgress(
                'the VM used %.0f CPU seconds without its agent answering '
                '(a boot needs a few)' % (used - self._cpu0))
        t_old, cpu_old, io_old, _busy = self._samples[0]
        if now - t_old >= self.window and done_io == io_old:
            share = (used - cpu_old) / (now - t_old)
            cpus, load = self._load()
            fair = cpus / max(load, 1.0)
            if share < min(self.min_share, fair / 4) and \
                    not self._starved():
                raise NoProgress(
                    'the VM made no progress for %.0f s (QEMU got %.1f %% '
                    'of a CPU; %.0f s since the boot began)'
                    % (now - t_old, share * 100, waited))
        return waited

    def _starved(self):
        """:returns: whether the vCPUs wanted a CPU in most samples of the
            window (False when their state is unknown).
        """
        known = [b for _t, _c, _i, b in self._samples if b is not None]
        return bool(known) and \
            sum(1 for b in known if b) >= STARVED * len(known)
