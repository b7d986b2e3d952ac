"""Containers in real VMs, driven through the real CLI.

Every ``kz`` call is a new process: a detached container is always found
again by a CLI process other than the one that started it.
"""

import hashlib
import json
import os
import time

from kata_zun.tests.functional import base


class RunTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def test_output_and_exit_codes(self):
        r = self.kz('run', '--rm', 'busybox', 'echo', 'hello world',
                    check=0)
        self.assertEqual(b'hello world\n', r.out)
        self.kz('run', '--rm', 'busybox', 'false', check=1)
        r = self.kz('run', '--rm', 'busybox', 'sh', '-c',
                    'echo out; echo err >&2; exit 42', check=42)
        self.assertEqual(b'out\n', r.out)
        self.assertEqual(b'err\n', r.err)
        r = self.kz('run', '--rm', 'busybox', 'no-such-command', check=127)
        self.assertIn(b'executable file not found', r.err)
        # --rm left nothing behind.
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)

    def test_env_workdir_user_hostname(self):
        r = self.kz('run', '--rm', '-e', 'FOO=bar baz', '-w', '/srv/app',
                    '-u', 'app', '--hostname', 'box1', 'busybox', 'sh',
                    '-c', 'echo "$FOO"; pwd; id -u; id -g; hostname; '
                    'echo $HOME; echo $PATH', check=0)
        lines = r.text.splitlines()
        self.assertEqual(['bar baz', '/srv/app', '1000', '1000', 'box1',
                          '/home/app'], lines[:6])
        self.assertIn('/usr/bin', lines[6])
        r = self.kz('run', '--rm', '-u', '0:65534', 'busybox', 'sh', '-c',
                    'id -u; id -g', check=0)
        self.assertEqual(['0', '65534'], r.text.split())
        r = self.kz('run', '--rm', '-u', 'nosuchuser', 'busybox', 'true')
        self.assertNotEqual(0, r.code)
        self.assertIn(b'unable to find user nosuchuser', r.err)

    def test_entrypoint(self):
        r = self.kz('run', '--rm', '--entrypoint', 'echo', 'busybox',
                    'from', 'entrypoint', check=0)
        self.assertEqual(b'from entrypoint\n', r.out)

    def test_stdin(self):
        data = os.urandom(1 << 20)
        r = self.kz('run', '--rm', '-i', 'busybox', 'sha256sum',
                    input=data, check=0)
        self.assertEqual(hashlib.sha256(data).hexdigest(),
                         r.text.split()[0])

    def test_ten_megabytes_of_stdout_no_byte_lost(self):
        r = self.kz('run', '--name', 'big', 'busybox', 'sh', '-c',
                    'head -c 10000000 /dev/urandom > /tmp/blob; '
                    'sha256sum /tmp/blob >&2; cat /tmp/blob', check=0)
        self.assertEqual(10000000, len(r.out))
        digest = hashlib.sha256(r.out).hexdigest()
        self.assertEqual(digest, r.err.split()[0].decode())
        # The log kept the very same bytes.
        logs = self.kz('logs', 'big', check=0)
        self.assertEqual(digest, hashlib.sha256(logs.out).hexdigest())

    def test_memory_limit_oom_kill_is_reported(self):
        r = self.kz('run', '--name', 'oom', '--memory', '32', 'busybox',
                    'sh', '-c', 'echo filling; tail /dev/zero', check=137)
        self.assertIn(b'OOM', r.err)
        info = json.loads(self.kz('inspect', 'oom', check=0).out)[0]
        self.assertTrue(info['State']['OOMKilled'])
        self.assertEqual(137, info['State']['ExitCode'])
        self.assertEqual(32, info['Limits']['memory_mb'])

    def test_bad_input(self):
        r = self.kz('run', '--rm', '--pull', 'never', 'no-such-image',
                    'true')
        self.assertEqual(125, r.code)
        self.assertIn(b'No such image', r.err)
        r = self.kz('run', '--rm', 'no-such-image', 'true')
        self.assertEqual(125, r.code)
        self.assertIn(base.CLOSED_REGISTRY.encode(), r.err)
        r = self.kz('run', '--rm', '-e', 'NOEQUALS', 'busybox', 'true')
        self.assertEqual(125, r.code)
        self.assertIn(b'KEY=VALUE', r.err)
        r = self.kz('logs', 'nothing-here')
        self.assertEqual(1, r.code)
        self.assertIn(b'No such container', r.err)
        r = self.kz('kill', '-s', 'NOTASIGNAL', 'x')
        self.assertEqual(1, r.code)
        self.assertEqual(1, len(r.err.splitlines()))


class DetachedTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _status(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).out)[0]['State']

    def test_detach_logs_exec_stop_start_rm(self):
        cid = self.kz('run', '-d', '--name', 'web', 'busybox', 'sh', '-c',
                      'echo started; while true; do sleep 1; done',
                      check=0).text.strip()
        self.assertEqual(64, len(cid))
        ps = self.kz('ps', check=0).text
        self.assertIn('web', ps)
        self.assertIn('Up', ps)
        deadline = time.time() + 30
        while b'started' not in self.kz('logs', 'web').out:
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        r = self.kz('logs', '-t', '--tail', '1', 'web', check=0)
        self.assertRegex(r.text, r'^\d{4}-\d\d-\d\dT[\d:.]+Z started\n$')
        r = self.kz('exec', 'web', 'cat', '/etc/hostname', check=0)
        self.assertEqual(cid[:12], r.text.strip())
        self.kz('exec', 'web', 'sh', '-c', 'exit 3', check=3)
        r = self.kz('exec', '-i', 'web', 'sh', '-c', 'cat > /data.txt',
                    input=b'persisted\n', check=0)
        r = self.kz('exec', '-u', 'app', '-w', '/tmp', 'web', 'sh', '-c',
                    'id -un; pwd', check=0)
        self.assertEqual(['app', '/tmp'], r.text.split())
        top = self.kz('top', 'web', check=0).text
        self.assertIn('sleep', top)
        # sh as the namespace's PID 1 ignores SIGTERM: stop must SIGKILL.
        start = time.time()
        self.kz('stop', '-t', '1', 'web', check=0)
        self.assertLess(time.time() - start, 60)
        state = self._status('web')
        self.assertEqual('exited', state['Status'])
        self.assertEqual(137, state['ExitCode'])
        self.assertNotIn('web', self.kz('ps', check=0).text)
        self.assertIn('web', self.kz('ps', '-a', check=0).text)
        # The writable layer survives a restart of the container.
        self.kz('start', 'web', check=0)
        self.assertEqual('running', self._status('web')['Status'])
        r = self.kz('exec', 'web', 'cat', '/data.txt', check=0)
        self.assertEqual(b'persisted\n', r.out)
        self.kz('rm', 'web', check=1)           # running: refused
        self.kz('rm', '-f', 'web', check=0)
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)
        # Its sockets went with it.
        self.assertFalse(os.path.exists(os.path.join(self.run_path,
                                                     cid[:16])))

    def test_exec_streams_lose_no_byte(self):
        # An exec's stdout and stderr at full speed, with stdin fed at
        # the same time: every byte arrives, in order, on the right
        # stream, and the exit code is the process's.
        self.kz('run', '-d', '--name', 's', 'busybox', 'sleep', '600',
                check=0)
        r = self.kz('exec', 's', 'sh', '-c',
                    'head -c 30000000 /dev/urandom > /tmp/blob; '
                    'sha256sum /tmp/blob >&2; cat /tmp/blob; exit 5',
                    check=5)
        self.assertEqual(30000000, len(r.out))
        self.assertEqual(r.err.split()[0].decode(),
                         hashlib.sha256(r.out).hexdigest())
        data = os.urandom(3 << 20)
        r = self.kz('exec', '-i', 's', 'sh', '-c',
                    'tee /tmp/in; sha256sum /tmp/in >&2', input=data,
                    check=0)
        # (Digests compared: a failure message holding megabytes breaks
        # the test runner's stream.)
        digest = hashlib.sha256(data).hexdigest()
        self.assertEqual((len(data), digest),
                         (len(r.out), hashlib.sha256(r.out).hexdigest()))
        self.assertEqual(digest, r.err.split()[0].decode())

    def test_kill_pause_unpause(self):
        self.kz('run', '-d', '--name', 'p', 'busybox', 'sleep', '600',
                check=0)
        self.kz('pause', 'p', check=0)
        self.assertEqual('paused', self._status('p')['Status'])
        self.kz('unpause', 'p', check=0)
        self.assertEqual('running', self._status('p')['Status'])
        self.kz('exec', 'p', 'true', check=0)
        self.kz('kill', 'p', check=0)
        deadline = time.time() + 30
        while self._status('p')['Status'] != 'exited':
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        self.assertEqual(137, self._status('p')['ExitCode'])

    def test_name_conflict_and_image_in_use(self):
        self.kz('run', '-d', '--name', 'one', 'busybox', 'sleep', '600',
                check=0)
        r = self.kz('run', '-d', '--name', 'one', 'busybox', 'true')
        self.assertEqual(125, r.code)
        self.assertIn(b'already in use', r.err)
        r = self.kz('rmi', 'busybox')
        self.assertEqual(1, r.code)
        self.assertIn(b'used by', r.err)
        self.kz('rm', '-f', 'one', check=0)
        self.kz('rmi', 'busybox', check=0)
        self.assertNotIn('busybox', self.kz('images', check=0).text)


