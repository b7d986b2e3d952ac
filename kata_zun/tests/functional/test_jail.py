"""The jail around QEMU, seen from the host (real VMs, real cgroups).

Hostile cases of the "local user / guest that took over QEMU" boundary:
what a process with a jailed QEMU's credentials can reach is tried for
real, by entering the same jail in a forked child instead of QEMU.
"""

import errno
import fcntl
import json
import mmap
import os
import shutil
import socket
import tempfile
import time

from oslo_config import fixture as config_fixture

from kata_zun import conf
from kata_zun.guest import builder
from kata_zun.jail import cgroup
from kata_zun.jail import launch
from kata_zun.tests import forked
from kata_zun.tests.functional import base
from kata_zun.tests.functional import test_qemu_boot

CONF = conf.CONF


def _status(pid):
    fields = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            fields[key] = value.strip()
    return fields


def _cpu_ticks(pid):
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(')') + 2:].split()
    return int(fields[11]) + int(fields[12])        # utime + stime


def _throttled(vm_cgroup_cpu_dir):
    with open(os.path.join(vm_cgroup_cpu_dir, 'cpu.stat')) as f:
        for line in f:
            key, _, value = line.partition(' ')
            if key == 'nr_throttled':
                return int(value)
    raise AssertionError('no nr_throttled in cpu.stat')


