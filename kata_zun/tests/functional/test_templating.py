"""VM templating with real VMs: clones are fast and never alike.

Every VM of a test here starts from a template of the test's own
(``[kata] template_dir`` under the test's state). The first start of a
shape boots cold and starts a background builder
(:mod:`kata_zun.cmd.templatebuild`); :meth:`TemplatingTestCase.warm`
waits for it. A shim logs "restored from template" for a clone; the
tests check that line so that a silent cold boot can never pass for a
clone.
"""

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import fixtures

from kata_zun.hypervisor import template
from kata_zun.runtime import faultpoint
from kata_zun.tests.functional import base

RESTORED = b'restored from template'
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
COLD = b'booting cold'
BACKGROUND = b'being built in the background'
# A template build is a cold boot and a save of the guest's RAM: far
# longer than that on a loaded TCG host means it is stuck.
BUILD_WAIT = 600


class TemplatingTestCase(base.KataZunFunctionalTest):

    # Tests that leave their template whole share one (built by the
    # first); those that break theirs get their own.
    own_templates = ('test_corrupt_template_falls_back_to_a_cold_boot',
                     'test_missing_ram_falls_back_to_a_cold_boot',
                     'test_killed_builder_leaves_nothing',
                     'test_pod_restores_with_its_containers_apart',
                     'test_guest_build_prebuilds_the_default_shape',
                     'test_templating_off_boots_cold')

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.shared_templates = tempfile.mkdtemp(prefix='kzft',
                                                dir='/dev/shm')

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.shared_templates, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        if self._testMethodName in self.own_templates:
            self.template_dir = os.path.join(self.state_path, 'templates')
        else:
            self.template_dir = os.path.join(self.shared_templates, 't')
        self.configure('template_dir = %s\n' % self.template_dir)
        self.load_busybox()

    def configure(self, text):
        # A second [kata] section: oslo.config merges it with the first.
        with open(self.conf_file, 'a') as f:
            f.write('\n[kata]\n' + text)

    def _dir(self, ref):
        info = json.loads(self.kz('inspect', ref, check=0).out)[0]
        return os.path.join(self.state_path, 'containers', info['Id'])

    def _shim_log(self, ref):
        with open(os.path.join(self._dir(ref), 'shim.log'), 'rb') as f:
            return f.read()

    def assertRestored(self, ref):
        log = self._shim_log(ref)
        self.assertIn(RESTORED, log, log[-3000:])
        self.assertNotIn(COLD, log)

    def _templates(self):
        return [p for p in glob.glob(os.path.join(self.template_dir, '*'))
                if len(os.path.basename(p)) == 16]

    def builders(self):
        """:returns: pids of the background builders of this test."""
        out = subprocess.run(
            ['pgrep', '-f', 'kata_zun.cmd.templatebuild.*%s' %
             self.conf_file], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def wait_built(self):
        """Wait until no builder of this test runs; :returns: the
        templates then.
        """
        deadline = time.monotonic() + BUILD_WAIT
        while self.builders() or template.Store(
                self.template_dir).building():
            self.assertLess(time.monotonic(), deadline, self.build_log())
            time.sleep(0.2)
        return self._templates()

    def build_log(self):
        try:
            with open(os.path.join(self.template_dir, 'build.log')) as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return '(no build.log)'

    def warm(self):
        """Make sure the template of busybox's default shape exists: the
        first start of the shape boots cold at once (never waiting for a
        build) and leaves the build to a background builder.
        """
        if self._templates():
            return
        self.kz('run', '--name', 'warm-up', 'busybox', 'true', check=0)
        log = self._shim_log('warm-up')
        self.assertIn(BACKGROUND, log, log[-3000:])
        self.assertNotIn(RESTORED, log)
        self.assertEqual(1, len(self.wait_built()), self.build_log())
        self.kz('rm', 'warm-up', check=0)

    def test_clones_never_share_randomness_or_identity(self):
        self.warm()
        # What each container reads first, before anything else runs in
        # it: 32 bytes of /dev/urandom, its boot id, machine-id, hostname.
        script = ('head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; '
                  'echo; cat /proc/sys/kernel/random/boot_id; '
                  'cat /etc/machine-id; hostname; '
                  'cat /proc/sys/kernel/random/uuid')
        seen = []
        for name in ('c1', 'c2', 'c3'):
            out = self.kz('run', '--name', name, 'busybox', 'sh', '-c',
                          script, check=0).text.split()
            self.assertEqual(5, len(out), out)
            self.assertEqual(64, len(out[0]))
            self.assertRestored(name)
            seen.append(out)
        # The template was built once and every container restored it.
        self.assertEqual(1, len(self._templates()))
        for column, what in enumerate(('urandom', 'boot_id', 'machine-id',
                                       'hostname', 'kernel uuid')):
            values = [s[column] for s in seen]
            self.assertEqual(len(values), len(set(values)),
                             '%s repeated across clones: %s' % (what,
                                                                values))
        # The clock is the host's, not the template's.
        out = self.kz('run', '--rm', 'busybox', 'date', '+%s', check=0)
        self.assertLess(abs(int(out.text) - time.time()), 30)

    def test_writes_stay_in_their_clone(self):
        self.warm()
        self.kz('run', '-d', '--name', 'writer', 'busybox', 'sh', '-c',
                'echo disk > /written-on-disk; '
                'echo ram > /dev/shm/written-in-ram; '
                'head -c 20000000 /dev/zero > /dev/shm/fill; '
                'echo done; sleep 1000', check=0)
        self.assertRestored('writer')
        self.kz('exec', 'writer', 'sh', '-c', 'cat /written-on-disk '
                '/dev/shm/written-in-ram', check=0)
        # A clone started after those writes sees none of them: neither
        # the template's memory nor its disks took them.
        r = self.kz('run', '--name', 'reader', 'busybox', 'sh', '-c',
                    'ls /written-on-disk /dev/shm/written-in-ram '
                    '/dev/shm/fill; true', check=0)
        self.assertRestored('reader')
        self.assertIn(b'No such file', r.err)
        self.assertNotIn(b'written', r.out)
        # And the writer still has its own.
        r = self.kz('exec', 'writer', 'cat', '/written-on-disk',
                    '/dev/shm/written-in-ram', check=0)
        self.assertEqual(b'disk\nram\n', r.out)

    def _qemu(self, ref):
        info = json.loads(self.kz('inspect', ref, check=0).out)[0]
        pid = info['State']['VMPid']
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return pid, f.read()

    def _open_ram(self, pid, cmdline):
        """:returns: a read-write descriptor (the caller closes it) of
            what QEMU ``pid`` maps as RAM: the inherited descriptor its
            command line names as ``/proc/self/fd/N``.
        """
        self.assertIn(b'mem-path=/proc/self/fd/', cmdline)
        num = int(cmdline.split(b'mem-path=/proc/self/fd/')[1]
                  .split(b',')[0])
        return os.open('/proc/%d/fd/%d' % (pid, num), os.O_RDWR)

    def test_jailed_clones_share_the_sealed_template_ram(self):
        from kata_zun.hypervisor import ramholder
        self.warm()
        for name in ('s1', 's2'):
            self.kz('run', '-d', '--name', name, 'busybox', 'sleep', '1000',
                    check=0)
            self.assertRestored(name)
        [path] = self._templates()
        with open(os.path.join(path, ramholder.HOLDER)) as f:
            holder = json.load(f)
        os.kill(holder['pid'], 0)
        # Out of its starter's cgroup, with the shims (the template was
        # built by a background builder that left its starter's).
        info = json.loads(self.kz('inspect', 's1', check=0).out)[0]
        with open('/proc/%d/cgroup' % info['State']['ShimPid']) as f:
            shim_cgroups = f.read()
        with open('/proc/%d/cgroup' % holder['pid']) as f:
            self.assertEqual(shim_cgroups, f.read())
        self.assertIn('/shims', shim_cgroups)
        for name in ('s1', 's2'):
            pid, cmdline = self._qemu(name)
            # Jailed (its own uid), its RAM the inherited memfd.
            self.assertNotEqual(0, os.stat('/proc/%d' % pid).st_uid)
            # Opened read-write as QEMU does, even by root: the holder's
            # memfd, and nothing about it can be changed.
            fd = self._open_ram(pid, cmdline)
            try:
                st = os.fstat(fd)
                self.assertEqual((holder['dev'], holder['ino']),
                                 (st.st_dev, st.st_ino))
                self.assertEqual(ramholder.SEALS, fcntl.fcntl(
                    fd, ramholder.F_GET_SEALS))
                for change in (lambda: os.pwrite(fd, b'x', 4096),
                               lambda: os.ftruncate(fd, 4096)):
                    self.assertRaises(PermissionError, change)
            finally:
                os.close(fd)
            # Its template pages are mapped by both clones.
            with open('/proc/%d/smaps' % pid) as f:
                smaps = f.read()
            mapping = smaps.split(ramholder.MEMFD_NAME, 1)[1]
            shared = int(mapping.split('Shared_Clean:', 1)[1].split()[0])
            self.assertGreater(shared, 0, mapping[:800])
        # Without the sealed RAM (the holder gone and none can start), a
        # jailed clone loads the whole RAM instead, and says so.
        os.kill(holder['pid'], signal.SIGKILL)
        blocker = os.path.join(path, 'holder.log')
        os.unlink(blocker)
        os.mkdir(blocker)
        try:
            r = self.kz('run', '--name', 's3', 'busybox', 'echo', 'runs',
                        check=0)
        finally:
            os.rmdir(blocker)
        self.assertEqual(b'runs\n', r.out)
        self.assertRestored('s3')
        self.assertIn(b'loading the whole RAM instead', self._shim_log('s3'))

    def test_unjailed_clones_map_the_sealed_ram_never_its_file(self):
        # QEMU opens a RAM file read-write however it maps it, and
        # "discards" what its guest reports free by punching holes in
        # it: an unjailed clone given the template's file would zero
        # those pages under every clone that still maps them (seen with
        # strace before the fix: fallocate(PUNCH_HOLE) = 0 on it).
        from kata_zun.hypervisor import ramholder
        self.warm()
        [path] = self._templates()
        ram = os.path.join(path, ramholder.RAM)
        self.assertTrue(os.path.exists(ram))
        with open(self.conf_file, 'a') as f:
            f.write('\n[kata_jail]\nenabled = false\n')
        self.kz('run', '-d', '--name', 'u1', 'busybox', 'sleep', '1000',
                check=0)
        self.assertRestored('u1')
        pid, cmdline = self._qemu('u1')
        self.assertEqual(0, os.stat('/proc/%d' % pid).st_uid)  # no jail
        self.assertNotIn(ram.encode(), cmdline)
        links = []
        for fd in os.listdir('/proc/%d/fd' % pid):
            try:
                links.append(os.readlink('/proc/%d/fd/%s' % (pid, fd)))
            except OSError:
                pass
        self.assertNotIn(ram, links)
        with open('/proc/%d/maps' % pid) as f:
            maps = f.read()
        self.assertNotIn(ram, maps)
        self.assertIn(ramholder.MEMFD_NAME, maps)
        # The memfd it maps is the holder's, sealed.
        fd = self._open_ram(pid, cmdline)
        try:
            self.assertEqual(ramholder.SEALS,
                             fcntl.fcntl(fd, ramholder.F_GET_SEALS))
        finally:
            os.close(fd)
        self.assertEqual(b'up\n', self.kz('exec', 'u1', 'echo', 'up',
                                          check=0).out)

    def test_disks_have_their_own_size_and_content(self):
        self.warm()
        # The template booted on 1 MiB placeholders: each clone must see
        # its own disks' sizes (the guest probes them again) and data.
        self.kz('run', '-d', '--name', 'small', '--storage-opt',
                'size=300M', 'busybox', 'sleep', '1000', check=0)
        self.kz('run', '-d', '--name', 'large', '--storage-opt',
                'size=700M', 'busybox', 'sleep', '1000', check=0)
        for name, mb in (('small', 300), ('large', 700)):
            self.assertRestored(name)
            rw = os.path.join(self._dir(name), 'rw.img')
            image = json.load(open(os.path.join(
                self._dir(name), 'config.json')))['image']['block_image']
            sizes = self.kz('exec', name, 'sh', '-c',
                            'cat /sys/block/vd*/size', check=0).text.split()
            self.assertEqual(sorted([os.path.getsize(rw) // 512,
                                     os.path.getsize(image) // 512]),
                             sorted(int(s) for s in sizes))
            self.assertEqual(mb * 1024 * 1024, os.path.getsize(rw))
            # The writable layer is usable to its size and holds this
            # container's data.
            df = self.kz('exec', name, 'df', '-k', '/', check=0).text
            total_kb = int(df.splitlines()[1].split()[1])
            self.assertGreater(total_kb, mb * 1024 * 0.8)
            self.assertLess(total_kb, mb * 1024 * 1.01)
            self.kz('exec', name, 'sh', '-c', 'echo %s > /mine' % name,
                    check=0)
        for name in ('small', 'large'):
            r = self.kz('exec', name, 'cat', '/mine', check=0)
            self.assertEqual(name.encode() + b'\n', r.out)
            # The image disk's content is the image's.
            r = self.kz('exec', name, 'ls', '/bin/busybox', check=0)

    def test_corrupt_template_falls_back_to_a_cold_boot(self):
        self.warm()
        self.kz('run', '--name', 'first', 'busybox', 'true', check=0)
        self.assertRestored('first')
        [path] = self._templates()
        # Same size, other bytes, and a meta.json that agrees: only
        # loading it can tell. (The VMs here are jailed clones with the
        # template's sealed RAM: they load the device state.)
        dev = os.path.join(path, 'state.dev')
        os.chmod(dev, 0o600)
        with open(dev, 'r+b') as f:
            f.write(os.urandom(64))
        meta_path = os.path.join(path, 'meta.json')
        with open(meta_path) as f:
            meta = json.load(f)
        meta['files']['state.dev'] = template.file_meta(
            dev, template.STATE_DEV_MAX)
        with open(meta_path, 'w') as f:
            json.dump(meta, f)
        r = self.kz('run', '--name', 'after', 'busybox', 'echo', 'still runs',
                    check=0)
        self.assertEqual(b'still runs\n', r.out)
        log = self._shim_log('after')
        self.assertIn(COLD, log)
        # The broken template is gone; the next start boots cold and
        # has a new one built, which the start after it restores.
        self.assertEqual([], self.wait_built())
        self.warm()
        r = self.kz('run', '--name', 'rebuilt', 'busybox', 'echo', 'ok',
                    check=0)
        self.assertEqual(b'ok\n', r.out)
        self.assertRestored('rebuilt')

    def test_missing_ram_falls_back_to_a_cold_boot(self):
        self.warm()
        [path] = self._templates()
        os.unlink(os.path.join(path, 'ram'))
        r = self.kz('run', '--name', 'after', 'busybox', 'echo', 'runs',
                    check=0)
        self.assertEqual(b'runs\n', r.out)
        # Retired, this start booted cold and a new one is built in the
        # background; the next start restores it.
        log = self._shim_log('after')
        self.assertIn(b'retired', log)
        self.assertIn(BACKGROUND, log)
        self.assertEqual(1, len(self.wait_built()), self.build_log())
        self.kz('run', '--name', 'again', 'busybox', 'true', check=0)
        self.assertRestored('again')

    def test_killed_builder_leaves_nothing(self):
        # SIGKILL the background builder while its VM runs (it stops
        # itself at the template-build fault point, its QEMU up): its
        # QEMU dies with it, no template appears, and the next build
        # (started by the next cold start) removes the dead one's
        # directory.
        with fixtures.EnvironmentVariable(faultpoint.ENV,
                                          'template-build'):
            self.kz('run', '-d', '--name', 'first', 'busybox', 'sleep',
                    '1000', check=0)
        deadline = time.monotonic() + BUILD_WAIT
        while faultpoint.MARKER not in self.build_log().encode():
            self.assertTrue(self.builders(), self.build_log())
            self.assertLess(time.monotonic(), deadline, self.build_log())
            time.sleep(0.1)
        [builder] = self.builders()
        out = subprocess.run(['pgrep', '-P', str(builder)],
                             capture_output=True, text=True).stdout
        qemu = [int(p) for p in out.split()]
        self.assertEqual(1, len(qemu), out)
        os.kill(builder, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while os.path.exists('/proc/%d' % qemu[0]):
            with open('/proc/%d/stat' % qemu[0]) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    break
            self.assertLess(time.monotonic(), deadline,
                            'QEMU %d outlived its builder' % qemu[0])
            time.sleep(0.1)
        self.assertEqual([], self._templates())
        self.assertTrue(glob.glob(os.path.join(self.template_dir,
                                               '*.build-*')))
        self.kz('rm', '-f', 'first', check=0)
        self.warm()
        self.assertEqual([], glob.glob(os.path.join(self.template_dir,
                                                    '*.build-*')))
        self.kz('run', '--name', 'again', 'busybox', 'true', check=0)
        self.assertRestored('again')

    def test_pod_restores_with_its_containers_apart(self):
        # Two pods of one shape (two containers: four disks): the first
        # boots cold and has the shape's template built, the second is
        # restored from it; in each, the client reaches its own pod's
        # server over localhost and each container has its own disks.
        for n, pod in enumerate(('pa', 'pb')):
            self.kz('pod', 'create', '--name', pod, '--restart', 'no',
                    check=0)
            self.kz('run', '--pod', pod, '--name', 'srv', 'busybox', 'sh',
                    '-c', 'mkdir -p /www && echo from-%s > /www/index.html'
                    ' && exec httpd -f -p 8080 -h /www' % pod, check=0)
            self.kz('run', '--pod', pod, '--name', 'cli', 'busybox', 'sh',
                    '-c', 'until wget -q -O - http://localhost:8080/; do '
                    'sleep 0.2; done; test -e /www && echo has-www || '
                    'echo no-www; exec sleep 100000', check=0)
            self.kz('pod', 'start', '--wait', pod, check=0)
            if n == 0:
                self.assertEqual(1, len(self.wait_built()),
                                 self.build_log())
        for pod in ('pa', 'pb'):
            deadline = time.monotonic() + 120
            while True:
                out = self.kz('logs', pod + '-cli', check=0).text
                if '-www' in out or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            self.assertIn('from-%s' % pod, out)
            # /www is the server's, not in the client's writable layer.
            self.assertIn('no-www', out)
        info = json.loads(self.kz('pod', 'inspect', 'pb', check=0).out)[0]
        with open(os.path.join(self.state_path, 'pods', info['Id'],
                               'shim.log'), 'rb') as f:
            log = f.read()
        self.assertIn(RESTORED, log, log[-3000:])
        self.kz('pod', 'rm', '-f', 'pa', 'pb', check=0)

    def test_guest_build_prebuilds_the_default_shape(self):
        # ``guest build`` (the assets exist: nothing to rebuild) has the
        # default shape's template built in the background, so that even
        # the first default container restores one.
        r = self.kz('guest', 'build', check=0)
        self.assertIn(b'being built in the background', r.err)
        self.assertEqual(1, len(self.wait_built()), self.build_log())
        self.kz('run', '--name', 'first', 'busybox', 'true', check=0)
        self.assertRestored('first')

    def test_a_cold_vm_gives_what_its_guest_frees_back(self):
        # Free page reporting (the balloon) returns what a cold VM's
        # guest frees. A clone cannot: QEMU would punch a hole in its
        # template's sealed RAM, which the seal refuses (see
        # kata_zun/hypervisor/template.py).
        self.configure('vm_templating = false\n')
        self.kz('run', '-d', '--name', 'fr', 'busybox', 'sleep', '100000',
                check=0)
        self.assertNotIn(RESTORED, self._shim_log('fr'))
        _pid, cmdline = self._qemu('fr')
        self.assertIn(b'free-page-reporting=on', cmdline)
        before = self._rss_kib('fr')
        # 96 MiB written by a process that then exits: the guest frees
        # them, in blocks large enough to be reported.
        r = self.kz('exec', 'fr', 'dd', 'if=/dev/zero', 'of=/dev/null',
                    'bs=96M', 'count=1', check=0)
        self.assertIn(b'1+0 records out', r.err)
        # The guest reports every 2 s; a loaded host is slower.
        deadline = time.monotonic() + 120
        while (self._rss_kib('fr') > before + 32 * 1024 and
               time.monotonic() < deadline):
            time.sleep(0.5)
        self.assertLess(self._rss_kib('fr'), before + 32 * 1024,
                        'before the dd: %d KiB' % before)

    def _rss_kib(self, ref):
        pid, _cmdline = self._qemu(ref)
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Rss:'):
                    return int(line.split()[1])
        self.fail('no Rss in smaps_rollup of %d' % pid)

    def test_templating_off_boots_cold(self):
        self.configure('vm_templating = false\n')
        r = self.kz('run', '--name', 'cold', 'busybox', 'echo', 'cold',
                    check=0)
        self.assertEqual(b'cold\n', r.out)
        log = self._shim_log('cold')
        self.assertNotIn(RESTORED, log)
        self.assertEqual([], self._templates())
        # Without a network a cold VM has a loopback up, as a clone has
        # (its template brought it up) and as Docker gives one.
        r = self.kz('run', '--rm', '--network', 'none', 'busybox', 'cat',
                    '/sys/class/net/lo/flags', check=0)
        self.assertEqual(IFF_UP | IFF_LOOPBACK, int(r.out, 16) & 0xF)

    def test_a_clone_without_network_has_its_loopback(self):
        self.warm()
        r = self.kz('run', '--name', 'lo', '--network', 'none', 'busybox',
                    'sh', '-c', 'cat /sys/class/net/lo/flags; '
                    'ls /sys/class/net', check=0)
        self.assertRestored('lo')
        flags, names = r.out.split(b'\n', 1)
        self.assertEqual(IFF_UP | IFF_LOOPBACK, int(flags, 16) & 0xF)
        self.assertEqual(b'lo\n', names)
