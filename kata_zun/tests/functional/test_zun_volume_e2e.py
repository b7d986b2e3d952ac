"""End to end: Zun's volumes reach the container's VM, and data is kept;
Zun's capsules run as one VM each, their containers sharing a volume.

Real: keystone, placement, zun-api and zun-compute with this driver (a
fake Neutron: no test here is about the network), RabbitMQ and MariaDB
(:mod:`zun_env`); cinder-api, cinder-scheduler and cinder-volume 29
(:mod:`cinder_env`); zun's own CinderWorkflow and os-brick in
zun-compute; the ``openstack`` client; QEMU VMs. The stand-ins, because
this kernel has no device-mapper or iSCSI: the storage under
cinder-volume (:mod:`cinder_backend`: sparse files handed over as loop
devices through os-brick's ``local`` connector) and a Nova that knows no
server (:mod:`fake_nova`), which Cinder asks before a detach.

One environment for the class (starting it costs a minute or more on a
2-core host); zun-compute is SIGKILLed and restarted inside a test, which
the environment is made for.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import fixtures
from oslotest import base
from testtools import content

from kata_zun.tests.functional import base as kz_base
from kata_zun.tests.functional import cinder_env
from kata_zun.tests.functional import test_pods
from kata_zun.tests.functional import test_zun_e2e
from kata_zun.tests.functional import zun_env

STATUS_TIMEOUT = 180

# The capsule of issue 13 through zun-api: an init container writes into
# a Cinder volume made for the capsule, a server serves over HTTP, a
# client fetches from it over localhost; both read the init's file.
CAPSULE = """
kind: capsule
capsuleVersion: beta
metadata:
  name: %(name)s
  labels:
    app: web