class MoreTestCase(base.KataZunFunctionalTest):

    def test_tty_stats_logs_follow_since(self):
        self.load_busybox()
        r = self.kz('run', '--rm', '-t', 'busybox', 'sh', '-c',
                    'tty; echo a-b', check=0)
        # A tty turns \n into \r\n, as with docker run -t.
        self.assertIn(b'/dev/pts/', r.out)
        self.assertIn(b'a-b\r\n', r.out)
        self.kz('run', '-d', '--name', 's', '--memory', '64', '--cpus',
                '0.5', 'busybox', 'sh', '-c',
                'i=0; while [ $i -lt 3 ]; do echo tick $i; i=$((i+1)); '
                'sleep 1; done', check=0)
        stats = self.kz('stats', 's', check=0).text
        self.assertRegex(stats, r'MiB / 64\.0MiB')
        # -f returns once the container has exited, with every line.
        r = self.kz('logs', '-f', 's', check=0)
        self.assertEqual(b'tick 0\ntick 1\ntick 2\n', r.out)
        self.assertEqual(b'', self.kz('logs', '--since', '1h', '--tail',
                                      '0', 's', check=0).out)
        future = str(int(time.time()) + 3600)
        self.assertEqual(b'', self.kz('logs', '--since', future, 's',
                                      check=0).out)
        self.assertEqual(b'tick 2\n',
                         self.kz('logs', '--tail', '1', 's', check=0).out)

    def test_oci_archive_and_multi_layer_whiteouts(self):
        from kata_zun.image import busybox
        path = os.path.join(self.state_path, 'oci.tar')
        busybox.write_oci_archive(
            path, image_name='layered:v1',
            extra_files={'etc/gone.txt': b'x', 'opt/old/a': b'1'},
            layers=[[('etc/gone.txt', 'whiteout'),
                     ('opt/old', 'opaque'),
                     ('opt/old/new', 'file', b'2')]],
            config_overrides={'Cmd': ['sh', '-c', 'ls /opt/old; '
                                      'test ! -e /etc/gone.txt && echo ok'],
                              'WorkingDir': '/opt'})
        self.kz('load', '-i', path, check=0)
        r = self.kz('run', '--rm', 'layered:v1', check=0)
        self.assertEqual(b'new\nok\n', r.out)

    def test_malicious_archive_rejected_and_nothing_written(self):
        from kata_zun.image import busybox
        outside = os.path.join(self.state_path, 'outside')
        os.mkdir(outside)
        for i, entries in enumerate((
                [('../../outside/evil', 'file', b'x')],
                [('escape', 'symlink', outside),
                 ('escape/pwned', 'file', b'x')])):
            path = os.path.join(self.state_path, 'evil%d.tar' % i)
            busybox.write_docker_archive(path, repo_tags=('evil:%d' % i,),
                                         layers=[entries])
            r = self.kz('load', '-i', path)
            self.assertEqual(1, r.code, r)
            self.assertIn(b'Unsafe layer member', r.err)
            self.assertEqual([], os.listdir(outside))
        self.assertNotIn('evil', self.kz('images', check=0).text)

    def test_check(self):
        r = self.kz('check', check=0)
        self.assertIn(b'capable of running', r.out)


