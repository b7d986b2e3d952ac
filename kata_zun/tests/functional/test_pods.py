"""Pods in real VMs, driven through the real CLI: one VM, several
containers, Zun's capsule template (``kata-zun play``).
"""

import json
import os
import signal
import subprocess
import sys
import time

from kata_zun.hypervisor import base as hv_base
from kata_zun.runtime import faultpoint
from kata_zun.tests.functional import base

# The capsule of issue 13: an init container writes into a shared
# volume, a server serves over HTTP, a client fetches from it over
# localhost; both read what the init container wrote.
WEB = """
kind: capsule
capsuleVersion: beta
metadata:
  name: %(name)s
  labels:
    app: web
spec:
  restartPolicy: Always
  initContainers:
  - name: init
    image: busybox
    command: [sh, -c]
    args: ["date +%%s.%%N > /data/init.txt; echo init-done"]
    volumeMounts:
    - name: shared
      mountPath: /data
  containers:
  - name: server
    image: busybox
    command: [sh, -c]
    args: ["mkdir -p /www && echo hello-from-server > /www/index.html &&
            echo server-read-$(cat /data/init.txt) &&
            exec httpd -f -p 8080 -h /www"]
    resources:
      requests:
        memory: 64
        cpu: 0.5
    volumeMounts:
    - name: shared
      mountPath: /data
  - name: client
    image: busybox
    command: [sh, -c]
    args: ["echo client-read-$(cat /data/init.txt);
            until wget -q -O - http://localhost:8080/; do sleep 0.2; done;
            exec sleep 100000"]
    env:
      ROLE: client
    volumeMounts:
    - name: shared
      mountPath: /data
      readOnly: true
  volumes:
  - name: shared
    cinder:
      size: 1
"""

FAILING_INIT = """
kind: capsule
metadata:
  name: failing
spec:
  # Never: the failing init container is not retried (see the pod
  # shim's INIT_RETRIES for the other policies).
  restartPolicy: Never
  initContainers:
  - name: ok
    image: busybox
    command: ["true"]
  - name: setup
    image: busybox
    command: [sh, -c, "echo cannot set up >&2; exit 3"]
  containers:
  - name: app
    image: busybox
    command: [sleep, "1000"]
"""


def pod_leaks(state_path, run_path, pod_id, member_ids):
    """:returns: what is left of a removed pod: processes, its run and
        state directories, its members' records, cgroups, links.
    """
    left = []
    vm = hv_base.vm_name(pod_id).encode()
    run_dir = os.path.join(run_path, pod_id[:16])
    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read()
        except OSError:
            continue
        if (pod_id.encode() in cmd or vm in cmd) and \
                b'kata_zun.cmd.cli' not in cmd:
            left.append('process %s %r' % (pid, cmd[:100]))
    for path in [run_dir, os.path.join(state_path, 'pods',
                                       pod_id)] + [
            os.path.join(state_path, 'containers', cid)
            for cid in member_ids]:
        if os.path.lexists(path):
            left.append(path)
    try:
        from kata_zun.jail import cgroup
        group = cgroup.for_sandbox('kata_zun', vm.decode())
        left += [d for d in group.directories() if os.path.isdir(d)]
    except Exception as exc:
        left.append('cgroups not checked: %s' % exc)
    out = subprocess.run(['ip', '-o', 'link'], capture_output=True)
    if pod_id[:8].encode() in out.stdout:
        left.append('a link named after the pod')
    return left


class PodTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _remove_all(self):
        ids = self.kz('pod', 'ps', '-q').text.split()
        if ids:
            self.kz('pod', 'rm', '-f', *ids)
        super()._remove_all()

    def template(self, text, name='pod.yaml'):
        path = os.path.join(self.state_path, name)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def inspect(self, ref):
        return json.loads(self.kz('pod', 'inspect', ref, check=0).out)[0]

    def wait_log(self, ref, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            out = self.kz('logs', ref, check=0).text
            if needle in out or time.monotonic() > deadline:
                return out
            time.sleep(0.5)

    def wait_shim_gone(self, ref, timeout=60):
        deadline = time.monotonic() + timeout
        while self.inspect(ref)['ShimPid'] and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertIsNone(self.inspect(ref)['ShimPid'])

    def leaks(self, pod_id, member_ids):
        """:returns: what is left of a removed pod."""
        return pod_leaks(self.state_path, self.run_path, pod_id,
                         member_ids)

    def assert_gone(self, pod_id, member_ids):
        deadline = time.monotonic() + 60
        while self.leaks(pod_id, member_ids) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual([], self.leaks(pod_id, member_ids))

    # ------------------------------------------------------------ tests
    def test_init_server_client_capsule(self):
        r = self.kz('play', self.template(WEB % {'name': 'web'}), check=0)
        pod_id = r.text.strip()
        pod = self.inspect('web')
        self.assertEqual(pod_id, pod['Id'])
        self.assertEqual({'app': 'web'}, pod['Labels'])
        # The VM is the sum of the containers plus overhead.
        self.assertEqual(1, pod['VM']['vcpus'])
        init, = pod['InitContainers']
        server, client = pod['Containers']
        self.assertEqual(('init', 'exited', 0),
                         (init['Name'], init['Status'], init['ExitCode']))
        # The init container ended before the others started.
        self.assertLessEqual(init['FinishedAt'], server['StartedAt'])
        self.assertLessEqual(init['FinishedAt'], client['StartedAt'])
        self.assertEqual('Running', pod['Status'])
        self.assertEqual('init-done\n', self.kz('logs', 'web-init',
                                                check=0).text)
        stamp = self.kz('exec', 'web-server', 'cat', '/data/init.txt',
                        check=0).text.strip()
        # The client reached the server over localhost; both read the
        # init container's file.
        out = self.wait_log('web-client', 'hello-from-server')
        self.assertIn('client-read-%s' % stamp, out)
        self.assertIn('hello-from-server', out)
        self.assertIn('server-read-%s' % stamp, self.kz(
            'logs', 'web-server', check=0).text)
        # exec in each container: its own processes, environment and
        # root, the pod's hostname and network.
        r = self.kz('exec', 'web-client', 'sh', '-c',
                    'hostname; echo $ROLE; ps -o comm; '
                    'wget -q -O - http://127.0.0.1:8080/; '
                    'touch /data/nope', check=1)
        lines = r.text.split()
        self.assertEqual(['web', 'client'], lines[:2])
        self.assertIn('sleep', lines)
        self.assertNotIn('httpd', lines)
        self.assertIn('hello-from-server', lines)
        self.assertIn(b'Read-only file system', r.err)
        r = self.kz('exec', 'web-server', 'sh', '-c',
                    'hostname; echo ${ROLE:-none}; ps -o comm; '
                    'ls /www; echo w > /data/by-server', check=0)
        lines = r.text.split()
        self.assertEqual(['web', 'none'], lines[:2])
        self.assertIn('httpd', lines)
        self.assertNotIn('sleep', lines)
        self.assertIn('index.html', lines)
        # What one container writes in the shared volume the other sees;
        # what it writes in its own root, the other does not.
        self.assertEqual('w\n', self.kz('exec', 'web-client', 'cat',
                                        '/data/by-server', check=0).text)
        self.kz('exec', 'web-client', 'ls', '/www', check=1)
        top = self.kz('top', 'web-server', check=0).text
        self.assertIn('httpd', top)
        self.assertNotIn('sleep', top)
        # A pod's container is not removed or started on its own.
        r = self.kz('rm', '-f', 'web-client', check=1)
        self.assertIn(b'belongs to pod web', r.err)
        members = [init['Id'], server['Id'], client['Id']]
        self.kz('pod', 'stop', 'web', check=0)
        pod = self.inspect('web')
        self.assertEqual('Stopped', pod['Status'])
        self.assertIsNone(pod['ShimPid'])
        self.kz('pod', 'rm', 'web', check=0)
        self.assert_gone(pod_id, members)
        # The volume made for the pod went with it.
        self.assertEqual('', self.kz('volume', 'ls', '-q', check=0).text)
        self.assertEqual('', self.kz('pod', 'ps', '-q', check=0).text)
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)

    def test_failing_init_container_fails_the_pod(self):
        r = self.kz('play', self.template(FAILING_INIT), check=1)
        pod = self.inspect('failing')
        self.assertEqual('Failed', pod['Status'])
        self.assertIn('init container setup failed: exit code 3',
                      pod['Error'])
        ok, setup = pod['InitContainers']
        self.assertEqual(0, ok['ExitCode'])
        self.assertEqual(3, setup['ExitCode'])
        app, = pod['Containers']
        # The regular container never ran, and says why.
        self.assertEqual('created', app['Status'])
        self.assertIsNone(app['StartedAt'])
        self.assertIn('not started: init container setup failed',
                      app['Error'])
        # (stderr records go to stderr, as docker logs does)
        self.assertEqual(b'cannot set up\n', self.kz(
            'logs', 'failing-setup', check=0).err)
        self.assertIn(b'init container setup failed', r.err)
        # Its VM goes away by itself: then rm needs no force.
        self.wait_shim_gone('failing')
        self.kz('pod', 'rm', 'failing', check=0)
        self.assert_gone(pod['Id'], [ok['Id'], setup['Id'], app['Id']])

    def test_template_errors_leave_nothing(self):
        bad = [
            (WEB.replace('  containers:', '  containerz:'),
             b"unknown field 'containerz'"),
            (WEB.replace('name: client', 'name: server'),
             b"two containers are named 'server'"),
            (WEB.replace('    image: busybox\n    command: [sh, -c]\n'
                         '    args: ["echo client',
                         '    image: no-such-image\n    command: [sh, -c]'
                         '\n    args: ["echo client'),
             b'no-such-image'),
            (WEB.replace('image: busybox', 'image: "../x"', 1),
             b"invalid image '../x'"),
            (WEB.replace('mountPath: /data\n      readOnly',
                         'mountPath: /data\n      readonly'),
             b"unknown field 'readonly'"),
            ('kind: capsule\nmetadata: {name: x}\nspec: [1',
             b'not valid YAML'),
            (FAILING_INIT.replace('["true"]', '[true]'),
             b'command must be a list of strings'),
        ]
        for text, message in bad:
            r = self.kz('play', self.template(text % {'name': 'web'}
                                              if '%(name)s' in text
                                              else text))
            self.assertNotEqual(0, r.code, r)
            self.assertIn(message, r.err)
            self.assertNotIn(b'Traceback', r.err)
        self.assertEqual('', self.kz('pod', 'ps', '-q', check=0).text)
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)
        self.assertEqual('', self.kz('volume', 'ls', '-q', check=0).text)
        self.assertEqual([], os.listdir(os.path.join(self.state_path,
                                                     'containers')))

    def test_pod_create_run_pod_and_force_rm(self):
        self.kz('pod', 'create', '--name', 'p1', '-v', 'p1data',
                '--restart', 'no', check=0)
        self.kz('pod', 'start', 'p1', check=1)          # no container yet
        self.kz('run', '--pod', 'p1', '--init', '--name', 'prep', '-v',
                'p1data:/d', 'busybox', 'true', check=125)
        self.kz('run', '--pod', 'p1', '--init', '--name', 'prep', '-e',
                'X=1', 'busybox', 'sh', '-c', 'echo $X', check=0)
        self.kz('run', '--pod', 'p1', '--name', 'main', 'busybox', 'sh',
                '-c', 'echo main-up; exec sleep 100000', check=0)
        r = self.kz('run', '--pod', 'p1', '--name', 'main', 'busybox',
                    'true', check=125)
        self.assertIn(b"two containers are named 'main'", r.err)
        self.kz('pod', 'start', '--wait', 'p1', check=0)
        self.assertIn('main-up', self.wait_log('p1-main', 'main-up'))
        self.assertEqual('1\n', self.kz('logs', 'p1-prep', check=0).text)
        pod = self.inspect('p1')
        self.assertEqual('Running', pod['Status'])
        self.assertEqual('no', pod['RestartPolicy'])
        # Sized for its containers (none sets a limit: the default VM).
        self.assertEqual({'vcpus': 1, 'memory_mb': 256}, pod['VM'])
        self.kz('pod', 'rm', 'p1', check=1)               # it runs
        members = [c['Id'] for c in pod['InitContainers'] +
                   pod['Containers']]
        self.kz('pod', 'rm', '-f', 'p1', check=0)
        self.assert_gone(pod['Id'], members)
        # The pod did not make p1data (pod create did): it stays.
        self.assertEqual('p1data\n', self.kz('volume', 'ls', '-q',
                                             check=0).text)

    def test_restart_policy_and_exit_of_one_container(self):
        self.kz('pod', 'create', '--name', 'rp', '--restart', 'on-failure',
                check=0)
        self.kz('run', '--pod', 'rp', '--name', 'flaky', 'busybox', 'sh',
                '-c', 'echo run; exit 1', check=0)
        self.kz('run', '--pod', 'rp', '--name', 'done', 'busybox', 'true',
                check=0)
        self.kz('pod', 'start', 'rp', check=0)
        deadline = time.monotonic() + 120
        while True:
            pod = self.inspect('rp')
            flaky, done = pod['Containers']
            if flaky['RestartCount'] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertGreaterEqual(flaky['RestartCount'], 2)
        self.assertEqual(('exited', 0), (done['Status'], done['ExitCode']))
        self.assertEqual('Running', pod['Status'])
        self.assertGreaterEqual(self.kz('logs', 'rp-flaky', check=0)
                                .text.count('run'), 2)
        self.kz('pod', 'stop', '-t', '0', 'rp', check=0)
        self.assertIn(self.inspect('rp')['Status'], ('Failed', 'Stopped'))

    def _killed_at(self, point, *args):
        """Run the CLI until it reaches fault point ``point``, then
        SIGKILL it there.
        """
        env = dict(os.environ, **{faultpoint.ENV: point})
        proc = subprocess.Popen(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf_file] + list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        err = b''
        while faultpoint.MARKER not in err:
            chunk = proc.stderr.read1(4096)
            if not chunk:
                break
            err += chunk
        self.assertIn(faultpoint.MARKER + point.encode(), err)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

    def test_sigkill_of_the_cli_leaks_nothing(self):
        # In the middle of create: the next command sweeps it.
        self._killed_at('pod-create', 'play', '--no-start',
                        self.template(WEB % {'name': 'k1'}))
        self.assertEqual('', self.kz('pod', 'ps', '-q', check=0).text)
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)
        self.kz('pod', 'create', '--name', 'k1', check=0)   # name is free
        self.assertEqual([], [
            d for d in os.listdir(os.path.join(self.state_path,
                                               'containers'))
            if not d.startswith('.')])
        # In the middle of rm of a running pod: the next rm finishes it.
        self.kz('run', '--pod', 'k1', '--name', 'c1', 'busybox', 'sleep',
                '100000', check=0)
        self.kz('pod', 'start', '--wait', 'k1', check=0)
        pod = self.inspect('k1')
        self._killed_at('pod-rm-cleanup', 'pod', 'rm', '-f', 'k1')
        self.kz('pod', 'rm', '-f', 'k1', check=0)
        self.assert_gone(pod['Id'], [pod['Containers'][0]['Id']])

    def test_killed_shim_or_starter_is_explained_and_removable(self):
        self.kz('pod', 'create', '--name', 'ks', check=0)
        self.kz('run', '--pod', 'ks', '--name', 'c1', 'busybox', 'sleep',
                '100000', check=0)
        # The starter killed once the shim is spawned: the pod goes on.
        self._killed_at('pod-start-spawned', 'pod', 'start', 'ks')
        deadline = time.monotonic() + 120
        while self.inspect('ks')['Containers'][0]['Status'] != 'running' \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        pod = self.inspect('ks')
        self.assertEqual('Running', pod['Status'])
        # Its shim killed: the records say so, nothing stays.
        os.kill(pod['ShimPid'], signal.SIGKILL)
        self.wait_shim_gone('ks')
        pod = self.inspect('ks')
        self.assertEqual('Failed', pod['Status'])
        self.assertEqual('the pod shim died (crash)', pod['Error'])
        member, = pod['Containers']
        self.assertEqual(('exited', 255), (member['Status'],
                                           member['ExitCode']))
        self.assertIn('crash', member['Error'])
        self.kz('pod', 'rm', 'ks', check=0)
        self.assert_gone(pod['Id'], [member['Id']])
