"""A booting VM is awaited while it makes progress, not for a fixed time.
"""

import os
import subprocess
import time

from oslotest import base

from kata_zun.shim import progress


class FakeVM(object):
    """A clock and a QEMU CPU counter the test drives."""

    def __init__(self):
        self.now = 100.0
        self.cpu = 5.0
        self.gone = False
        self.load = 0.5
        self.io = 0
        # Whether a vCPU thread wants a CPU (None: unknown).
        self.busy = None

    def load_of_host(self):
        return 2, self.load

    def io_of(self, pid):
        return self.io

    def busy_of(self, pid):
        return self.busy

    def clock(self):
        return self.now

    def cpu_of(self, pid):
        return None if self.gone else self.cpu

    def run(self, seconds, share):
        self.now += seconds
        self.cpu += seconds * share


class BootProgressTestCase(base.BaseTestCase):

    def _watch(self, vm, **kw):
        return progress.BootProgress(42, clock=vm.clock, cpu=vm.cpu_of,
                                     load=vm.load_of_host, io=vm.io_of,
                                     busy=vm.busy_of, **kw)

    def test_a_starved_boot_is_awaited_as_long_as_it_moves(self):
        vm = FakeVM()
        watch = self._watch(vm)
        # 50 VMs on 2 cores: 4 % of a CPU each, for 10 minutes.
        for _ in range(1200):
            vm.run(0.5, 0.04)
            watch.check()
        self.assertEqual(600, round(watch.check()))
        # 100 at once, some unlucky: 1.5 %; the host's load says why.
        vm.load = 100.0
        for _ in range(1200):
            vm.run(0.5, 0.015)
            watch.check()
        # The same share on a quiet host is a stall.
        vm.load = 1.0
        self.assertRaises(progress.NoProgress,
                          lambda: [(vm.run(0.5, 0.015), watch.check())
                                   for _ in range(120)])

    def test_a_starved_vcpu_is_never_a_stall(self):
        vm = FakeVM()
        watch = self._watch(vm, window=30)
        # A burst: the load average still says 1, QEMU gets 0.5 % of a
        # CPU, but its vCPU is runnable in 4 samples of 5.
        vm.load = 1.0
        for i in range(600):
            vm.busy = i % 5 != 0
            vm.run(0.5, 0.005)
            watch.check()
        # The same share with a sleeping vCPU is an idle guest: given up
        # within one window.
        with self.assertRaisesRegex(progress.NoProgress, 'no progress'):
            for i in range(70):
                vm.busy = i % 5 == 0
                vm.run(0.5, 0.005)
                watch.check()

    def test_a_vcpu_blocked_in_the_kernel_is_awaited(self):
        # vcpu_busy counts D (uninterruptible) as busy: the same rule.
        vm = FakeVM()
        watch = self._watch(vm, window=30)
        vm.busy = True
        for _ in range(600):
            vm.run(0.5, 0.0)
            watch.check()

    def test_vcpu_busy_of_real_threads(self):
        # A process with a thread named as QEMU names a vCPU, which spins
        # or sleeps as told on stdin.
        code = (
            'import sys, threading, time\n'
            'mode = ["sleep"]\n'
            'def vcpu():\n'
            '    import ctypes, ctypes.util\n'
            '    libc = ctypes.CDLL(ctypes.util.find_library("c"))\n'
            '    libc.prctl(15, b"CPU 0/TCG", 0, 0, 0)\n'
            '    print("named", flush=True)\n'
            '    while True:\n'
            '        if mode[0] == "sleep":\n'
            '            time.sleep(0.05)\n'
            'threading.Thread(target=vcpu, daemon=True).start()\n'
            'for line in sys.stdin:\n'
            '    mode[0] = line.strip()\n')
        proc = subprocess.Popen(['python3', '-c', code], text=True,
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.assertEqual('named', proc.stdout.readline().strip())
        # Sampled, as the shim does: a sleeping vCPU is mostly not busy,
        # a spinning one mostly is (a busy host may preempt either).

        def share(samples=40):
            got = []
            for _ in range(samples):
                got.append(progress.vcpu_busy(proc.pid))
                time.sleep(0.005)
            self.assertNotIn(None, got)
            return sum(got) / samples
        self.assertLess(share(), 0.5)
        proc.stdin.write('spin\n')
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while share() < 0.75:
            self.assertLess(time.monotonic(), deadline)
        self.assertIsNone(progress.vcpu_busy(os.getpid()))
        self.assertIsNone(progress.vcpu_busy(2 ** 22 + 12345))

    def test_an_idle_guest_is_given_up_after_the_window(self):
        vm = FakeVM()
        watch = self._watch(vm, window=30)
        vm.run(2, 1.0)              # it booted a little...
        watch.check()
        waited = 0
        with self.assertRaisesRegex(progress.NoProgress,
                                    'no progress for 3[0-9] s'):
            while True:             # ... then idles at 0.5 %
                vm.run(0.5, 0.005)
                waited += 0.5
                watch.check()
        self.assertLessEqual(waited, 33)

    def test_a_guest_waiting_on_the_host_disk_is_awaited(self):
        vm = FakeVM()
        watch = self._watch(vm, window=30)
        for _ in range(600):        # no CPU, but its writes go on
            vm.run(0.5, 0.001)
            vm.io += 4096
            watch.check()
        with self.assertRaises(progress.NoProgress):
            for _ in range(80):     # then nothing at all
                vm.run(0.5, 0.001)
                watch.check()

    def test_a_spinning_guest_is_stopped_by_the_cpu_budget(self):
        vm = FakeVM()
        watch = self._watch(vm, cpu_budget=60)
        with self.assertRaisesRegex(progress.NoProgress, '6[01] CPU sec'):
            for _ in range(1000):
                vm.run(0.5, 1.0)
                watch.check()
        self.assertLess(vm.now - 100, 62)

    def test_qemu_gone(self):
        vm = FakeVM()
        watch = self._watch(vm)
        vm.gone = True
        self.assertRaisesRegex(progress.NoProgress, 'gone', watch.check)

    def test_io_bytes(self):
        self.assertEqual(0, progress.io_bytes(2 ** 22 + 12345))
        self.assertGreaterEqual(progress.io_bytes(os.getpid()), 0)

    def test_host_load(self):
        cpus, load = progress.host_load()
        self.assertGreaterEqual(cpus, 1)
        self.assertGreaterEqual(load, 0.0)

    def test_cpu_seconds_of_real_processes(self):
        self.assertIsNone(progress.cpu_seconds(2 ** 22 + 12345))
        busy = subprocess.Popen(['sh', '-c', 'while :; do :; done'])
        self.addCleanup(busy.wait)
        self.addCleanup(busy.kill)
        # Waits on the busy loop's progress, not a fixed time: on a loaded
        # host it got 0.03 s of CPU in half a second.
        deadline = time.monotonic() + 60
        while progress.cpu_seconds(busy.pid) <= 0.05:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        self.assertGreaterEqual(progress.cpu_seconds(os.getpid()), 0)