spec:
  restartPolicy: %(policy)s
  initContainers:
  - image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args: ["%(init)s"]
    volumeMounts:
    - name: shared
      mountPath: /data
  containers:
  - image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args: ["mkdir -p /www && echo hello-from-server > /www/index.html &&
            echo server-read-$(cat /data/init.txt) &&
            exec httpd -f -p 8080 -h /www"]
    resources:
      requests:
        cpu: 0.5
        memory: 64
    volumeMounts:
    - name: shared
      mountPath: /data
  - image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args: ["echo client-read-$(cat /data/init.txt);
            until wget -q -O - http://localhost:8080/; do sleep 0.2; done;
            exec sleep 100000"]
    env:
      ROLE: client
    volumeMounts:
    - name: shared
      mountPath: /data
  volumes:
  - name: shared
    cinder:
      size: 1
      autoRemove: true
"""


def host_mounts_of(device):
    """Every mount of ``device`` in any mount namespace of this host.

    :returns: list of ``(pid, mountinfo line)``.
    """
    rdev = os.stat(device).st_rdev
    want = '%d:%d' % (os.major(rdev), os.minor(rdev))
    found, seen = [], set()
    for ns in glob.glob('/proc/[0-9]*/ns/mnt'):
        pid = ns.split('/')[2]
        try:
            key = os.readlink(ns)
            if key in seen:
                continue
            with open('/proc/%s/mountinfo' % pid) as f:
                lines = f.read().splitlines()
        except OSError:
            continue        # gone meanwhile
        seen.add(key)
        found += [(pid, line) for line in lines
                  if line.split()[2] == want or device in line.split()]
    return found


class ZunVolumeEndToEndTest(base.BaseTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        venv = zun_env.find_venv('KATA_ZUN_CINDER_VENV', '.venv-cinder',
                                 'cinder-volume')
        if venv is None:
            raise AssertionError('no virtualenv with cinder: run '
                                 'tools/install-cinder.sh')
        cls.work = tempfile.mkdtemp(prefix='kzvol')
        cls.state_path = os.path.join(cls.work, 'kata')
        os.makedirs(cls.state_path)
        os.symlink(os.environ.get('KATA_ZUN_GUEST_DIR',
                                  kz_base.DEFAULT_GUEST_DIR),
                   os.path.join(cls.state_path, 'guest'))
        cls.run_path = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        kz_base.seed_probe_cache(cls.run_path)
        cls.volume_dir = os.path.join(cls.work, 'zun-volumes')
        policy = os.path.join(cls.work, 'policy.yaml')
        with open(policy, 'w') as f:
            # The hostile guest below needs the raw device: privileged
            # containers, opened to admins (zun denies them by default).
            f.write('"container:create:privileged": '
                    '"rule:context_is_admin"\n')
        extra = cinder_env.CinderEnvironment.zun_conf(sys.prefix)
        extra['volume']['volume_dir'] = cls.volume_dir
        extra.update({
            # Capsules too: one VM each (kata_zun.driver.capsule).
            'DEFAULT': {'sync_container_state_interval': '5',
                        'capsule_driver': 'kata'},
            'kata': {'state_path': cls.state_path,
                     'run_path': cls.run_path,
                     'writable_layer_mb': '256'},
            'kata_image': {'default_registry': kz_base.CLOSED_REGISTRY},
            'oslo_policy': {'policy_file': policy}})
        cls.env = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(cls.work, 'zun'), driver='kata',
            extra_conf=extra)
        cls.cinder = cinder_env.CinderEnvironment(
            venv, os.path.join(cls.work, 'cinder'), keystone=cls.env)
        try:
            cls.cinder.start_with_keystone()
            from kata_zun.image import busybox
            archive = os.path.join(cls.work, 'busybox.tar')
            busybox.write_docker_archive(archive)
            subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                            '--config-file', cls.env.conf_path, 'load',
                            '-i', archive], check=True, capture_output=True)
        except BaseException:
            cls._stop_all()
            raise

    @classmethod
    def _stop_all(cls):
        cli = [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
               cls.env.conf_path]
        try:
            # Capsules first: the members of a pod go with it only.
            pods = subprocess.run(cli + ['pod', 'ps', '-q'],
                                  capture_output=True,
                                  timeout=120).stdout.split()
            if pods:
                subprocess.run(cli + ['pod', 'rm', '-f'] + [
                    p.decode() for p in pods], capture_output=True,
                    timeout=300)
            ids = subprocess.run(cli + ['ps', '-a', '-q'],
                                 capture_output=True,
                                 timeout=120).stdout.split()
            if ids:
                subprocess.run(cli + ['rm', '-f'] + [i.decode()
                                                     for i in ids],
                               capture_output=True, timeout=120)
        finally:
            try:
                cls.cinder.stop()
            finally:
                cls.env.stop()
                shutil.rmtree(cls.work, ignore_errors=True)
                shutil.rmtree(cls.run_path, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._stop_all()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(900, gentle=True))
        self.addOnException(self._attach_logs)

    def _attach_logs(self, exc_info):
        test_zun_e2e.attach_compute_logs(self, self.env, self.state_path)
        # A capsule's VM: its pod's shim and console logs.
        for path in sorted(glob.glob(os.path.join(
                self.state_path, 'pods', '*', '*.log'))):
            with open(path, 'rb') as f:
                f.seek(max(0, os.path.getsize(path) - 8192))
                tail = f.read().decode('utf-8', 'replace')
            self.addDetail('pod-' + '-'.join(path.split(os.sep)[-2:]),
                           content.text_content(tail))
        self.addDetail('cinder-logs', content.text_content(
            self.cinder.logs_tail()))

    # -- clients

    def os(self, *args, check=True):
        code, out, err = self.env.openstack(*args)
        if check:
            self.assertEqual(0, code, 'openstack %s: %s %s' % (
                ' '.join(args), out, err))
        return code, out, err

    def osj(self, *args):
        return json.loads(self.os(*args)[1])

    def show(self, name):
        """``openstack appcontainer show -f json``, through the API (a
        poll spawns no client process: see ``ZunEnvironment.api``).
        """
        info = self.env.show('containers', name)
        self.assertIsNotNone(info, 'no container %s' % name)
        return info

    def wait_status(self, name, want, timeout=STATUS_TIMEOUT):
        deadline = time.time() + timeout
        while True:
            info = self.show(name)
            if info['status'] in want:
                return info
            self.assertNotEqual('Error', info['status'], info)
            self.assertLess(time.time(), deadline,
                            'status %s, reason %s; want %s' % (
                                info['status'], info.get('status_reason'),
                                want))
            time.sleep(1)

    def delete_container(self, name):
        self.os('appcontainer', 'delete', '--force', name)
        deadline = time.time() + STATUS_TIMEOUT
        while self.env.show('containers', name) is not None:
            self.assertLess(time.time(), deadline,
                            '%s still there after delete' % name)
            time.sleep(1)

    def wait_volume(self, ref, want):
        deadline = time.time() + STATUS_TIMEOUT
        while True:
            vol = self.cinder.volume(ref)
            if vol['status'] == want:
                return vol
            self.assertNotIn(vol['status'], ('error', 'error_deleting'), vol)
            self.assertLess(time.time(), deadline, vol)
            time.sleep(1)

    def wait_volume_gone(self, volume_id):
        deadline = time.time() + STATUS_TIMEOUT
        while volume_id in [v['id'] for v in self.cinder.call(
                'GET', '/volumes')['volumes']]:
            self.assertLess(time.time(), deadline, volume_id)
            time.sleep(1)

    def exec_(self, name, *argv, check=True):
        # zun passes exec one command line: keep arguments plain.
        return self.os('appcontainer', 'exec', name, *argv, check=check)

    def run_container(self, name, *args):
        self.os('appcontainer', 'run', '--name', name,
                '--image-pull-policy', 'ifnotpresent', *args)
        # A failed test leaves nothing attached for the next one.
        self.addCleanup(self.os, 'appcontainer', 'delete', '--force', name,
                        check=False)

    def device_of(self, volume_id):
        devices = [d for d, backing in self.cinder.loop_devices().items()
                   if backing.endswith('volume-%s' % volume_id)]
        self.assertEqual(1, len(devices), self.cinder.loop_devices())
        return devices[0]

    def assert_never_mounted_on_host(self, volume_id):
        """No mount namespace of the host has the volume's device, and
        zun's own mount point for it does not exist.
        """
        device = self.device_of(volume_id)
        self.assertEqual([], host_mounts_of(device))
        self.assertFalse(glob.glob(os.path.join(self.volume_dir, '*')),
                         'zun mount points were made')

    # -- tests

    def test_cinder_volume_keeps_data_across_containers_and_a_crash(self):
        name = 'kzv-%s' % uuid.uuid4().hex[:6]
        vol = self.osj('volume', 'create', '-f', 'json', '--size', '1',
                       name)
        self.addCleanup(self.os, 'volume', 'delete', vol['id'],
                        check=False)
        self.wait_volume(vol['id'], 'available')
        self.run_container('w1', '--mount',
                           'source=%s,destination=/data' % name,
                           'busybox', 'sleep', '600')
        self.wait_status('w1', ('Running',))
        self.assertEqual('in-use', self.cinder.volume(vol['id'])['status'])
        # A blank volume got its file system inside the VM.
        out = self.exec_('w1', 'cat', '/proc/mounts')[1]
        self.assertRegex(out, r'/dev/vd[a-z]+ /data ext4 rw')
        self.exec_('w1', 'sh', '-c', 'echo first > /data/f && sync')
        self.assert_never_mounted_on_host(vol['id'])

        # zun-compute crashes with the volume attached: the VM goes on,
        # zun-compute attaches the volume again (no host mount either).
        self.env.restart_compute(kill=True)
        self.assertEqual('Running', self.show('w1')['status'])
        self.exec_('w1', 'sh', '-c', 'echo second >> /data/f && sync')
        self.assertEqual('in-use', self.cinder.volume(vol['id'])['status'])
        self.assert_never_mounted_on_host(vol['id'])
        # Stop and start: the VM boots again with the same volume.
        self.os('appcontainer', 'stop', '--timeout', '1', 'w1')
        self.wait_status('w1', ('Stopped',))
        self.os('appcontainer', 'start', 'w1')
        self.wait_status('w1', ('Running',))
        self.assertEqual('first\nsecond',
                         self.exec_('w1', 'cat', '/data/f')[1].strip())

        self.delete_container('w1')
        # A user's volume is never deleted with the container.
        self.wait_volume(vol['id'], 'available')
        self.run_container('w2', '--mount',
                           'source=%s,destination=/data' % name,
                           'busybox', 'sleep', '600')
        self.wait_status('w2', ('Running',))
        self.assertEqual('first\nsecond',
                         self.exec_('w2', 'cat', '/data/f')[1].strip())
        self.delete_container('w2')
        self.wait_volume(vol['id'], 'available')

    def test_dynamic_volume_lives_and_dies_with_its_container(self):
        self.run_container('dyn', '--mount', 'size=1,destination=/scratch',
                           'busybox', 'sleep', '600')
        info = self.wait_status('dyn', ('Running',))
        attached = [v for v in self.osj('volume', 'list', '-f', 'json',
                                        '--long')
                    if v['Status'] == 'in-use' and
                    [a['server_id'] for a in v['Attached to']] ==
                    [info['uuid']]]
        self.assertEqual(1, len(attached), attached)
        volume_id = attached[0]['ID']
        self.exec_('dyn', 'sh', '-c', 'echo x > /scratch/x')
        self.assertIn('/scratch', self.exec_('dyn', 'cat',
                                             '/proc/mounts')[1])
        self.assert_never_mounted_on_host(volume_id)
        self.delete_container('dyn')
        self.wait_volume_gone(volume_id)

    def test_injected_file(self):
        local = os.path.join(self.work, 'app.conf')
        with open(local, 'w') as f:
            f.write('greeting = hello from the host\n')
        self.run_container('inj', '--mount',
                           'type=bind,source=%s,destination=/etc/app.conf'
                           % local, 'busybox', 'sleep', '600')
        self.wait_status('inj', ('Running',))
        # (the client adds a newline to what exec printed)
        self.assertEqual('greeting = hello from the host',
                         self.exec_('inj', 'cat', '/etc/app.conf')[1].strip())
        # The container's writes reach the host copy (zun's volume_dir).
        self.exec_('inj', 'sh', '-c', 'echo changed >> /etc/app.conf')
        copies = glob.glob(os.path.join(self.volume_dir, '*', '*'))
        self.assertEqual(1, len(copies), copies)
        with open(copies[0]) as f:
            self.assertEqual('greeting = hello from the host\nchanged\n',
                             f.read())
        # Nothing else of the host is there: the export is that file.
        out = self.exec_('inj', 'ls', '-a', '/etc')[1]
        self.assertNotIn(os.path.basename(copies[0]), out)
        self.delete_container('inj')
        self.assertEqual([], glob.glob(os.path.join(self.volume_dir, '*')))

    def test_guest_crafted_filesystem_is_never_mounted_on_the_host(self):
        name = 'kzh-%s' % uuid.uuid4().hex[:6]
        vol = self.osj('volume', 'create', '-f', 'json', '--size', '1',
                       name)
        self.addCleanup(self.os, 'volume', 'delete', vol['id'],
                        check=False)
        self.wait_volume(vol['id'], 'available')
        # The guest (root, every capability) replaces the file system
        # with a crafted one: an ext4 magic over garbage metadata.
        script = (
            'dev=$(awk \'$2 == "/data" {print $1}\' /proc/mounts); '
            'n=${dev#/dev/}; umount /data && '
            'mknod /tmp/disk b $(tr : " " < /sys/class/block/$n/dev) && '
            'dd if=/dev/urandom of=/tmp/disk bs=4096 count=64 '
            'conv=fsync 2>/dev/null && '
            'printf "\\123\\357" | dd of=/tmp/disk bs=1 seek=1080 '
            'conv=notrunc,fsync 2>/dev/null && echo crafted; sleep 600')
        self.run_container('evil', '--privileged', '--mount',
                           'source=%s,destination=/data' % name,
                           'busybox', 'sh', '-c', script)
        self.wait_status('evil', ('Running',))
        deadline = time.time() + STATUS_TIMEOUT
        while 'crafted' not in self.os('appcontainer', 'logs', 'evil')[1]:
            self.assertLess(time.time(), deadline,
                            self.os('appcontainer', 'logs', 'evil')[1])
            time.sleep(1)
        self.assert_never_mounted_on_host(vol['id'])
        self.delete_container('evil')
        self.wait_volume(vol['id'], 'available')
        self.assert_never_mounted_on_host(vol['id'])
        # The next container gets the crafted volume in its VM; only the
        # guest kernel parses it, and says no.
        self.run_container('next', '--mount',
                           'source=%s,destination=/data' % name,
                           'busybox', 'true')
        info = self.wait_status('next', ('Error',))
        self.assertIn('/data', info['status_reason'] or '', info)
        self.assert_never_mounted_on_host(vol['id'])
        self.delete_container('next')
        self.wait_volume(vol['id'], 'available')

    def test_disk_size(self):
        self.run_container('big', '--disk', '5', 'busybox', 'sleep', '600')
        info = self.wait_status('big', ('Running',))
        self.assertEqual(5, int(info['disk']))
        out = self.exec_('big', 'df', '-k', '/')[1].strip().splitlines()
        total_kib = int(out[-1].split()[1])
        # A 5 GiB ext4 layer, less the file system's own metadata.
        self.assertGreater(total_kib, 0.95 * 5 * 1024 * 1024, out)
        self.assertLessEqual(total_kib, 5 * 1024 * 1024, out)
        self.delete_container('big')

    def test_runtime_runc_is_not_run_here(self):
        # (Not a volume test: it only needs a real zun-api and scheduler.)
        # This host runs only kata: --runtime runc finds no host, with
        # zun's reason, instead of running in kata.
        self.run_container('runc1', '--runtime', 'runc', 'busybox', 'true')
        deadline = time.time() + STATUS_TIMEOUT
        while self.show('runc1')['status'] != 'Error':
            self.assertLess(time.time(), deadline, self.show('runc1'))
            time.sleep(1)
        info = self.show('runc1')
        self.assertIn('host', info['status_reason'], info)
        self.assertIsNone(info['host'], info)

    # -- capsules

    def kz(self, *args):
        """The kata-zun CLI on zun-compute's state (the host's view)."""
        r = subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                            '--config-file', self.env.conf_path] +
                           list(args), capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(0, r.returncode, 'kata-zun %s: %s' % (
            ' '.join(args), r.stderr))
        return r.stdout

    def create_capsule(self, template):
        path = os.path.join(self.work, 'capsule-%s.yaml' %
                            uuid.uuid4().hex[:6])
        with open(path, 'w') as f:
            f.write(template)
        info = self.osj('capsule', 'create', '-f', 'json', '--file', path)
        self.addCleanup(self.os, 'capsule', 'delete', info['uuid'],
                        check=False)
        return info['uuid']

    def capsule(self, ref):
        info = self.env.show('capsules', ref)
        self.assertIsNotNone(info, 'no capsule %s' % ref)
        return info

    def wait_capsule(self, ref, want):
        deadline = time.time() + STATUS_TIMEOUT * 2
        while True:
            info = self.capsule(ref)
            if info['status'] in want:
                return info
            self.assertNotIn(info['status'],
                             {'Error', 'Stopped'} - set(want), info)
            self.assertLess(time.time(), deadline, info)
            time.sleep(1)

    def delete_capsule(self, ref, pod_id, member_ids):
        self.os('capsule', 'delete', ref)
        deadline = time.time() + STATUS_TIMEOUT
        while self.env.show('capsules', ref) is not None:
            self.assertLess(time.time(), deadline,
                            'capsule %s still there' % ref)
            time.sleep(1)
        self.assertEqual([], test_pods.pod_leaks(
            self.state_path, self.run_path, pod_id, member_ids))

    def wait_log(self, cid, needle):
        deadline = time.time() + STATUS_TIMEOUT
        while True:
            out = self.kz('logs', cid)
            if needle in out:
                return out
            self.assertLess(time.time(), deadline, out)
            time.sleep(1)

    def test_capsule_init_server_client_in_one_vm(self):
        volumes_before = {v['ID'] for v in self.osj('volume', 'list',
                                                    '-f', 'json')}
        ref = self.create_capsule(CAPSULE % {
            'name': 'web', 'init': 'echo from-init > /data/init.txt',
            'policy': 'Always'})
        info = self.wait_capsule(ref, ('Running',))
        # zun shows each container's own status.
        self.assertEqual(['Stopped'], [c['status'] for c in
                                       info['init_containers']], info)
        self.assertEqual(['Running', 'Running'],
                         [c['status'] for c in info['containers']], info)
        pod = json.loads(self.kz('pod', 'inspect',
                                 'zun-' + info['uuid']))[0]
        pod_id = pod['Id']
        self.assertEqual(info['uuid'].replace('-', ''), pod_id)
        init, = pod['InitContainers']
        server, client = pod['Containers']
        members = [init['Id'], server['Id'], client['Id']]
        self.assertEqual(('exited', 0), (init['Status'], init['ExitCode']))
        # The init container ended before the others started.
        self.assertLessEqual(init['FinishedAt'], server['StartedAt'])
        self.assertLessEqual(init['FinishedAt'], client['StartedAt'])
        # The client reached the server over localhost; both read what
        # the init container wrote in the shared volume.
        out = self.wait_log(client['Id'], 'hello-from-server')
        self.assertIn('client-read-from-init', out)
        self.assertIn('server-read-from-init', self.kz('logs',
                                                       server['Id']))
        # exec in each container, each in its own environment.
        self.assertEqual('from-init', self.kz(
            'exec', server['Id'], 'cat', '/data/init.txt').strip())
        self.assertEqual('client', self.kz(
            'exec', client['Id'], 'sh', '-c', 'echo $ROLE').strip())
        self.assertEqual('', self.kz(
            'exec', server['Id'], 'sh', '-c', 'echo $ROLE').strip())
        # One Cinder volume made for the capsule, one disk of the VM
        # that both containers see (zun-api drops a template's readOnly:
        # a VolumeMapping has no such field), never mounted on the host.
        vol, = [v for v in self.osj('volume', 'list', '-f', 'json')
                if v['ID'] not in volumes_before]
        self.assertEqual('in-use', self.cinder.volume(vol['ID'])['status'])
        self.assert_never_mounted_on_host(vol['ID'])
        self.kz('exec', client['Id'], 'sh', '-c', 'echo c > /data/c')
        self.assertEqual('c', self.kz('exec', server['Id'], 'cat',
                                      '/data/c').strip())
        # Delete: no VM, disk, record or link left; the volume made for
        # it (autoRemove) is deleted.
        self.delete_capsule(ref, pod_id, members)
        self.wait_volume_gone(vol['ID'])

    def test_capsule_with_a_failing_init_container_fails(self):
        ref = self.create_capsule(CAPSULE % {
            'name': 'bad-init', 'init': 'echo no-luck; exit 3',
            # Never: not retried (zun retries init containers 10 times
            # when its policy is Always).
            'policy': 'Never'})
        info = self.wait_capsule(ref, ('Error',))
        self.assertRegex(info['status_reason'],
                         r'^init container \S+ exited with 3', info)
        # The regular containers never ran.
        self.assertEqual(['Created', 'Created'],
                         [c['status'] for c in info['containers']], info)
        pod = json.loads(self.kz('pod', 'inspect',
                                 'zun-' + info['uuid']))[0]
        init, = pod['InitContainers']
        self.assertIn('no-luck', self.kz('logs', init['Id']))
        self.delete_capsule(ref, pod['Id'], [init['Id']] + [
            c['Id'] for c in pod['Containers']])

    def test_capsule_template_errors_make_nothing(self):
        pods_before = self.kz('pod', 'ps', '-q').split()
        # zun-api checks the template against its schema (not the init
        # containers, which its schema does not list): what it checks,
        # it says, and nothing is made.
        no_image = CAPSULE.replace('  containers:\n  - image: busybox\n',
                                   '  containers:\n  - tty: false\n')
        typo = CAPSULE.replace('  containers:\n  - image: busybox\n'
                               '    imagePullPolicy:',
                               '  containers:\n  - image: busybox\n'
                               '    imagePulPolicy:')
        for broken, says in (
                (CAPSULE.replace('kind: capsule', 'kind: pod'),
                 "'pod' is not one of"),
                (no_image, "'image' is a required property"),
                (typo, 'imagePulPolicy')):
            self.assertNotEqual(CAPSULE, broken)
            path = os.path.join(self.work, 'broken.yaml')
            with open(path, 'w') as f:
                f.write(broken % {'name': 'broken', 'init': 'true',
                                  'policy': 'Always'})
            code, out, err = self.os('capsule', 'create', '--file', path,
                                     check=False)
            self.assertNotEqual(0, code, out)
            self.assertIn(says, out + err)
        # An image that exists nowhere: zun's Error with our reason, and
        # not a half-made capsule on the host.
        ref = self.create_capsule(CAPSULE.replace(
            'image: busybox', 'image: no-such-image-kz', 1) % {
                'name': 'no-image', 'init': 'true', 'policy': 'Always'})
        self.assertIn('no-such-image-kz', self.wait_capsule(
            ref, ('Error',))['status_reason'])
        self.assertEqual(pods_before, self.kz('pod', 'ps', '-q').split())
        # Nothing on the host named after it (process, records, links).
        self.assertEqual([], test_pods.pod_leaks(
            self.state_path, self.run_path, ref.replace('-', ''), []))

    def test_capsule_create_cut_by_a_zun_compute_crash(self):
        volumes_before = {v['ID'] for v in self.osj('volume', 'list',
                                                    '-f', 'json')}
        ref = self.create_capsule(CAPSULE % {
            'name': 'crash', 'init': 'sleep 15; echo late > /data/init.txt',
            'policy': 'Always'})
        pod_id = ref.replace('-', '')
        # zun-compute dies in the middle of the capsule's create, while
        # the init container runs.
        deadline = time.time() + STATUS_TIMEOUT * 2
        while True:
            pods = json.loads(self.kz('pod', 'ps', '--format', 'json'))
            init = [p['InitContainers'][0] for p in pods
                    if p['Id'] == pod_id and p['InitContainers']]
            if init and init[0]['Status'] == 'running':
                break
            self.assertLess(time.time(), deadline, pods)
            time.sleep(0.5)
        self.env.restart_compute(kill=True)
        # The VM went on without zun-compute; zun has no recovery for
        # capsules (it would say Creating for ever): the driver's sync
        # takes the capsule over and follows its pod.
        info = self.wait_capsule(ref, ('Running',))
        # Zun keeps the capsule's status and each member's in rows of
        # their own, and the sync that takes the capsule over may save
        # the capsule a moment before its last member (CI, stop 16:
        # Running with the client still Created): the members must all
        # follow within a bounded time.
        deadline = time.time() + STATUS_TIMEOUT
        both = ['Running', 'Running']
        while [c['status'] for c in info['containers']] != both:
            self.assertLess(time.time(), deadline, info)
            self.assertNotIn('Error', [c['status'] for c in
                                       info['containers']], info)
            time.sleep(1)
            info = self.capsule(ref)
        self.assertIsNone(info.get('task_state'))
        self.assertEqual(['Stopped'], [c['status'] for c in
                                       info['init_containers']], info)
        client = info['containers'][1]['uuid'].replace('-', '')
        self.assertIn('client-read-late',
                      self.wait_log(client, 'hello-from-server'))
        members = [c['uuid'].replace('-', '') for c in
                   info['init_containers'] + info['containers']]
        # Delete removes everything: VM, records, the volume made for it.
        self.delete_capsule(ref, pod_id, members)
        for vol in self.osj('volume', 'list', '-f', 'json'):
            if vol['ID'] not in volumes_before:
                self.wait_volume_gone(vol['ID'])