class JailedQemuTestCase(base.KataZunFunctionalTest):
    """A container's QEMU as the host sees it: /proc and cgroups."""

    def _vm_pid(self, name):
        info = json.loads(self.kz('inspect', name, check=0).out)
        if isinstance(info, list):
            info = info[0]
        return info['State']['VMPid'], info['Id']

    def test_qemu_identity_namespaces_and_limits(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'j1', '--cpus', '0.5', '--memory',
                '64', 'busybox', 'sleep', '1000', check=0)
        pid, cid = self._vm_pid('j1')
        status = _status(pid)
        start = CONF.kata_jail.uid_range_start
        uids = set(int(u) for u in status['Uid'].split())
        gids = set(int(g) for g in status['Gid'].split())
        self.assertEqual(1, len(uids), status['Uid'])
        uid = uids.pop()
        self.assertTrue(start <= uid < start + CONF.kata_jail.uid_range_size)
        self.assertEqual({uid}, gids)
        self.assertEqual('', status['Groups'])
        for cap in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'):
            self.assertEqual(0, int(status[cap], 16), cap)
        self.assertEqual('1', status['NoNewPrivs'])
        self.assertEqual('2', status['Seccomp'])     # QEMU's -sandbox
        for ns in ('mnt', 'net', 'ipc', 'uts'):
            self.assertNotEqual(os.readlink('/proc/self/ns/' + ns),
                                os.readlink('/proc/%d/ns/%s' % (pid, ns)),
                                ns)
        # Its root: QEMU's own files and the guest's, nothing of the host.
        # A clone of a VM template (its RAM the template's sealed memfd,
        # reopened as /proc/self/fd/N) also has a /proc of its own
        # processes only, read-only; a cold boot has none.
        root = '/proc/%d/root' % pid
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            clone = b'mem-path=/proc/self/fd/' in f.read()
        self.assertEqual({'guest', 'usr'} | ({'proc'} if clone else set()), {
            n for n in os.listdir(root)
            if not os.path.islink(os.path.join(root, n))})
        self.assertEqual(['initrd.img', 'vmlinux'],
                         sorted(os.listdir(root + '/guest')))
        with open('/proc/%d/mountinfo' % pid) as f:
            procs = [line.split() for line in f if ' - proc ' in line]
        self.assertEqual(1 if clone else 0, len(procs), procs)
        for fields in procs:
            self.assertEqual('/proc', fields[4])
            self.assertIn('ro', fields[5].split(','))
            self.assertIn('hidepid=invisible', fields[-1])
            self.assertIn('subset=pid', fields[-1])
        for absent in ('etc', 'sys', 'dev', 'var', 'tmp', 'root', 'run') + (
                () if clone else ('proc',)):
            self.assertFalse(os.path.lexists(os.path.join(root, absent)),
                             absent)
        # Disks, sockets and the console are inherited descriptors.
        targets = [os.readlink('/proc/%d/fd/%s' % (pid, fd))
                   for fd in os.listdir('/proc/%d/fd' % pid)]
        self.assertTrue(any(t.endswith('/rw.img') for t in targets))
        # No environment of ours.
        with open('/proc/%d/environ' % pid, 'rb') as f:
            self.assertEqual(b'PATH=/usr/bin:/bin\0', f.read())

        # The host cgroup and its limits.
        group = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                                   'kz-' + cid[:12])
        with open('/proc/%d/cgroup' % pid) as f:
            memberships = f.read()
        self.assertIn('/%s/kz-%s/vmm' % (CONF.kata_jail.cgroup_parent,
                                         cid[:12]), memberships)
        limits = group.limits()
        self.assertEqual(0.5, limits['cpu'])
        self.assertEqual(CONF.kata_jail.pids_max, limits['pids'])
        info = json.loads(self.kz('inspect', 'j1', check=0).out)
        info = info[0] if isinstance(info, list) else info
        vm_mb = info['VM']['memory_mb']
        self.assertEqual((vm_mb + CONF.kata_jail.memory_overhead_mb) << 20,
                         limits['memory'])

        # A guest that burns CPU is held to the container's 0.5 CPU by
        # the host: the kernel throttles QEMU's cgroup.
        if group.version == 1:
            cpu_dir = os.path.join(group.mountpoints['cpu'],
                                   group.parent, group.sandbox, 'vmm')
        else:
            cpu_dir = os.path.join(group.directories()[0], 'vmm')
        before = _throttled(cpu_dir)
        ticks = _cpu_ticks(pid)
        started = time.monotonic()
        self.kz('exec', 'j1', 'sh', '-c',
                'i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done',
                check=0, timeout=300)
        wall = time.monotonic() - started
        used = (_cpu_ticks(pid) - ticks) / os.sysconf('SC_CLK_TCK')
        self.assertGreater(_throttled(cpu_dir), before)
        self.addDetail('cpu', base_text('QEMU used %.2f s of CPU in %.2f s'
                                        % (used, wall)))
        # Quota 0.5 per 100 ms period, plus one period of slack.
        self.assertLessEqual(used, 0.5 * wall + 0.2)

        # rm: QEMU gone, its cgroup and its uid lease released.
        self.kz('rm', '-f', 'j1', check=0)
        self.assertFalse(os.path.exists('/proc/%d' % pid))
        for directory in group.directories():
            self.assertFalse(os.path.exists(directory), directory)
        self.assertNotIn(group.sandbox, _lease_holders(uid))

    def test_a_killed_shim_leaves_no_cgroup_or_uid(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'k1', 'busybox', 'sleep', '1000',
                check=0)
        info = json.loads(self.kz('inspect', 'k1', check=0).out)
        info = info[0] if isinstance(info, list) else info
        vm_pid, shim_pid = info['State']['VMPid'], info['State']['ShimPid']
        uid = int(_status(vm_pid)['Uid'].split()[0])
        group = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                                   'kz-' + info['Id'][:12])
        os.kill(shim_pid, 9)
        deadline = time.monotonic() + 30
        while os.path.exists('/proc/%d' % vm_pid):      # PDEATHSIG
            self.assertLess(time.monotonic(), deadline, 'QEMU outlived '
                            'its shim')
            time.sleep(0.1)
        self.assertIn('crash', self.kz('ps', '-a').text + self.kz(
            'inspect', 'k1').text)
        self.kz('rm', 'k1', check=0)
        for directory in group.directories():
            self.assertFalse(os.path.exists(directory), directory)
        # (Another test's sandbox may hold that uid by now: what matters
        # is that no lease names this one.)
        self.assertNotIn(group.sandbox, _lease_holders(uid))

    def test_guest_memory_hog_stays_within_host_limit(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'm1', '--memory', '64', 'busybox',
                'sleep', '1000', check=0)
        pid, cid = self._vm_pid('m1')
        group = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                                   'kz-' + cid[:12])
        limit = group.limits()['memory']
        # Fill the guest: the container is OOM-killed inside its VM.
        # (busybox tail keeps the current line: /dev/zero has no end of
        # line.)
        result = self.kz('exec', 'm1', 'sh', '-c',
                         'tail /dev/zero && echo survived', timeout=300)
        self.assertNotIn('survived', result.text)
        # QEMU lives on, and never used more host memory than its limit.
        self.assertTrue(os.path.exists('/proc/%d' % pid))
        self.assertLessEqual(_peak_memory(group), limit)
        self.kz('exec', 'm1', 'true', check=0)


def _lease_holders(*uids):
    holders = []
    for uid in uids:
        try:
            with open(os.path.join(CONF.kata_jail.lease_dir, str(uid))) as f:
                holders.append(json.load(f).get('sandbox'))
        except (OSError, ValueError):
            pass
    return holders


