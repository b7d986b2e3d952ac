"""Hostile container code against the guest boundary, in real VMs.

A default container gets what Docker gives one: its default capability
set, no_new_privs, a seccomp filter refusing what reaches the kernel's
shared state, masked and read-only /proc and /sys paths, its own cgroup
namespace and a pids limit. A privileged container gets everything inside
its VM, and still no host device. Every exec (health checks included)
runs under the same rules as the container.
"""

import json
import os
import time

import fixtures

from kata_zun.tests.functional import base
from kata_zun.tests.functional import test_zun_e2e
from kata_zun.tests.functional import zun_env

DOCKER_DEFAULT_CAPS = '00000000a80425fb'
STATUS_FIELDS = ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb',
                 'NoNewPrivs', 'Seccomp')
SHOW_STATUS = 'grep -E "^(%s):" /proc/self/status' % '|'.join(STATUS_FIELDS)
# Each line: "<name> <exit code> <first line of output>".
PROBES = (
    ('mount', 'mkdir -p /mnt; mount -t tmpfs none /mnt'),
    ('unshare_user', 'unshare -U true'),
    ('unshare_mount', 'unshare -m true'),
    ('setns', 'nsenter -t 1 -u true'),
    ('settime', 'date -s "2001-01-01 00:00:00"'),
    ('syslog', 'dmesg'),
    ('module', 'rmmod no_such_module'),
    ('sysctl', 'echo 1 > /proc/sys/vm/drop_caches'),
    ('sysrq', 'echo h > /proc/sysrq-trigger'),
    ('kcore', 'head -c 16 /proc/kcore | wc -c'),
    ('linux32', 'linux32 true'),
    # CAP_MKNOD makes a node for the VM's disk; opening it is refused.
    ('disk', 'set -- $(grep -w vda /proc/partitions); '
             'mknod /tmp/disk b $1 $2 && head -c 512 /tmp/disk | wc -c'),
)


def probe_script():
    lines = []
    for name, cmd in PROBES:
        lines.append('out=$( (%s) 2>&1 ); rc=$?; '
                     'echo "%s $rc $(echo "$out" | head -n 1)"' % (cmd, name))
    return '\n'.join(lines)


def parse_status(text):
    status = {}
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep and key in STATUS_FIELDS:
            status[key] = value.strip()
    return status


def parse_probes(text):
    results = {}
    for line in text.splitlines():
        parts = line.split(' ', 2)
        if len(parts) >= 2 and parts[0] in dict(PROBES):
            results[parts[0]] = (int(parts[1]),
                                 parts[2] if len(parts) > 2 else '')
    return results


def mount_points(mountinfo):
    return {line.split()[4]: line.split()[5]
            for line in mountinfo.splitlines() if len(line.split()) > 5}


class DefaultContainerTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def test_docker_defaults_for_the_main_process(self):
        r = self.kz('run', '--rm', 'busybox', 'sh', '-c',
                    SHOW_STATUS + '; echo ---; cat /proc/self/cgroup; '
                    'echo ---; cat /proc/self/mountinfo', check=0)
        status_text, cgroup, mountinfo = r.text.split('---\n')
        status = parse_status(status_text)
        self.assertEqual({'CapInh': '0000000000000000',
                          'CapPrm': DOCKER_DEFAULT_CAPS,
                          'CapEff': DOCKER_DEFAULT_CAPS,
                          'CapBnd': DOCKER_DEFAULT_CAPS,
                          'CapAmb': '0000000000000000',
                          'NoNewPrivs': '1', 'Seccomp': '2'}, status, r)
        # Its own cgroup namespace: its cgroup is its root.
        self.assertEqual('0::/\n', cgroup)
        points = mount_points(mountinfo)
        # (Those this guest kernel has: /proc/sched_debug, for one, needs
        # CONFIG_SCHED_DEBUG.)
        for path in ('/proc/kcore', '/proc/keys', '/proc/timer_list',
                     '/proc/acpi', '/sys/firmware'):
            self.assertIn(path, points, mountinfo)
        for path in ('/proc/sys', '/proc/sysrq-trigger', '/proc/irq',
                     '/proc/bus', '/proc/fs', '/sys'):
            self.assertIn(path, points, mountinfo)
            self.assertTrue(points[path].split(',')[0] == 'ro',
                            (path, mountinfo))
        # A user other than root has no capabilities at all.
        r = self.kz('run', '--rm', '-u', 'app', 'busybox', 'sh', '-c',
                    SHOW_STATUS, check=0)
        status = parse_status(r.text)
        self.assertEqual('0000000000000000', status['CapEff'])
        self.assertEqual('0000000000000000', status['CapPrm'])
        self.assertEqual(DOCKER_DEFAULT_CAPS, status['CapBnd'])
        self.assertEqual('2', status['Seccomp'])

    def test_kernel_state_is_out_of_reach(self):
        r = self.kz('run', '--rm', 'busybox', 'sh', '-c', probe_script(),
                    check=0)
        results = parse_probes(r.text)
        self.assertEqual(sorted(dict(PROBES)), sorted(results), r)
        # (busybox date exits 0 when it cannot set the clock.)
        for name in ('mount', 'unshare_user', 'unshare_mount', 'setns',
                     'syslog', 'module', 'sysctl', 'sysrq'):
            self.assertNotEqual(0, results[name][0], (name, results))
        # Refused by the filter (or the capability set): EPERM, and for
        # the module not "no such module", which is what the kernel says
        # to a process allowed to ask. busybox mount words EPERM as
        # "permission denied".
        self.assertIn('permission denied', results['mount'][1], results)
        for name in ('unshare_user', 'unshare_mount', 'setns', 'settime',
                     'syslog', 'module'):
            self.assertIn('not permitted', results[name][1],
                          (name, results))
        for name in ('sysctl', 'sysrq'):
            self.assertIn('Read-only', results[name][1], (name, results))
        self.assertEqual((0, '0'), results['kcore'])
        # personality(PER_LINUX32) is one of the allowed values.
        self.assertEqual(0, results['linux32'][0], results)
        self.assertIn('not permitted', results['disk'][1], results)

    def test_exec_and_health_checks_are_confined_too(self):
        check = ('grep -q "^Seccomp:.2" /proc/self/status && '
                 'grep -q "^CapEff:.%s" /proc/self/status && '
                 'grep -q "^NoNewPrivs:.1" /proc/self/status' %
                 DOCKER_DEFAULT_CAPS)
        self.kz('run', '-d', '--name', 'c', '--health-cmd', check,
                '--health-interval', '0.5', 'busybox', 'sleep', '600',
                check=0)
        r = self.kz('exec', 'c', 'sh', '-c',
                    SHOW_STATUS + '; cat /proc/self/cgroup', check=0)
        status = parse_status(r.text)
        self.assertEqual(DOCKER_DEFAULT_CAPS, status['CapEff'], r)
        self.assertEqual(DOCKER_DEFAULT_CAPS, status['CapBnd'], r)
        self.assertEqual('1', status['NoNewPrivs'], r)
        self.assertEqual('2', status['Seccomp'], r)
        self.assertIn('0::/', r.text)
        r = self.kz('exec', 'c', 'head', '-c', '1', '/dev/zero', check=0)
        self.assertEqual(b'\0', r.out)
        r = self.kz('exec', 'c', 'unshare', '-U', 'true')
        self.assertNotEqual(0, r.code, r)
        self.assertIn(b'not permitted', r.err)
        deadline = time.time() + 90
        while True:
            info = json.loads(self.kz('inspect', 'c', check=0).out)[0]
            health = info['State']['Health']
            if health['Status'] != 'starting':
                break
            self.assertLess(time.time(), deadline, health)
            time.sleep(0.5)
        self.assertEqual('healthy', health['Status'], health)

    def test_exec_is_confined_exactly_like_the_main_process(self):
        # An exec is made on its own path (one clone into the running
        # container): it must end up with everything its main process
        # has, namespace for namespace, and nothing more.
        self.kz('run', '-d', '--name', 'same', 'busybox', 'sleep', '600',
                check=0)
        fields = STATUS_FIELDS + ('Seccomp_filters', 'Uid', 'Gid',
                                  'Groups')
        show = ('for p in 1 self; do grep -E "^(%s):" /proc/$p/status; '
                'for ns in cgroup ipc mnt net pid pid_for_children uts; '
                'do echo "$ns: $(readlink /proc/$p/ns/$ns)"; done; '
                'echo "cgroup: $(cat /proc/$p/cgroup)"; '
                'echo "root: $(readlink /proc/$p/root)"; echo ---; done'
                % '|'.join(fields))
        r = self.kz('exec', 'same', 'sh', '-c', show, check=0)
        main, exec_ = [dict(line.split(':', 1) for line in part.splitlines()
                            if ':' in line)
                       for part in r.text.split('---\n')[:2]]
        for key in fields + ('cgroup', 'ipc', 'mnt', 'net', 'pid',
                             'pid_for_children', 'uts', 'root'):
            self.assertIn(key, main, r)
        self.assertEqual(main, exec_, r)
        self.assertEqual(DOCKER_DEFAULT_CAPS, exec_['CapEff'].strip(), r)
        self.assertEqual('1', exec_['NoNewPrivs'].strip(), r)
        self.assertEqual('2', exec_['Seccomp'].strip(), r)
        self.assertEqual('1', exec_['Seccomp_filters'].strip(), r)
        self.assertEqual('0::/', exec_['cgroup'].strip(), r)
        # The device program holds for an exec: a node of the VM's disk
        # can be made (CAP_MKNOD) but not opened.
        r = self.kz('exec', 'same', 'sh', '-c',
                    'set -- $(grep -w vda /proc/partitions); '
                    'mknod /tmp/disk b $1 $2 && head -c 512 /tmp/disk')
        self.assertNotEqual(0, r.code, r)
        self.assertEqual(b'', r.out)
        self.assertIn(b'not permitted', r.err)
        # Exit codes and exec errors are the container runtime's.
        self.kz('exec', 'same', 'sh', '-c', 'exit 7', check=7)
        r = self.kz('exec', 'same', 'no-such-command')
        self.assertEqual(127, r.code, r)
        self.assertIn(b'executable file not found', r.err)
        r = self.kz('exec', 'same', '/etc/hostname')
        self.assertEqual(126, r.code, r)
        r = self.kz('exec', '-w', '/no/such/dir', 'same', 'true')
        self.assertEqual(0, r.code, r)

    def test_process_flood_stops_at_the_pids_limit(self):
        # The main process reaps what is left to it (PID 1 of the
        # container): sleepers orphaned by the exec below do not stay
        # zombies holding the limit.
        self.kz('run', '-d', '--name', 'f', '--pids-limit', '24',
                'busybox', 'sh', '-c', 'sleep 600 & wait', check=0)
        info = json.loads(self.kz('inspect', 'f', check=0).out)[0]
        self.assertEqual(24, info['Limits']['pids_limit'])
        # Forks until the kernel says no: 200 sleepers asked for, the
        # cgroup holds 24 processes at most.
        r = self.kz('exec', 'f', 'sh', '-c',
                    'i=0; while [ $i -lt 200 ]; do sleep 40 & '
                    'i=$((i+1)); done; echo all started')
        self.assertNotEqual(0, r.code, r)
        self.assertNotIn(b'all started', r.out)
        self.assertIn(b'fork', r.err.lower())
        # The agent answers while the container is at its limit.
        stats = self.kz('stats', 'f', check=0).text
        pids = int(stats.splitlines()[1].split()[-1])
        self.assertLessEqual(pids, 24, stats)
        self.assertGreater(pids, 10, stats)
        top = self.kz('top', 'f', check=0).text
        self.assertLessEqual(top.count('sleep 40'), 24, top)
        self.assertGreater(top.count('sleep 40'), 10, top)
        # Once the sleepers are gone, exec works again.
        deadline = time.time() + 120
        while True:
            r = self.kz('exec', 'f', 'echo', 'alive')
            if r.code == 0:
                break
            self.assertLess(time.time(), deadline, r)
            time.sleep(1)
        self.assertEqual(b'alive\n', r.out)
        r = self.kz('run', '--rm', '--pids-limit', '-1', 'busybox', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'pids limit', r.err)


class PrivilegedContainerTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def test_everything_inside_the_vm_nothing_of_the_host(self):
        r = self.kz('run', '--rm', '--privileged', 'busybox', 'sh', '-c',
                    SHOW_STATUS + '; echo ---; '
                    'cat /proc/sys/kernel/cap_last_cap; echo ---; '
                    'mkdir -p /mnt; mount -t tmpfs none /mnt && '
                    'echo hi > /mnt/x && '
                    'cat /mnt/x; head -c 16 /proc/kcore | wc -c; '
                    'grep " /sys " /proc/self/mounts; '
                    'set -- $(grep -w vda /proc/partitions); '
                    'mknod /tmp/disk b $1 $2 && '
                    'head -c 512 /tmp/disk | wc -c; echo ---; ls /dev',
                    check=0)
        status_text, last_cap, rest, dev = r.text.split('---\n')
        full = '%016x' % ((1 << (int(last_cap) + 1)) - 1)
        status = parse_status(status_text)
        self.assertEqual({'CapInh': '0000000000000000', 'CapPrm': full,
                          'CapEff': full, 'CapBnd': full,
                          'CapAmb': '0000000000000000',
                          'NoNewPrivs': '0', 'Seccomp': '0'}, status, r)
        lines = rest.splitlines()
        self.assertEqual(['hi', '16'], lines[:2], r)
        self.assertIn(' rw,', lines[2])
        # Every device of its VM (here the image's disk) is its own.
        self.assertEqual('512', lines[3], r)
        # No device of the guest (let alone of the host) shows up.
        self.assertEqual(sorted(['fd', 'full', 'null', 'ptmx', 'pts',
                                 'random', 'shm', 'stderr', 'stdin',
                                 'stdout', 'tty', 'urandom', 'zero']),
                         sorted(dev.split()))

    def test_exec_into_a_privileged_container_is_privileged(self):
        self.kz('run', '-d', '--privileged', '--name', 'p', 'busybox',
                'sleep', '600', check=0)
        info = json.loads(self.kz('inspect', 'p', check=0).out)[0]
        self.assertTrue(info['Config']['privileged'])
        r = self.kz('exec', 'p', 'sh', '-c',
                    SHOW_STATUS + '; mkdir -p /mnt; '
                    'mount -t tmpfs none /mnt && '
                    'echo mounted', check=0)
        status = parse_status(r.text)
        self.assertEqual('0', status['Seccomp'], r)
        self.assertEqual(status['CapBnd'], status['CapEff'], r)
        self.assertIn('mounted', r.text)


