"""What a jailed QEMU may see, planned from the real binary."""

import json
import os
import shutil

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.jail import rootfs

QEMU = shutil.which('qemu-system-x86_64') or '/usr/bin/qemu-system-x86_64'


class PlanTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if not os.path.exists(QEMU):
            self.skipTest('QEMU is not installed')
        self.dir = self.useFixture(fixtures.TempDir()).path
        for name in ('vmlinux', 'initrd.img'):
            open(os.path.join(self.dir, name), 'w').close()

    def test_plan_lists_only_what_qemu_needs(self):
        plan = rootfs.plan(os.path.join(self.dir, 'root'), QEMU,
                           os.path.join(self.dir, 'vmlinux'),
                           os.path.join(self.dir, 'initrd.img'),
                           data_dirs=('/usr/share/qemu', '/nonexistent'))
        targets = {b.target: b for b in plan.binds}
        self.assertEqual('/guest/vmlinux', plan.kernel)
        self.assertEqual('/guest/initrd.img', plan.initrd)
        self.assertFalse(targets['/guest/vmlinux'].executable)
        self.assertTrue(targets[os.path.realpath(QEMU)].executable)
        self.assertIn('/usr/share/qemu', targets)
        self.assertNotIn('/nonexistent', targets)
        libs = [b for b in plan.binds if '.so' in b.target]
        self.assertTrue(any('ld-linux' in b.target for b in libs))
        self.assertTrue(any('libc.so' in b.target for b in libs))
        for bind in plan.binds:
            self.assertTrue(os.path.isabs(bind.target))
            self.assertFalse(bind.device)
            # Nothing of the host's configuration, state or secrets.
            for prefix in ('/etc', '/var', '/proc', '/sys', '/root',
                           '/home', '/run', '/tmp'):
                self.assertFalse(bind.target.startswith(prefix + '/'),
                                 bind.target)

    def test_kvm_device_only_when_asked(self):
        plan = rootfs.plan(os.path.join(self.dir, 'root'), QEMU,
                           os.path.join(self.dir, 'vmlinux'),
                           os.path.join(self.dir, 'initrd.img'),
                           devices=('/dev/kvm',))
        devices = [b for b in plan.binds if b.device]
        self.assertEqual(['/dev/kvm'], [b.target for b in devices])

    def test_library_list_is_cached_for_the_same_binary(self):
        cache = os.path.join(self.dir, 'libs.json')
        rootfs._ldd_cache.clear()
        first = rootfs.libraries(QEMU, cache)
        rootfs._ldd_cache.clear()
        with fixtures.MockPatch('subprocess.run') as run:
            self.assertEqual(first, rootfs.libraries(QEMU, cache))
            self.assertFalse(run.mock.called)
        # A lying cache (another binary's key, or relative paths) is not
        # believed.
        with open(cache, 'w') as f:
            f.write('{"key": ["/bin/true", 1, 2, 3], '
                    '"libraries": ["evil.so"]}')
        rootfs._ldd_cache.clear()
        self.assertEqual(first, rootfs.libraries(QEMU, cache))

    def test_not_a_dynamic_binary(self):
        script = os.path.join(self.dir, 'qemu')
        with open(script, 'w') as f:
            f.write('#!/bin/sh\n')
        os.chmod(script, 0o755)
        self.assertRaises(exception.JailError, rootfs.libraries, script)


class OwnProcTestCase(base.BaseTestCase):
    """The /proc a jailed clone gets to reopen its inherited RAM: only its
    own processes, nothing system-wide, read-only (a real jail entered
    by a forked child, as root).
    """

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0 or not os.path.exists(QEMU):
            self.skipTest('needs root and QEMU')
        self.dir = self.useFixture(fixtures.TempDir()).path
        for name in ('vmlinux', 'initrd.img'):
            open(os.path.join(self.dir, name), 'w').close()
        os.mkdir(os.path.join(self.dir, 'root'), 0o700)

    def _in_jail(self, own_proc, probe):
        plan = rootfs.plan(os.path.join(self.dir, 'root'), QEMU,
                           os.path.join(self.dir, 'vmlinux'),
                           os.path.join(self.dir, 'initrd.img'),
                           own_proc=own_proc)
        memfd = os.memfd_create('probe')
        os.ftruncate(memfd, 4096)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(rfd)
                rootfs.enter(plan)
                os.setresgid(65533, 65533, 65533)
                os.setresuid(65533, 65533, 65533)
                os.write(wfd, json.dumps(probe(memfd)).encode())
            except BaseException as exc:
                os.write(wfd, json.dumps(['error', str(exc)]).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        os.close(memfd)
        data = b''
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
        os.close(rfd)
        os.waitpid(pid, 0)
        return json.loads(data.decode())

    def test_own_proc_shows_only_itself(self):
        def probe(memfd):
            names = sorted(os.listdir('/proc'))
            rw = os.open('/proc/self/fd/%d' % memfd, os.O_RDWR)
            os.close(rw)
            try:
                open('/proc/meminfo').close()
                meminfo = 'readable'
            except OSError:
                meminfo = 'hidden'
            try:
                os.mkdir('/proc/x')
                mkdir = 'made'
            except OSError:
                mkdir = 'refused'
            return names, str(os.getpid()), meminfo, mkdir
        names, me, meminfo, mkdir = self._in_jail(True, probe)
        self.assertEqual(sorted([me, 'self', 'thread-self']), names)
        self.assertEqual('hidden', meminfo)
        self.assertEqual('refused', mkdir)

    def test_no_proc_unless_asked(self):
        self.assertIs(False, self._in_jail(
            False, lambda memfd: os.path.exists('/proc/self')))