def base_text(text):
    from testtools import content
    return content.text_content(text)


def _peak_memory(group):
    if group.version == 1:
        path = os.path.join(group.mountpoints['memory'], group.parent,
                            group.sandbox, 'vmm',
                            'memory.max_usage_in_bytes')
    else:
        path = os.path.join(group.directories()[0], 'vmm', 'memory.peak')
        if not os.path.exists(path):
            path = os.path.join(group.directories()[0], 'vmm',
                                'memory.current')
    with open(path) as f:
        return int(f.read())


# What a process with a jailed QEMU's credentials tries, once inside.
def _attempter(results):
    """:returns: ``attempt(name, func)``, which records in ``results``
        'ok' or the errno name ``func()`` failed with.
    """
    def attempt(name, func):
        try:
            func()
            results[name] = 'ok'
        except OSError as exc:
            results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    return attempt


def _escape_attempts(host_pid, other_file):
    results = {}
    attempt = _attempter(results)

    attempt('open /etc/shadow', lambda: open('/etc/shadow').close())
    attempt('open a host file by its path',
            lambda: open(other_file).close())
    attempt('write the guest kernel',
            lambda: open('/guest/vmlinux', 'r+b').close())
    attempt('create a file', lambda: open('/evil', 'w').close())

    def connect():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(('127.0.0.1', 5672))
        finally:
            sock.close()
    attempt('connect to a host service on loopback', connect)
    attempt('signal a host process', lambda: os.kill(host_pid, 0))
    attempt('become root', lambda: os.setuid(0))
    attempt('mount', lambda: _mount_tmpfs())
    return json.dumps(results).encode()


def _mount_tmpfs():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b'none', b'/guest', b'tmpfs', 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class JailEscapeTestCase(base.KataZunFunctionalTest):
    """A took-over QEMU (a forked child in the very same jail) finds
    nothing on the host to read, write, reach or signal.
    """

    def test_a_compromised_qemu_reaches_nothing(self):
        run_dir = tempfile.mkdtemp(prefix='kzj', dir='/tmp')
        self.addCleanup(shutil.rmtree, run_dir, True)
        cfg = self.useFixture(config_fixture.Config(CONF))
        cfg.config(state_path=self.state_path, group='kata')
        secret = os.path.join(self.state_path, 'secret')
        with open(secret, 'w') as f:
            f.write('zun.conf credentials')
        os.chmod(secret, 0o644)      # even a world-readable host file
        assets = builder.find()
        jail = launch.prepare('kz-escape-test', os.path.join(run_dir, 'j'),
                              assets.kernel, assets.initrd, 64, 0.5)
        self.addCleanup(jail.release)
        parent = os.getpid()

        def compromised_qemu():
            jail.child_setup(parent)
            return _escape_attempts(parent, secret)
        code, report = forked.run(compromised_qemu)
        self.assertEqual(0, code, report)
        self.assertTrue(report.startswith(b'{'), report)
        results = json.loads(report)
        self.assertEqual({
            'open /etc/shadow': 'ENOENT',
            'open a host file by its path': 'ENOENT',
            'write the guest kernel': 'EACCES',
            'create a file': 'EROFS',
            'connect to a host service on loopback': 'ENETUNREACH',
            'signal a host process': 'EPERM',
            'become root': 'EPERM',
            'mount': 'EPERM',
        }, results)
        # The jail's mounts never showed on the host.
        with open('/proc/self/mountinfo') as f:
            self.assertNotIn(run_dir, f.read())
        os.kill(parent, 0)       # and we are untouched

    def test_a_compromised_clone_cannot_change_the_template_ram(self):
        """A clone's jail adds a /proc and an inherited sealed memfd (the
        template's RAM): through them it can change nothing and see no
        other process.
        """
        from kata_zun.hypervisor import ramholder
        run_dir = tempfile.mkdtemp(prefix='kzj', dir='/tmp')
        self.addCleanup(shutil.rmtree, run_dir, True)
        cfg = self.useFixture(config_fixture.Config(CONF))
        cfg.config(state_path=self.state_path, group='kata')
        ram = os.path.join(run_dir, 'ram')
        with open(ram, 'wb') as f:
            f.truncate(1024 * 1024)
            f.write(b'template')
        memfd = ramholder.seal_copy(ram, 1024 * 1024)
        self.addCleanup(os.close, memfd)
        os.set_inheritable(memfd, True)
        assets = builder.find()
        jail = launch.prepare('kz-escape-clone', os.path.join(run_dir, 'j'),
                              assets.kernel, assets.initrd, 64, 0.5,
                              own_proc=True)
        self.addCleanup(jail.release)
        parent = os.getpid()

        def compromised_clone():
            jail.child_setup(parent)
            results = {}
            attempt = _attempter(results)
            rw = os.open('/proc/self/fd/%d' % memfd, os.O_RDWR)
            attempt('write the template RAM',
                    lambda: os.pwrite(rw, b'EVIL', 0))
            attempt('truncate it', lambda: os.ftruncate(rw, 0))
            attempt('grow it', lambda: os.ftruncate(rw, 1 << 30))
            attempt('lift its seals',
                    lambda: fcntl.fcntl(rw, ramholder.F_ADD_SEALS, 0))
            attempt('map it shared and writable', lambda: mmap.mmap(
                rw, 4096, mmap.MAP_SHARED, mmap.PROT_WRITE))
            attempt("read the host's init", lambda: open(
                '/proc/1/environ').close())
            attempt('read host memory figures',
                    lambda: open('/proc/meminfo').close())
            attempt('signal a host process', lambda: os.kill(parent, 0))
            results['processes seen'] = sorted(
                n for n in os.listdir('/proc') if n.isdigit()) == [
                    str(os.getpid())]
            return json.dumps(results).encode()
        code, report = forked.run(compromised_clone)
        self.assertEqual(0, code, report)
        self.assertTrue(report.startswith(b'{'), report)
        self.assertEqual({
            'write the template RAM': 'EPERM',
            'truncate it': 'EPERM',
            'grow it': 'EPERM',
            'lift its seals': 'EPERM',
            'map it shared and writable': 'EPERM',
            "read the host's init": 'ENOENT',
            'read host memory figures': 'ENOENT',
            'signal a host process': 'EPERM',
            'processes seen': True,
        }, json.loads(report))
        self.assertEqual(b'template', os.pread(memfd, 8, 0))