class ArchiveTestCase(base.KataZunFunctionalTest):

    def test_copy_in_and_out(self):
        import io
        import tarfile
        self.load_busybox()
        self.kz('run', '-d', '--name', 'a', 'busybox', 'sh', '-c',
                'mkdir -p /srv/in; ln -s / /srv/root-link; '
                'ln -s /etc/passwd /srv/pw; sleep 600', check=0)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as tar:
            data = b'payload\n' * 1000
            info = tarfile.TarInfo('dir/file.txt')
            info.size = len(data)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
        deadline = time.time() + 30
        while self.kz('exec', 'a', 'test', '-L', '/srv/pw').code != 0:
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        self.kz('cp', '-', 'a:/srv/in', input=buf.getvalue(), check=0)
        r = self.kz('exec', 'a', 'sh', '-c',
                    'stat -c %a /srv/in/dir/file.txt; '
                    'md5sum < /srv/in/dir/file.txt', check=0)
        self.assertEqual('640', r.text.split()[0])
        self.assertEqual(hashlib.md5(data).hexdigest(), r.text.split()[1])
        # Out again, as a tar stream.
        r = self.kz('cp', 'a:/srv/in/dir', '-', check=0)
        with tarfile.open(fileobj=io.BytesIO(r.out)) as tar:
            self.assertEqual(data, tar.extractfile('dir/file.txt').read())
        # A symlink to / in the path resolves to the container's root,
        # never to the guest's.
        r = self.kz('cp', 'a:/srv/root-link/srv/in/dir/file.txt', '-',
                    check=0)
        with tarfile.open(fileobj=io.BytesIO(r.out)) as tar:
            self.assertEqual(['file.txt'], tar.getnames())
            self.assertEqual(data, tar.extractfile('file.txt').read())
        r = self.kz('cp', 'a:/srv/root-link/init', '-')
        self.assertEqual(1, r.code)     # the guest's /init is out of reach
        # An archive member that climbs out is refused.
        evil = io.BytesIO()
        with tarfile.open(fileobj=evil, mode='w') as tar:
            info = tarfile.TarInfo('../../escape')
            info.size = 1
            tar.addfile(info, io.BytesIO(b'x'))
        r = self.kz('cp', '-', 'a:/srv/in', input=evil.getvalue())
        self.assertEqual(1, r.code)
        self.assertIn(b'refusing archive member', r.err)
        self.kz('exec', 'a', 'test', '!', '-e', '/escape', check=0)
        r = self.kz('cp', 'a:/no/such/file', '-')
        self.assertEqual(1, r.code)
        self.assertIn(b'no such file', r.err)