class ZunPrivilegedTestCase(test_zun_e2e.ZunEndToEndBase):
    """Zun's privileged field reaches the guest (the driver refused it)."""

    def setUp(self):
        # Zun denies privileged containers to everybody by default; an
        # operator of kata-zun opens it (here to admins) in zun's policy.
        policy = os.path.join(self.useFixture(fixtures.TempDir()).path,
                              'policy.yaml')
        with open(policy, 'w') as f:
            f.write('"container:create:privileged": '
                    '"rule:context_is_admin"\n')
        real = zun_env.ZunEnvironment

        def with_policy(*args, **kwargs):
            extra = dict(kwargs.get('extra_conf') or {})
            extra['oslo_policy'] = {'policy_file': policy}
            kwargs['extra_conf'] = extra
            return real(*args, **kwargs)
        self.useFixture(fixtures.MockPatchObject(
            zun_env, 'ZunEnvironment', side_effect=with_policy))
        super().setUp()

    def test_privileged_and_default_through_zun(self):
        for name, extra in (('priv', ['--privileged']), ('plain', [])):
            self.os('appcontainer', 'run', '--name', name,
                    '--image-pull-policy', 'ifnotpresent', *extra,
                    'busybox', 'sleep', '600')
        for name in ('priv', 'plain'):
            self.wait_status(name, ('Running',))
        status = {}
        for name in ('priv', 'plain'):
            # (zun passes exec a command line, not argv: keep it plain)
            out = self.os('appcontainer', 'exec', name, 'cat',
                          '/proc/self/status')[1]
            status[name] = parse_status(out)
        self.assertEqual('0', status['priv']['Seccomp'], status)
        self.assertEqual(status['priv']['CapBnd'],
                         status['priv']['CapEff'], status)
        self.assertEqual('2', status['plain']['Seccomp'], status)
        self.assertEqual(DOCKER_DEFAULT_CAPS, status['plain']['CapEff'],
                         status)
        self.os('appcontainer', 'exec', 'priv', 'mount', '-t', 'tmpfs',
                'none', '/tmp')
        code, _out, _err = self.os('appcontainer', 'exec', 'plain', 'mount',
                                   '-t', 'tmpfs', 'none', '/tmp',
                                   check=False)
        self.assertNotEqual(0, code)
        for name in ('priv', 'plain'):
            self.os('appcontainer', 'delete', '--force', name)