# A hostile guest: floods its serial console, then says READY.
FLOODING_AGENT = test_qemu_boot.OPEN_AGENT_PORT + '''

def main():
    tty = os.open('/dev/ttyS0', os.O_WRONLY | os.O_NOCTTY)
    line = b'flood ' * 170 + b'\\n'
    for _ in range(LINES):
        os.write(tty, line)
    os.write(tty, b'LAST-LINE\\n')
    # A tty write returns once the bytes are queued, not sent: wait until
    # the UART has sent them, or READY may reach the host (which then
    # kills the VM) before the last line does.
    import termios
    termios.tcdrain(tty)
    fd = open_agent_port()
    os.write(fd, b'READY\\n')
    os.read(fd, 100)
'''


class HostileConsoleTestCase(base.KataZunFunctionalTest):
    """A guest that writes to its console without end fills no disk."""

    def test_console_flood_is_capped(self):
        from kata_zun.hypervisor import base as hv_base
        from kata_zun.hypervisor.qemu import vm as qemu_vm
        cfg = self.useFixture(config_fixture.Config(CONF))
        cfg.config(state_path=self.state_path, run_path=self.run_path,
                   console_log_max_bytes=64 * 1024, group='kata')
        cfg.config(accelerator='tcg', group='kata_hypervisor')
        agent_dir = os.path.join(self.state_path, 'flood-agent')
        os.mkdir(agent_dir)
        with open(os.path.join(agent_dir, 'guest.py'), 'w') as f:
            f.write(FLOODING_AGENT.replace('LINES', '600'))   # ~600 KiB
        assets = builder.build(agent_dir=agent_dir)
        run_dir = os.path.join(self.run_path, 'flood')
        console = os.path.join(self.state_path, 'console.log')
        config = hv_base.VMConfig(
            name='kz-flood-test', vcpus=1, memory_mb=128,
            kernel=assets.kernel, initrd=assets.initrd, run_dir=run_dir,
            console_log=console)
        vm = qemu_vm.QemuHypervisor().start(config)
        self.addCleanup(vm.kill)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(vm.agent_socket)
        sock.settimeout(240)       # the serial port is slow under TCG
        data = b''
        while not data.endswith(b'\n'):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        self.assertEqual(b'READY\n', data)
        vm.kill()
        sizes = [os.path.getsize(p) for p in (console, console + '.1')]
        self.assertLessEqual(max(sizes), 64 * 1024, sizes)
        self.assertGreater(sum(sizes), 32 * 1024)    # it did flood
        with open(console, 'rb') as f:
            self.assertIn(b'LAST-LINE', f.read())
