"""End to end: real zun-api and zun-compute run containers in kata VMs.

``openstack appcontainer`` talks to zun-api, which casts over RabbitMQ to
zun-compute, which loads :class:`kata_zun.driver.KataDriver` by its
entry point and boots a micro-VM per container.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import fixtures
from oslotest import base

from kata_zun.tests.functional import base as kz_base
from kata_zun.tests.functional import zun_env


def attach_compute_logs(test, env, state_path):
    """Add zun-compute's log and each sandbox's shim and guest console
    (they say why a VM failed) to a failed test's details.
    """
    from testtools import content
    test.addDetail('zun-compute.log', content.text_content(
        kz_base.tail_file(env.compute_log, 20000)))
    # The tail alone hid why two CI failures happened (a warning minutes
    # before the end): every warning and error of the whole log too.
    test.addDetail('zun-compute-problems.log', content.text_content(
        problems(env.compute_log)))
    containers = os.path.join(state_path, 'containers')
    for cid in sorted(os.listdir(containers)) if os.path.isdir(
            containers) else ():
        for name in ('shim.log', 'console.log'):
            path = os.path.join(containers, cid, name)
            if os.path.exists(path):
                test.addDetail('%s-%s' % (cid[:12], name),
                               content.text_content(
                                   kz_base.tail_file(path, 4000)))


def problems(path, keep=400):
    """:returns: the last ``keep`` WARNING, ERROR and CRITICAL lines (a
        traceback's lines included: oslo.log prefixes each) of a log.
    """
    import collections
    found = collections.deque(maxlen=keep)
    try:
        with open(path, 'rb') as f:
            for line in f:
                if any(level in line for level in (
                        b' WARNING ', b' ERROR ', b' CRITICAL ')):
                    found.append(line[:2000].decode('utf-8', 'replace'))
    except OSError as exc:
        return '(no log: %s)' % exc
    return ''.join(found)


class ZunEndToEndBase(base.BaseTestCase):
    """An environment per test, and helpers; no tests of its own."""

    #: Also start glance-api next to zun (commit uploads to Glance).
    GLANCE = False
    #: More ZunEnvironment arguments (e.g. a real Neutron).
    ENV_OPTIONS = {}
    #: Seconds a whole test may take (the environment's start included).
    TEST_TIMEOUT = 900

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(self.TEST_TIMEOUT, gentle=True))
        try:
            import zun  # noqa: F401
        except ImportError:
            self.fail('zun is not installed in %s: run tools/install.sh' %
                      sys.prefix)
        work = self.useFixture(fixtures.TempDir()).path
        self.state_path = os.path.join(work, 'kata')
        os.makedirs(self.state_path)
        os.symlink(os.environ.get('KATA_ZUN_GUEST_DIR',
                                  kz_base.DEFAULT_GUEST_DIR),
                   os.path.join(self.state_path, 'guest'))
        self.run_path = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        kz_base.seed_probe_cache(self.run_path)
        self.addCleanup(shutil.rmtree, self.run_path, True)
        kata = {'state_path': self.state_path, 'run_path': self.run_path,
                'writable_layer_mb': '256'}
        self.env = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(work, 'zun'), driver='kata',
            extra_conf={'DEFAULT': {
                # Find vanished sandboxes soon (auto_heal).
                'sync_container_state_interval': '5',
                # Capsules in one VM each (kata_zun.driver.capsule).
                'capsule_driver': 'kata'},
                'kata': kata, 'kata_image': {
                # Nothing leaves this machine: missing images are pulled
                # from a closed loopback port.
                'default_registry': kz_base.CLOSED_REGISTRY}},
            glance=self.GLANCE, **self.ENV_OPTIONS)
        self.addCleanup(self.env.stop)
        self.addOnException(self._attach_logs)
        self.env.start()
        # The image is loaded into the compute host's store, as an
        # operator would with `kata-zun load` (no registry needed).
        from kata_zun.image import busybox
        archive = os.path.join(work, 'busybox.tar')
        busybox.write_docker_archive(archive)
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', self.env.conf_path, 'load', '-i',
                        archive], check=True, capture_output=True)
        self.addCleanup(self._no_vm_left)
        self.addCleanup(self._remove_sandboxes)

    def _remove_sandboxes(self):
        # Whatever the test left, no VM outlives it.
        from kata_zun.tests.functional import base as functional
        cli = [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
               self.env.conf_path]
        # Pods (capsules) first: their members go with them only.
        pods = subprocess.run(cli + ['pod', 'ps', '-q'], capture_output=True,
                              timeout=functional.CLI_TIMEOUT).stdout.split()
        if pods:
            subprocess.run(cli + ['pod', 'rm', '-f'] + [
                p.decode() for p in pods], capture_output=True,
                timeout=functional.CLI_TIMEOUT)
        ids = subprocess.run(cli + ['ps', '-a', '-q'], capture_output=True,
                             timeout=functional.CLI_TIMEOUT).stdout.split()
        if ids:
            subprocess.run(cli + ['rm', '-f'] + [i.decode() for i in ids],
                           capture_output=True,
                           timeout=functional.CLI_TIMEOUT)

    def _write_conf(self, text):
        from kata_zun.runtime import fileutils
        fileutils.write_atomic(self.env.conf_path, text.encode())

    def _attach_logs(self, exc_info):
        attach_compute_logs(self, self.env, self.state_path)

    def kz(self, *args):
        """The kata-zun CLI on zun-compute's state (the host's view).

        :returns: the CompletedProcess (text).
        """
        from kata_zun.tests.functional import base as functional
        return subprocess.run(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.env.conf_path] + list(args), capture_output=True,
            text=True, timeout=functional.CLI_TIMEOUT)

    def _no_vm_left(self):
        out = subprocess.run(['pgrep', '-f', 'kata_zun.cmd.shim.*%s' %
                              self.state_path], capture_output=True)
        self.assertEqual(b'', out.stdout)

    def os(self, *args, check=True):
        code, out, err = self.env.openstack(*args)
        if check:
            self.assertEqual(0, code, 'openstack %s: %s %s' % (
                ' '.join(args), out, err))
        return code, out, err

    def show(self, name):
        """What ``openstack appcontainer show -f json`` prints, read
        through the API (polls spawn no client process; see
        :meth:`ZunEnvironment.api`).
        """
        info = self.env.show('containers', name)
        self.assertIsNotNone(info, 'no container %s' % name)
        return info

    def gone(self, *names):
        """:returns: True once zun-api knows none of ``names``."""
        return all(self.env.show('containers', n) is None for n in names)

    def wait_status(self, name, want, timeout=120):
        deadline = time.time() + timeout
        while True:
            info = self.show(name)
            if info['status'] in want:
                return info
            self.assertLess(time.time(), deadline,
                            'status %s, reason %s; want %s' % (
                                info['status'], info.get('status_reason'),
                                want))
            time.sleep(1)


class ZunEndToEndTest(ZunEndToEndBase):

    def test_lifecycle_and_compute_restart(self):
        self.os('appcontainer', 'run', '--name', 'c1',
                '--image-pull-policy', 'ifnotpresent', '--memory', '128',
                '--environment', 'GREETING=hello',
                '--healthcheck', 'cmd=test -e /tmp/healthy,interval=1s,'
                'retries=1', 'busybox', 'sh', '-c',
                'echo $GREETING from $(hostname); touch /tmp/healthy; '
                'while true; do sleep 1; done')
        info = self.wait_status('c1', ('Running',))
        self.assertEqual('kata', info['runtime'])
        # The shim runs the health check; zun shows it like docker ps.
        deadline = time.time() + 60
        while '(healthy)' not in self.show('c1')['status_detail']:
            self.assertLess(time.time(), deadline, self.show('c1'))
            time.sleep(1)
        deadline = time.time() + 30
        while 'hello from' not in self.os('appcontainer', 'logs', 'c1')[1]:
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        out = self.os('appcontainer', 'exec', 'c1', 'cat', '/etc/hostname')[1]
        self.assertIn(info['uuid'].replace('-', '')[:12], out)
        # `openstack appcontainer top` itself is broken upstream (it uses
        # Python 2 print syntax): ask the API through python-zunclient.
        top = self.env.zun_client().containers.top('c1')
        self.assertEqual('PID', top['Titles'][1])
        self.assertTrue(any('sleep' in p[-1] for p in top['Processes']),
                        top)
        stats = self.os('appcontainer', 'stats', 'c1')[1]
        self.assertIn('MEM LIMIT(MiB)', stats)
        self.os('appcontainer', 'set', '--memory', '64', 'c1')
        self.assertRegex(self.os('appcontainer', 'stats', 'c1')[1],
                         r'MEM LIMIT\(MiB\) *\| 64\.0 ')

        # cp both ways (zun tars and untars on the client side).
        local = os.path.join(self.state_path, 'upload.txt')
        with open(local, 'w') as f:
            f.write('uploaded through zun\n')
        self.os('appcontainer', 'cp', local, 'c1:/tmp/')
        out = self.os('appcontainer', 'exec', 'c1', 'cat',
                      '/tmp/upload.txt')[1]
        self.assertIn('uploaded through zun', out)
        back = os.path.join(self.state_path, 'back')
        os.mkdir(back)
        self.os('appcontainer', 'cp', 'c1:/tmp/upload.txt', back)
        with open(os.path.join(back, 'upload.txt')) as f:
            self.assertEqual('uploaded through zun\n', f.read())

        # zun-compute crashes and comes back: the VM never noticed.
        self.env.restart_compute(kill=True)
        # As the user sees it, through the client (polls use the API).
        shown = json.loads(self.os('appcontainer', 'show', '-f', 'json',
                                   'c1')[1])
        self.assertEqual(('Running', info['uuid']),
                         (shown['status'], shown['uuid']))
        out = self.os('appcontainer', 'exec', 'c1', 'echo', 'still here')[1]
        self.assertIn('still here', out)
        code, _out, _err = self.os('appcontainer', 'exec', 'c1', 'sh', '-c',
                                   'exit 3', check=False)
        self.assertEqual(3, code)
        # Health checks went on while zun-compute was away.
        self.os('appcontainer', 'exec', 'c1', 'rm', '/tmp/healthy')
        deadline = time.time() + 60
        while '(unhealthy)' not in self.show('c1')['status_detail']:
            self.assertLess(time.time(), deadline, self.show('c1'))
            time.sleep(1)
        self.assertIn('health check failing (exit 1)',
                      self.show('c1')['status_reason'])

        self.os('appcontainer', 'pause', 'c1')
        self.wait_status('c1', ('Paused',))
        self.os('appcontainer', 'unpause', 'c1')
        self.wait_status('c1', ('Running',))
        self.os('appcontainer', 'stop', '--timeout', '1', 'c1')
        self.wait_status('c1', ('Stopped',))
        self.os('appcontainer', 'start', 'c1')
        self.wait_status('c1', ('Running',))
        self.os('appcontainer', 'kill', 'c1')
        self.wait_status('c1', ('Stopped',))
        self.os('appcontainer', 'delete', 'c1')
        deadline = time.time() + 60
        while not self.gone('c1'):
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        # The user's own view of it, through the client.
        code, _out, err = self.os('appcontainer', 'show', 'c1', check=False)
        self.assertNotEqual(0, code)
        self.assertIn('c1', err)

    def test_failures_end_in_error_with_a_reason(self):
        self.os('appcontainer', 'run', '--name', 'noimg',
                '--image-pull-policy', 'ifnotpresent', 'no-such-image',
                'true')
        info = self.wait_status('noimg', ('Error',))
        self.assertIn('no-such-image', info['status_reason'])
        self.assertIn(kz_base.CLOSED_REGISTRY, info['status_reason'])
        self.os('appcontainer', 'run', '--name', 'nocmd',
                '--image-pull-policy', 'ifnotpresent', 'busybox',
                'no-such-command')
        info = self.wait_status('nocmd', ('Error',))
        self.assertIn('executable file not found', info['status_reason'])
        self.os('appcontainer', 'delete', '--force', 'nocmd')
        self.os('appcontainer', 'delete', '--force', 'noimg')

        # A start the host cannot fit (memory admission, issue 14): Error
        # with the reason (zun's ResourcesUnavailable). Each shim reads
        # zun-compute's zun.conf anew: no restart needed.
        with open(self.env.conf_path) as f:
            conf_text = f.read()
        self.addCleanup(self._write_conf, conf_text)
        self._write_conf(conf_text + '\n[kata]\nhost_memory_reserve_mb = '
                         '1073741824\n')
        self.os('appcontainer', 'run', '--name', 'nomem',
                '--image-pull-policy', 'ifnotpresent', 'busybox', 'sleep',
                '1000')
        info = self.wait_status('nomem', ('Error',))
        self.assertRegex(info['status_reason'],
                         r'Insufficient resources: not enough '
                         r'host memory to start kz-[0-9a-f]{12}: it needs '
                         r'\d+ MiB, the host has \d+ MiB available and '
                         r'keeps 1073741824 MiB free')
        self._no_vm_left()
        # With room again, the same container starts.
        self._write_conf(conf_text)
        self.os('appcontainer', 'start', 'nomem')
        self.wait_status('nomem', ('Running',))
        self.os('appcontainer', 'delete', '--force', 'nomem')

        # Sandboxes removed behind zun's back: reported as Error, or
        # rebuilt and started again with --auto-heal.
        for name in ('plain', 'healed'):
            self.os('appcontainer', 'run', '--name', name,
                    '--image-pull-policy', 'ifnotpresent',
                    *(['--auto-heal'] if name == 'healed' else []),
                    'busybox', 'sh', '-c', 'echo up; sleep 1000')
        for name in ('plain', 'healed'):
            info = self.wait_status(name, ('Running',))
            r = subprocess.run(
                [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
                 self.env.conf_path, 'rm', '-f',
                 info['uuid'].replace('-', '')], capture_output=True,
                timeout=kz_base.CLI_TIMEOUT)
            self.assertEqual(0, r.returncode, r.stderr)
        info = self.wait_status('plain', ('Error',), timeout=60)
        self.assertIn('sandbox', info['status_reason'])
        deadline = time.time() + 180
        while True:
            actions = [a['action'] for a in self.env.actions('healed')]
            if 'rebuild' in actions and self.show('healed')[
                    'status'] == 'Running':
                break
            self.assertLess(time.time(), deadline, (
                actions, self.show('healed')))
            time.sleep(2)
        deadline = time.time() + 30
        while 'up' not in self.os('appcontainer', 'logs', 'healed')[1]:
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        for name in ('plain', 'healed'):
            self.os('appcontainer', 'delete', '--force', name)

        # The host restarts (the shim and VM die, the boot id changes):
        # Stopped, not Error, and zun-compute starts restart=always
        # containers again when it comes back, like dockerd.
        self.os('appcontainer', 'run', '--name', 'rebooted',
                '--image-pull-policy', 'ifnotpresent', '--restart',
                'always', 'busybox', 'sh', '-c', 'echo boot; sleep 1000')
        info = self.wait_status('rebooted', ('Running',))
        from kata_zun.runtime import fileutils
        path = os.path.join(self.state_path, 'containers',
                            info['uuid'].replace('-', ''), 'state.json')
        record = fileutils.read_json(path)
        os.kill(record['shim_pid'], signal.SIGKILL)
        deadline = time.time() + 30
        while os.path.exists('/proc/%d' % record['vm_pid']):
            self.assertLess(time.time(), deadline)
            time.sleep(0.1)
        record = fileutils.read_json(path)
        record['boot_id'] = 'a-boot-before-this-one'
        fileutils.write_json(path, record)
        info = self.wait_status('rebooted', ('Stopped',), timeout=60)
        self.assertIn('host restarted', info['status_reason'])
        self.env.restart_compute(kill=True)
        self.wait_status('rebooted', ('Running',), timeout=120)
        deadline = time.time() + 60
        while self.os('appcontainer', 'logs', 'rebooted')[1].count(
                'boot') < 2:
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        self.os('appcontainer', 'delete', '--force', 'rebooted')