class RestartPolicyTestCase(base.KataZunFunctionalTest):

    def _state(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).out)[0]['State']

    def _wait_exited(self, ref, timeout=60):
        deadline = time.time() + timeout
        while self._state(ref)['Status'] != 'exited':
            self.assertLess(time.time(), deadline)
            time.sleep(0.3)
        return self._state(ref)

    def test_on_failure_restarts_in_the_same_vm(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'r', '--restart', 'on-failure:2',
                'busybox', 'sh', '-c', 'echo run; echo x >> /count; '
                'exit 3', check=0)
        state = self._wait_exited('r')
        self.assertEqual(3, state['ExitCode'])
        self.assertEqual(2, state['RestartCount'])
        self.assertEqual(b'run\nrun\nrun\n',
                         self.kz('logs', 'r', check=0).out)
        # Success ends on-failure at once.
        self.kz('run', '-d', '--name', 'ok', '--restart', 'on-failure',
                'busybox', 'true', check=0)
        self.assertEqual(0, self._wait_exited('ok')['RestartCount'])

    def test_exec_joins_the_restarted_process(self):
        # The agent keeps what an exec joins (namespaces, root, cgroup)
        # per main process: after a restart in the same VM an exec must
        # land in the new process's namespaces, not the dead ones.
        self.load_busybox()
        self.kz('run', '-d', '--name', 'x', '--restart', 'on-failure:1',
                'busybox', 'sh', '-c',
                'if [ -e /second ]; then exec sleep 600; fi; touch /second; '
                'while [ ! -e /go ]; do sleep 0.1; done; exit 1', check=0)

        def init_started():
            # Field 22 of /proc/1/stat: when the PID namespace's init
            # started (clock ticks since boot).
            out = self.kz('exec', 'x', 'cat', '/proc/1/stat', check=0).out
            return out.split()[21]
        first = init_started()
        self.kz('exec', 'x', 'touch', '/go', check=0)
        deadline = time.time() + 60
        while True:
            state = self._state('x')
            if state['RestartCount'] == 1 and state['Status'] == 'running':
                break
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        second = init_started()
        self.assertNotEqual(first, second)
        self.assertEqual(b'sleep 600', self.kz(
            'exec', 'x', 'sh', '-c', 'tr "\\0" " " < /proc/1/cmdline',
            check=0).out.strip())
        self.kz('rm', '-f', 'x', check=0)

    def test_always_until_stopped(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'a', '--restart', 'always',
                'busybox', 'sh', '-c', 'echo tick; sleep 0.3', check=0)
        deadline = time.time() + 60
        while self._state('a')['RestartCount'] < 2:
            self.assertLess(time.time(), deadline)
            time.sleep(0.3)
        self.kz('stop', '-t', '1', 'a', check=0)
        state = self._state('a')
        self.assertEqual('exited', state['Status'])
        count = state['RestartCount']
        time.sleep(1)
        self.assertEqual(count, self._state('a')['RestartCount'])
        r = self.kz('run', '--rm', '--restart', 'always', 'busybox', 'true')
        self.assertEqual(125, r.code)
        r = self.kz('run', '--restart', 'sometimes', 'busybox', 'true')
        self.assertEqual(125, r.code)
        self.assertIn(b'invalid restart policy', r.err)


class OrphanTestCase(base.KataZunFunctionalTest):

    def test_vm_stops_when_its_record_is_deleted(self):
        import shutil
        import subprocess
        self.load_busybox()
        cid = self.kz('run', '-d', 'busybox', 'sleep', '600',
                      check=0).text.strip()
        info = json.loads(self.kz('inspect', cid, check=0).out)[0]
        vm_pid = info['State']['VMPid']
        self.assertTrue(os.path.exists('/proc/%d' % vm_pid))
        shutil.rmtree(os.path.join(self.state_path, 'containers', cid))
        deadline = time.time() + 30
        while subprocess.run(['pgrep', '-f', 'kata_zun.cmd.shim.*%s' % cid],
                             capture_output=True).returncode == 0:
            self.assertLess(time.time(), deadline)
            time.sleep(0.5)
        try:
            with open('/proc/%d/cmdline' % vm_pid, 'rb') as f:
                cmdline = f.read()
        except OSError:
            cmdline = b''
        self.assertNotIn(b'qemu', cmdline)      # the VM went with it


class HealthCheckTestCase(base.KataZunFunctionalTest):

    def _health(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).out)[0][
            'State']['Health']

    def _wait_health(self, ref, want, timeout=60):
        deadline = time.time() + timeout
        while True:
            health = self._health(ref)
            if health['Status'] == want:
                return health
            self.assertLess(time.time(), deadline, health)
            time.sleep(0.3)

    def test_starting_healthy_unhealthy_and_timeout(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'h', '--health-cmd',
                'echo probing; test -e /tmp/ok', '--health-interval', '0.5',
                '--health-retries', '2', '--health-start-period', '600',
                'busybox', 'sleep', '600', check=0)
        # Failures in the start period do not count: starting until the
        # first pass.
        health = self._health('h')
        self.assertEqual('starting', health['Status'])
        self.assertIn('(health: starting)', self.kz('ps', check=0).text)
        self.kz('exec', 'h', 'touch', '/tmp/ok', check=0)
        health = self._wait_health('h', 'healthy')
        self.assertEqual(0, health['Log'][-1]['ExitCode'])
        self.assertEqual('probing\n', health['Log'][-1]['Output'])
        self.assertIn('(healthy)', self.kz('ps', check=0).text)
        self.kz('exec', 'h', 'rm', '/tmp/ok', check=0)
        health = self._wait_health('h', 'unhealthy')
        self.assertGreaterEqual(health['FailingStreak'], 2)
        self.assertEqual(1, health['Log'][-1]['ExitCode'])
        self.assertLessEqual(len(health['Log']), 5)
        # Checks pause with the container and resume after.
        self.kz('pause', 'h', check=0)
        self.kz('unpause', 'h', check=0)
        self.kz('exec', 'h', 'touch', '/tmp/ok', check=0)
        self._wait_health('h', 'healthy')

        # A check that hangs is killed at its timeout and fails.
        self.kz('run', '-d', '--name', 't', '--health-cmd', 'sleep 30',
                '--health-interval', '0.5', '--health-timeout', '0.5',
                '--health-retries', '1', 'busybox', 'sleep', '600', check=0)
        health = self._wait_health('t', 'unhealthy')
        self.assertIsNone(health['Log'][-1]['ExitCode'])
        self.assertIn('timed out', health['Log'][-1]['Output'])
        r = self.kz('exec', 't', 'sh', '-c', 'ps | grep -c "[s]leep 30"')
        self.assertLessEqual(int(r.text.strip() or 0), 1, r)

        r = self.kz('run', '--health-cmd', 'true', '--health-interval',
                    '0.01', 'busybox', 'true')
        self.assertEqual(125, r.code)
        self.assertIn(b'healthcheck: interval', r.err)


class HostRestartTestCase(base.KataZunFunctionalTest):
    """A host restart, as the records see it: the shim and the VM are
    gone and the host has a new boot id.
    """

    def test_lost_to_a_host_restart_then_started_again(self):
        import os
        import signal

        from kata_zun.runtime import fileutils
        self.load_busybox()
        cid = self.kz('run', '-d', '--restart', 'always', 'busybox', 'sh',
                      '-c', 'echo up; sleep 600', check=0).text.strip()
        state = json.loads(self.kz('inspect', cid, check=0).out)[0]['State']
        os.kill(state['ShimPid'], signal.SIGKILL)
        deadline = time.time() + 30
        while os.path.exists('/proc/%d' % state['VMPid']):
            self.assertLess(time.time(), deadline)    # PDEATHSIG
            time.sleep(0.1)
        path = os.path.join(self.state_path, 'containers', cid,
                            'state.json')
        record = fileutils.read_json(path)
        self.assertEqual(fileutils.boot_id(), record['boot_id'])
        # Same boot: a crash of the shim.
        state = json.loads(self.kz('inspect', cid, check=0).out)[0]['State']
        self.assertEqual(('exited', 255), (state['Status'],
                                           state['ExitCode']))
        self.assertIn('shim died', state['Error'])
        record['boot_id'] = 'a-boot-before-this-one'
        fileutils.write_json(path, record)
        state = json.loads(self.kz('inspect', cid, check=0).out)[0]['State']
        self.assertEqual('the host restarted while the container ran',
                         state['Error'])
        self.assertIn('[the host restarted', self.kz('ps', '-a',
                                                     check=0).text)
        self.kz('start', cid, check=0)
        r = self.kz('exec', cid, 'echo', 'back', check=0)
        self.assertEqual(b'back\n', r.out)
        state = json.loads(self.kz('inspect', cid, check=0).out)[0]['State']
        self.assertEqual(('running', None), (state['Status'],
                                             state['Error']))


class DockerVerbsTestCase(base.KataZunFunctionalTest):
    """create, wait, restart, rename, port, tag, version and info."""

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _state(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).out)[0]['State']

    def test_create_start_wait(self):
        cid = self.kz('create', '--name', 'c1', 'busybox', 'sh', '-c',
                      'echo ran; exit 3', check=0).text.strip()
        self.assertRegex(cid, r'^[0-9a-f]{64}$')
        self.assertEqual('created', self._state('c1')['Status'])
        self.assertIn('Created', self.kz('ps', '-a', check=0).text)
        # Never started: nothing to wait for.
        self.assertEqual('0\n', self.kz('wait', 'c1', check=0).text)
        r = self.kz('create', '--pull', 'never', 'no-such-image', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'No such image', r.err)
        self.kz('create', '--name', 'c1', 'busybox', 'true', check=125)

        self.kz('start', 'c1', check=0)
        self.assertEqual('3\n', self.kz('wait', 'c1', check=0).text)
        self.assertEqual(b'ran\n', self.kz('logs', 'c1', check=0).out)
        # Waiting for a running container blocks until it exits; several
        # containers: one code each, and an unknown one fails the verb.
        self.kz('run', '-d', '--name', 'w', 'busybox', 'sh', '-c',
                'sleep 2; exit 5', check=0)
        r = self.kz('wait', 'w', 'c1', 'nope', check=1)
        self.assertEqual('5\n3\n', r.text)
        self.assertIn(b'No such container: nope', r.err)
        self.kz('run', '-d', '--name', 'k', 'busybox', 'sleep', '600',
                check=0)
        self.kz('kill', 'k', check=0)
        self.assertEqual('137\n', self.kz('wait', 'k', check=0).text)

    def test_restart_and_rename(self):
        self.kz('run', '-d', '--name', 'one', 'busybox', 'sh', '-c',
                'date +%s%N > /started; sleep 600', check=0)
        self.kz('create', '--name', 'two', 'busybox', 'true', check=0)
        r = self.kz('rename', 'one', 'two', check=1)
        self.assertIn(b"Conflict. The container name 'two' is already in "
                      b"use by container", r.err)
        r = self.kz('rename', 'one', 'bad/name', check=1)
        self.assertIn(b'invalid container name', r.err)
        # A running container is renamed in place.
        self.kz('rename', 'one', 'three', check=0)
        self.assertEqual('running', self._state('three')['Status'])
        self.kz('exec', 'three', 'true', check=0)
        self.kz('inspect', 'one', check=1)

        first = self.kz('exec', 'three', 'cat', '/started', check=0).out
        self.kz('exec', 'three', 'touch', '/kept', check=0)
        r = self.kz('restart', '-t', '0', 'three', check=0)
        self.assertEqual('three\n', r.text)
        self.assertEqual('running', self._state('three')['Status'])
        deadline = time.time() + 30
        while True:
            again = self.kz('exec', 'three', 'cat', '/started').out
            if again and again != first:
                break
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        self.kz('exec', 'three', 'test', '-f', '/kept', check=0)
        # A stopped container is just started.
        self.kz('restart', 'two', check=0)
        self.assertEqual('0\n', self.kz('wait', 'two', check=0).text)

    def test_restart_keeps_an_auto_remove_container(self):
        self.kz('run', '-d', '--rm', '--name', 'tmp', 'busybox', 'sleep',
                '600', check=0)
        self.kz('restart', '-t', '0', 'tmp', check=0)
        self.assertEqual('running', self._state('tmp')['Status'])
        self.kz('stop', '-t', '0', 'tmp', check=0)
        # Removed once it stops for good.
        deadline = time.time() + 30
        while self.kz('ps', '-a', '-q', check=0).text.strip():
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)

    def test_port_tag_version_info(self):
        self.kz('run', '-d', '--name', 'p', 'busybox', 'sleep', '600',
                check=0)
        # network none: nothing published.
        self.assertEqual(b'', self.kz('port', 'p', check=0).out)
        r = self.kz('port', 'p', '80', check=1)
        self.assertIn(b"No public port '80/tcp' published for p", r.err)
        self.kz('port', 'p', '80/icmp', check=1)

        self.assertEqual(b'', self.kz('tag', 'busybox', 'mine:1',
                                      check=0).out)
        images = self.kz('images', check=0).text
        self.assertRegex(images, r'(?m)^mine\s+1\s')
        self.assertIn(b'No such image', self.kz('tag', 'nope', 'x',
                                                check=1).err)
        self.assertIn(b'Invalid image reference',
                      self.kz('tag', 'busybox', 'UPPER:case', check=1).err)
        self.kz('run', '--rm', 'mine:1', 'true', check=0)

        r = self.kz('version', check=0).text
        self.assertIn('Client: kata-zun', r)
        self.assertRegex(r, r' QEMU: QEMU emulator version \d')
        self.assertNotIn('not built', r)
        r = self.kz('info', check=0).text
        self.assertTrue(r.startswith('Containers: 1\n Running: 1\n'
                                     ' Paused: 0\n Stopped: 0\n'), r)
        self.assertIn('Images: 1\n', r)
        self.assertIn('Root Dir: %s\n' % self.state_path, r)
