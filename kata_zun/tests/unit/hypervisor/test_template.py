import dataclasses
import fcntl
import json
import os
import threading
import time
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.hypervisor.qemu import argv
from kata_zun.hypervisor.qemu import clone
from kata_zun.hypervisor.qemu import vm
from kata_zun.hypervisor import template

QEMU = '/usr/bin/qemu-system-x86_64'


def _config(tmp, **kwargs):
    for name in ('vmlinux', 'initrd.img', 'qemu'):
        path = os.path.join(tmp, name)
        if not os.path.exists(path):
            with open(path, 'w') as f:
                f.write(name)
    values = dict(name='sb1', vcpus=1, memory_mb=1, kernel=tmp + '/vmlinux',
                  initrd=tmp + '/initrd.img', run_dir='/run/kz/sb1',
                  console_log='/var/log/kz/sb1/console.log',
                  disks=(hv_base.Disk('/img/rootfs.erofs', 'rootfs', True),
                         hv_base.Disk('/var/lib/kz/rw.img', 'rw0')))
    values.update(kwargs)
    return hv_base.VMConfig(**values)


def _key(tmp, **kwargs):
    config = _config(tmp, **kwargs)
    return template.key_for(config, 'tcg', 'microvm', 'max', tmp + '/qemu',
                            64, True, ('console=ttyS0',))


def _fake_build(work, memory_mb=1, state=b'device state'):
    with open(os.path.join(work, template.RAM), 'wb') as f:
        f.truncate(memory_mb * 1024 * 1024)
    with open(os.path.join(work, template.STATE_DEV), 'wb') as f:
        f.write(state)
    with open(os.path.join(work, template.STATE_FULL), 'wb') as f:
        f.write(state * 3)


class TemplateArgvTestCase(base.BaseTestCase):
    """Goldens of the template and clone command lines: the same machine
    as a cold boot but for the RAM and ``-incoming``.
    """

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        # The balloon part has its own golden (test_argv).
        self.cfg.config(tsc_khz=2596138, free_page_reporting=False,
                        group='kata_hypervisor')

    def _common(self, memory):
        return [
            QEMU,
            '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
            '-name', 'sb1,debug-threads=on',
            '-machine', 'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,'
                        'isa-serial=on,acpi=on,pcie=on,memory-backend=mem',
            '-accel', 'tcg,tb-size=64',
            '-cpu', 'max,-erms,-fsrm',
        ] + memory + [
            '-smp', '1',
            '-kernel', '/guest/vmlinux', '-initrd', '/guest/initrd.img',
            '-append', 'console=ttyS0 reboot=k panic=-1 tsc_early_khz=2596138 '
                       'cryptomgr.notests tsc=reliable rdinit=/init quiet '
                       'pcie_ports=native',
            '-chardev', 'socket,id=console,fd=7,server=off',
            '-serial', 'chardev:console',
            '-chardev', 'socket,id=qmp,fd=5,server=on,wait=off',
            '-mon', 'chardev=qmp,mode=control',
            '-device', 'virtio-serial-device,id=vser0,max_ports=2',
            '-chardev', 'socket,id=agent,fd=6,server=on,wait=off',
            '-device', 'virtserialport,bus=vser0.0,chardev=agent,'
                       'name=agent.0',
            '-add-fd', 'fd=8,set=1',
            '-blockdev', '{"driver":"raw","node-name":"disk0",'
                         '"read-only":true,"file":{"driver":"file",'
                         '"filename":"/dev/fdset/1"}}',
            '-device', 'virtio-blk-device,drive=disk0,serial=rootfs',
        ] + [arg for i in range(argv.MAX_PCI_SLOTS)
             for arg in ('-device', 'pcie-root-port,id=rp%d,bus=pcie.0,'
                         'chassis=%d,slot=%d' % (i, i + 1, i + 1))]

    def _argv(self, memory, incoming):
        tmp = self.useFixture(fixtures.TempDir()).path
        config = template.template_config(_config(
            tmp, name='sb1', memory_mb=512,
            disks=(hv_base.Disk('/img/rootfs.erofs', 'rootfs', True),),
            nics=(hv_base.Nic('kzt0123456789ab', '02:6b:0a:58:00:02'),)))
        handles = argv.Handles('/guest/vmlinux', '/guest/initrd.img',
                               qmp_fd=5, agent_fd=6, console_fd=7,
                               disk_fds=(8,))
        return argv.build_argv(config, 'tcg', 'microvm', 'max', QEMU,
                               handles=handles, tcg_cache_mb=64,
                               memory=memory, incoming=incoming)

    def test_template_ram_is_a_shared_file(self):
        got = self._argv(argv.FileMemory(512, '/dev/shm/t/ab,c/ram', True),
                         False)
        self.assertEqual(self._common([
            '-m', '512M', '-object',
            'memory-backend-file,id=mem,size=512M,'
            'mem-path=/dev/shm/t/ab,,c/ram,share=on,prealloc=off']) +
            list(argv.Sandbox().args()), got)

    def test_clone_maps_the_sealed_ram_private(self):
        got = self._argv(argv.SealedMemory(512, 9), True)
        self.assertEqual(self._common([
            '-m', '512M', '-object',
            'memory-backend-file,id=mem,size=512M,'
            'mem-path=/proc/self/fd/9,share=off,prealloc=off']) +
            ['-incoming', 'defer'] + list(argv.Sandbox().args()), got)
        self.assertEqual((9,), argv.SealedMemory(512, 9).fds())
        self.assertRaises(exception.HypervisorError,
                          argv.SealedMemory(512, 1).args)

    def test_clone_without_sealed_ram_has_private_memfd_ram(self):
        got = self._argv(None, True)
        self.assertEqual(self._common([
            '-m', '512M', '-object',
            'memory-backend-memfd,id=mem,size=512M']) +
            ['-incoming', 'defer'] + list(argv.Sandbox().args()), got)

    def test_template_shape_has_no_nic_and_all_slots(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        config = _config(tmp, nics=(hv_base.Nic('kzt1', '02:00:00:00:00:01'),))
        shaped = template.template_config(config)
        self.assertEqual((), shaped.nics)
        self.assertEqual(argv.MAX_PCI_SLOTS, shaped.pci_slots)
        self.assertEqual(config.disks, shaped.disks)

    def test_unsupported_shapes(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        self.assertIsNone(template.unsupported(_config(tmp), 'microvm'))
        self.assertIn('microvm', template.unsupported(_config(tmp), 'q35'))
        shared = _config(tmp, shared_dirs=(hv_base.SharedDir('/x', 't'),))
        self.assertIn('virtio-fs', template.unsupported(shared, 'microvm'))
        one = _config(tmp, nics=(hv_base.Nic('kzt1', '02:00:00:00:00:01'),))
        self.assertIsNone(template.unsupported(one, 'microvm'))
        many = _config(tmp, nics=tuple(
            hv_base.Nic('kzt%d' % i, '02:00:00:00:00:%02x' % i)
            for i in range(argv.MAX_PCI_SLOTS + 1)))
        self.assertIn('slots', template.unsupported(many, 'microvm'))


class KeyTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def test_same_machine_same_digest(self):
        one = _key(self.tmp)
        two = _key(self.tmp, name='other', run_dir='/run/kz/other',
                   disks=(hv_base.Disk('/img/b.erofs', 'x', True),
                          hv_base.Disk('/var/lib/kz/rw2.img', 'y')),
                   nics=(hv_base.Nic('kzt1', '02:00:00:00:00:01'),))
        # Names, paths, serials and NICs are the clone's own.
        self.assertEqual(one.digest, two.digest)
        self.assertEqual(16, len(one.digest))

    def test_what_changes_the_machine_changes_the_digest(self):
        one = _key(self.tmp)
        self.assertNotEqual(one.digest, _key(self.tmp, memory_mb=2).digest)
        self.assertNotEqual(one.digest, _key(self.tmp, vcpus=2).digest)
        self.assertNotEqual(one.digest, _key(self.tmp, disks=(
            hv_base.Disk('/img/rootfs.erofs', 'rootfs', True),)).digest)
        self.assertNotEqual(one.digest, _key(self.tmp, disks=(
            hv_base.Disk('/img/rootfs.erofs', 'rootfs', False),
            hv_base.Disk('/var/lib/kz/rw.img', 'rw0'))).digest)
        self.assertNotEqual(one.digest, dataclasses.replace(
            one, kernel_params=('console=ttyS0', 'x')).digest)
        self.assertNotEqual(one.digest, dataclasses.replace(
            one, accel='kvm').digest)
        # New guest assets (another kernel file) are another template.
        time.sleep(0.01)
        with open(os.path.join(self.tmp, 'vmlinux'), 'w') as f:
            f.write('a new kernel')
        self.assertNotEqual(one.digest, _key(self.tmp).digest)


class StoreTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.root = os.path.join(self.tmp, 'templates')
        self.store = template.Store(self.root)
        self.key = _key(self.tmp)

    def test_built_once_then_found_and_indexed(self):
        builds = []

        def build(work):
            builds.append(work)
            _fake_build(work)
        first = self.store.get_or_build(self.key, build)
        second = self.store.get_or_build(self.key, build)
        self.assertEqual(1, len(builds))
        self.assertEqual(first, second)
        self.assertEqual(os.path.join(self.root, self.key.digest),
                         first.path)
        self.assertTrue(os.path.isfile(first.ram))
        index = self.store.read_index()
        self.assertIn(self.key.digest, index)
        self.assertIn('last_used', index[self.key.digest])
        self.assertEqual(0o700, os.stat(self.root).st_mode & 0o777)
        # No build directory is left over.
        self.assertEqual(
            sorted([self.key.digest, self.key.digest + '.lock',
                    'index.json', 'index.lock']),
            sorted(os.listdir(self.root)))

    def test_concurrent_first_uses_build_once(self):
        builds = []
        gate = threading.Event()

        def build(work):
            builds.append(work)
            gate.wait(5)
            _fake_build(work)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            self.store.get_or_build(self.key, build))) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        # Nobody sees the template while it is being built.
        self.assertIsNone(self.store.find(self.key))
        gate.set()
        for t in threads:
            t.join(10)
        self.assertEqual(1, len(builds))
        self.assertEqual(3, len(results))
        self.assertEqual(1, len(set(results)))

    def test_failed_build_leaves_nothing(self):
        def build(work):
            _fake_build(work)
            raise template.TemplateError(reason='boom')
        self.assertRaises(template.TemplateError, self.store.get_or_build,
                          self.key, build)
        self.assertIsNone(self.store.find(self.key))
        self.assertEqual([], [n for n in os.listdir(self.root)
                              if 'build' in n or len(n) == 16])

    def test_incomplete_build_is_refused(self):
        def build(work):
            _fake_build(work)
            os.unlink(os.path.join(work, template.STATE_FULL))
        self.assertRaises(OSError, self.store.get_or_build, self.key, build)
        self.assertIsNone(self.store.find(self.key))

    def test_corrupt_state_is_retired(self):
        tmpl = self.store.get_or_build(self.key, _fake_build)
        os.chmod(tmpl.state_dev, 0o600)
        with open(tmpl.state_dev, 'r+b') as f:
            f.write(b'X')           # same size, other content
        exc = self.assertRaises(template.TemplateError, self.store.find,
                                self.key)
        self.assertIn('corrupt', str(exc))
        self.assertFalse(os.path.exists(tmpl.path))
        self.assertNotIn(self.key.digest, self.store.read_index())
        # The next use builds it again.
        builds = []
        self.store.get_or_build(self.key, lambda w: (builds.append(w),
                                                     _fake_build(w)))
        self.assertEqual(1, len(builds))

    def test_truncated_ram_and_missing_files_are_refused(self):
        tmpl = self.store.get_or_build(self.key, _fake_build)
        os.truncate(tmpl.ram, 4096)
        self.assertRaises(template.TemplateError, self.store.verify,
                          self.key, tmpl.path)
        tmpl = self.store.get_or_build(self.key, _fake_build)
        os.unlink(tmpl.state_full)
        self.assertRaises(template.TemplateError, self.store.verify,
                          self.key, tmpl.path)

    def test_mismatched_key_is_refused(self):
        tmpl = self.store.get_or_build(self.key, _fake_build)
        other = dataclasses.replace(self.key, vcpus=4)
        exc = self.assertRaises(template.TemplateError, self.store.verify,
                                other, tmpl.path)
        self.assertIn('another machine', str(exc))

    def test_unreadable_index_is_an_empty_one(self):
        self.store.get_or_build(self.key, _fake_build)
        with open(os.path.join(self.root, 'index.json'), 'w') as f:
            f.write('{not json')
        self.assertEqual({}, self.store.read_index())
        # The template itself is still found (and recorded again).
        self.assertIsNotNone(self.store.find(self.key))
        self.store.touch(self.key.digest)
        self.assertIn(self.key.digest, self.store.read_index())

    def test_foreign_root_refused(self):
        os.makedirs(self.root)
        os.chmod(self.root, 0o777)
        self.assertRaises(template.TemplateError, self.store.get_or_build,
                          self.key, _fake_build)

    def test_bad_digest_never_makes_a_path(self):
        for bad in ('../../etc', 'ABCDEF0123456789', '0' * 15, '0' * 17):
            self.assertRaises(template.TemplateError, self.store.path, bad)

    def test_gc_by_age_count_and_dead_builds(self):
        keys = [dataclasses.replace(self.key, vcpus=i) for i in range(1, 5)]
        for k in keys:
            self.store.get_or_build(k, _fake_build)
        now = time.time()
        index = self.store.read_index()
        for age, k in zip((10, 20, 30, 10 ** 6), keys):
            index[k.digest]['last_used'] = now - age
        with open(os.path.join(self.root, 'index.json'), 'w') as f:
            json.dump(index, f)
        dead = os.path.join(self.root, keys[0].digest + '.build-999999999')
        os.mkdir(dead)
        removed = self.store.gc(now=now, max_count=2, max_age=1000)
        # The oldest by age, the third by count; the two newest stay.
        self.assertEqual(sorted([keys[2].digest, keys[3].digest]),
                         sorted(removed))
        self.assertFalse(os.path.exists(dead))
        left = sorted(n for n in os.listdir(self.root) if len(n) == 16)
        self.assertEqual(sorted([keys[0].digest, keys[1].digest]), left)
        self.assertEqual(sorted(left), sorted(self.store.read_index()))

    def _lock(self, digest):
        return os.path.join(self.root, digest + '.lock')

    def _held(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def test_gc_removes_lock_files_of_templates_gone(self):
        # Regression: every template ever built left an empty
        # <digest>.lock behind in the store (a tmpfs by default).
        keys = [dataclasses.replace(self.key, vcpus=i) for i in range(1, 4)]
        for k in keys:
            self.store.get_or_build(k, _fake_build)
        self.store.retire(keys[0].digest)
        # keys[1]'s template is gone too, but someone holds its lock (a
        # build of it is starting).
        self.store.retire(keys[1].digest)
        held = os.open(self._lock(keys[1].digest), os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            self.store.gc()
        finally:
            os.close(held)
        self.assertFalse(os.path.exists(self._lock(keys[0].digest)))
        self.assertTrue(os.path.exists(self._lock(keys[1].digest)))
        # keys[2]'s template exists: its lock stays.
        self.assertTrue(os.path.exists(self._lock(keys[2].digest)))
        # Released, and then the last template gone: nothing is left.
        self.store.gc()
        self.assertFalse(os.path.exists(self._lock(keys[1].digest)))
        self.store.retire(keys[2].digest)
        self.store.gc()
        self.assertEqual(['index.json', 'index.lock'],
                         sorted(os.listdir(self.root)))

    def test_a_lock_removed_under_a_builder_is_taken_again(self):
        # A builder opened <digest>.lock; the GC removed it before the
        # builder locked it. The builder must not build holding the lock
        # of a file no one else can open: it locks the new one.
        real_flock = fcntl.flock
        lock = self._lock(self.key.digest)
        self.store.ensure_root()
        open(lock, 'w').close()
        raced = []

        def flock(fd, op):
            if not raced and os.path.realpath(
                    '/proc/self/fd/%d' % fd) == lock:
                raced.append(True)
                self.store.gc()             # no template: lock removed
                self.assertFalse(os.path.exists(lock))
            return real_flock(fd, op)
        seen = []

        def build(work):
            seen.append(self._held(lock))
            _fake_build(work)
        with mock.patch.object(template.fcntl, 'flock', flock):
            self.store.get_or_build(self.key, build)
        self.assertEqual([True], raced)
        self.assertEqual([True], seen)
        self.assertTrue(os.path.exists(lock))


class _StoreTestCase(base.BaseTestCase):
    """A template store of its own, and TCG."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(template_dir=os.path.join(self.tmp, 't'),
                        group='kata')
        self.cfg.config(accelerator='tcg', tsc_khz=1000,
                        group='kata_hypervisor')
        # No holder processes here (test_sealedram runs them).
        self.open_ram = self.useFixture(fixtures.MockPatchObject(
            clone.sealedram, 'open_ram', side_effect=(
                clone.sealedram.SealedRamError(reason='not here'))
        )).mock


class TryRestoreTestCase(_StoreTestCase):
    """Whatever goes wrong with a template, the caller boots cold."""

    def setUp(self):
        super().setUp()
        self.hv = mock.Mock(machine_type='microvm', qemu_path=QEMU,
                            cpu_model='max', jailed=True)
        self.log = self.useFixture(fixtures.FakeLogger())

    def test_no_template_boots_cold_and_builds_in_the_background(self):
        config = _config(self.tmp)
        with mock.patch.object(clone.templatebuild, 'spawn',
                               return_value=True) as spawn:
            self.assertIsNone(clone.try_restore(self.hv, config))
        self.hv.launch.assert_not_called()
        self.assertIn('being built in the background', self.log.output)
        spec = spawn.call_args[0][0]
        key = clone.template_key(self.hv, config)
        self.assertEqual(key.digest, spec['digest'])
        # The builder rebuilds the same shape, hence the same key, from
        # the spec alone (through JSON, as on its command line).
        again = clone.config_from_spec(json.loads(json.dumps(spec)),
                                       self.tmp)
        self.assertEqual(key, clone.template_key(self.hv, again))

    def test_no_second_builder_while_one_builds(self):
        store = template.Store()
        store.ensure_root()
        fd = os.open(os.path.join(store.root, template.BUILD_LOCK),
                     os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with mock.patch.object(clone.templatebuild, 'spawn') as spawn:
            self.assertIsNone(clone.try_restore(self.hv, _config(self.tmp)))
        spawn.assert_not_called()
        self.assertIn('another template is being built', self.log.output)
        # A builder started anyway builds nothing and does not wait.
        key = clone.template_key(self.hv, _config(self.tmp))
        self.assertIsNone(store.build_if_idle(key, _fake_build))
        self.assertIsNone(store.find(key))

    def test_builder_refuses_another_shape_and_bad_specs(self):
        config = _config(self.tmp)
        with mock.patch.object(clone, 'build') as build:
            self.assertIsNone(clone.build_now(self.hv, config, '0' * 16))
        build.assert_not_called()
        spec = clone.build_spec(config, clone.template_key(self.hv, config))
        for bad in ({'vcpus': '2'}, {'vcpus': True}, {'disks': 'x'},
                    {'disks': [1]}, {'disks': [True] * 65},
                    {'kernel_params': [3]}, {'kernel': None}):
            self.assertRaises(ValueError, clone.config_from_spec,
                              dict(spec, **bad), self.tmp)

    def test_builder_builds_once(self):
        config = _config(self.tmp)
        key = clone.template_key(self.hv, config)
        with mock.patch.object(clone, 'build', side_effect=lambda hv, c, w:
                               _fake_build(w, memory_mb=1)) as build:
            tmpl = clone.build_now(self.hv, config, key.digest)
            self.assertEqual(key, tmpl.key)
            self.assertEqual(tmpl, clone.build_now(self.hv, config,
                                                   key.digest))
        self.assertEqual(1, build.call_count)

    def test_shared_dirs_boot_cold_quietly(self):
        config = _config(self.tmp,
                         shared_dirs=(hv_base.SharedDir('/x', 't'),))
        self.assertIsNone(clone.try_restore(self.hv, config))
        self.assertNotIn('WARNING', self.log.output)
        self.hv.launch.assert_not_called()

    def test_sealed_ram_is_closed_when_the_restore_fails(self):
        config = _config(self.tmp)
        given = []

        def open_ram(*args):
            given.append(os.open(os.devnull, os.O_RDONLY))
            return given[-1]
        self.open_ram.side_effect = open_ram
        with mock.patch.object(clone, 'build', side_effect=lambda hv, c, w:
                               _fake_build(w, memory_mb=1)), \
                mock.patch.object(clone, 'restore', side_effect=(
                    exception.HypervisorError(reason='no QEMU'))):
            clone.build_now(self.hv, config,
                            clone.template_key(self.hv, config).digest)
            self.assertIsNone(clone.try_restore(self.hv, config))
        # The build's (it only has the holder started) and the clone's.
        self.assertEqual(2, len(given))
        for fd in given:
            self.assertRaises(OSError, os.fstat, fd)
        self.assertIn('no QEMU', self.log.output)

    def test_a_jailed_build_has_its_sealed_ram_made(self):
        config = _config(self.tmp)
        with mock.patch.object(clone, 'build', side_effect=lambda hv, c, w:
                               _fake_build(w, memory_mb=1)):
            tmpl = clone.build_now(self.hv, config,
                                   clone.template_key(self.hv, config).digest)
        self.open_ram.assert_called_once_with(
            tmpl.path, config.memory_mb * 1024 * 1024,
            clone.SEALED_RAM_TIMEOUT)
        # It could not be made: said, and a clone loads the whole RAM.
        self.assertIn('loading the whole RAM instead', self.log.output)

    def test_restore_failure_retires_the_template(self):
        config = _config(self.tmp)
        with mock.patch.object(clone, 'build', side_effect=lambda hv, c, w:
                               _fake_build(w, memory_mb=1)), \
                mock.patch.object(clone, 'restore', side_effect=(
                    clone.TemplateLoadError(reason='bad state'))):
            clone.build_now(self.hv, config,
                            clone.template_key(self.hv, config).digest)
            self.assertIsNone(clone.try_restore(self.hv, config))
        self.assertIn('bad state', self.log.output)
        self.assertEqual([], [n for n in os.listdir(
            os.path.join(self.tmp, 't')) if len(n) == 16])


class AdmissionHookTestCase(_StoreTestCase):
    """A start tells admission (kata_zun.runtime.admission) what it may
    touch before QEMU runs: an unjailed restore QEMU's own, a jailed one
    and a cold boot the whole limit; a refusal runs no QEMU.
    """

    def setUp(self):
        super().setUp()
        self.cfg.config(memory_overhead_mb=100, group='kata_jail')
        self.config = _config(self.tmp, memory_mb=512)
        self.hv = vm.QemuHypervisor(qemu_path=QEMU, machine_type='microvm',
                                    cpu_model='max', jailed=True,
                                    templates=True)

    def _build(self):
        with mock.patch.object(clone, 'build', side_effect=lambda hv, c, w:
                               _fake_build(w, memory_mb=512)):
            clone.build_now(self.hv, self.config, clone.template_key(
                self.hv, self.config).digest)

    def _start_restored(self):
        """:returns: what admission was asked, then the sealed RAM
            descriptor the restore got.
        """
        calls = []
        with mock.patch.object(clone, 'restore',
                               side_effect=lambda *a: calls.append(a[3])
                               or 'the clone'):
            self.assertEqual('the clone',
                             self.hv.start(self.config, admit=calls.append))
        return calls

    def test_cold_boot_claims_its_whole_limit(self):
        calls = []
        with mock.patch.object(clone.templatebuild, 'spawn'), \
                mock.patch.object(self.hv, 'launch',
                                  side_effect=lambda c: calls.append('qemu')):
            self.hv.start(self.config, admit=calls.append)
        self.assertEqual([612, 'qemu'], calls)

    def test_restore_claims_what_it_may_touch(self):
        self._build()
        calls = self._start_restored()
        # Jailed without the sealed RAM, the whole RAM may be touched by
        # the load (QEMU reads every page, and reading a memfd page
        # allocates it).
        self.assertEqual([612, None], calls)
        # Jailed with it, only what QEMU itself touches; the restore gets
        # the descriptor, and it is closed once QEMU has its own.
        fd = os.open(os.devnull, os.O_RDONLY)
        self.open_ram.side_effect = None
        self.open_ram.return_value = fd
        calls = self._start_restored()
        self.assertEqual([100, fd], calls)
        self.assertRaises(OSError, os.fstat, fd)
        # An operator who turned sharing off: no holder is asked.
        self.cfg.config(share_template_ram=False, group='kata_jail')
        self.open_ram.reset_mock()
        calls = self._start_restored()
        self.assertEqual([612, None], calls)
        self.open_ram.assert_not_called()
        # Unjailed the same: a clone's QEMU never maps the template's
        # RAM file (its free page reports would punch holes in it).
        self.cfg.config(share_template_ram=True, group='kata_jail')
        self.hv.jailed = False
        for sealed, mib in ((True, 100), (False, 612)):
            self.assertEqual(mib, clone.restore_cost_mib(
                self.config, sealed=sealed))
        fd = os.open(os.devnull, os.O_RDONLY)
        self.open_ram.return_value = fd
        calls = self._start_restored()
        self.assertEqual([100, fd], calls)
        self.assertRaises(OSError, os.fstat, fd)

    def test_a_failed_restore_claims_again_for_the_cold_boot(self):
        self._build()
        self.hv.jailed = False
        self.open_ram.side_effect = lambda *a: os.open(os.devnull,
                                                       os.O_RDONLY)
        calls = []
        with mock.patch.object(clone, 'restore', side_effect=(
                exception.HypervisorError(reason='x'))), \
                mock.patch.object(self.hv, 'launch',
                                  side_effect=lambda c: calls.append('qemu')):
            self.hv.start(self.config, admit=calls.append)
        self.assertEqual([100, 612, 'qemu'], calls)

    def test_a_refusal_runs_no_qemu(self):
        def refuse(mib):
            raise exception.InsufficientResources(reason='full')
        for build in (False, True):
            if build:
                self._build()
            with mock.patch.object(clone.templatebuild, 'spawn'), \
                    mock.patch.object(clone, 'restore') as restore, \
                    mock.patch.object(self.hv, 'launch') as launch:
                self.assertRaises(exception.InsufficientResources,
                                  self.hv.start, self.config, admit=refuse)
            restore.assert_not_called()
            launch.assert_not_called()


class RestoreMemoryTestCase(base.BaseTestCase):
    """What RAM a clone's QEMU gets, jailed or not: the template's
    sealed RAM, or private memory loaded from the full state; never the
    template's RAM file (QEMU opens it read-write and punches holes in
    it for its guest's free page reports: every other clone's pages).
    """

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF))
        for name in (template.STATE_FULL, template.STATE_DEV):
            with open(os.path.join(self.tmp, name), 'wb') as f:
                f.write(name.encode())
        self.tmpl = mock.Mock(
            ram=os.path.join(self.tmp, 'ram'),
            state_full=os.path.join(self.tmp, template.STATE_FULL),
            state_dev=os.path.join(self.tmp, template.STATE_DEV))
        self.given = []
        # Which state file QEMU is handed (read while it is open).
        self.useFixture(fixtures.MockPatchObject(
            clone, '_give_fd', side_effect=lambda vm, fd, timeout:
            self.given.append(os.readlink('/proc/self/fd/%d' % fd))))
        self.useFixture(fixtures.MockPatchObject(clone, '_Deadline'))
        self.useFixture(fixtures.MockPatchObject(clone, '_load_and_run'))

    def _restore(self, jailed, sealed):
        vm_ = mock.Mock(**{'execute.return_value': {}})
        hv = mock.Mock(jailed=jailed)
        hv.launch.return_value = vm_
        clone.restore(hv, _config(self.tmp), self.tmpl, sealed)
        [(_args, kwargs)] = [tuple(c) for c in hv.launch.call_args_list]
        return kwargs['memory'], vm_

    def test_jailed_or_not_a_clone_maps_only_the_sealed_ram(self):
        for jailed in (True, False):
            self.given = []
            memory, vm_ = self._restore(jailed, 9)
            self.assertEqual(argv.SealedMemory(1, 9), memory)
            self.assertNotIn(self.tmpl.ram, ' '.join(memory.args()))
            self.assertEqual([self.tmpl.state_dev], self.given)
            caps = vm_.execute.call_args_list[0][0][1]['capabilities']
            self.assertIn({'capability': 'x-ignore-shared',
                           'state': True}, caps)

    def test_without_sealed_ram_a_clone_loads_the_whole_ram(self):
        for jailed in (True, False):
            self.given = []
            memory, vm_ = self._restore(jailed, None)
            self.assertIsNone(memory)
            self.assertEqual([self.tmpl.state_full], self.given)


class StateFdTestCase(base.BaseTestCase):
    """The descriptor of a template's state file is closed on every path
    (a shim restores many times: a leak per failed restore adds up).
    """

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.state = os.path.join(self.tmp, template.STATE_FULL)
        with open(self.state, 'wb') as f:
            f.write(b'state')
        self.opened = []
        real_open = os.open

        def spy(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            if path.startswith(self.tmp):
                self.opened.append((fd, os.path.realpath(path)))
            return fd
        self.useFixture(fixtures.MockPatchObject(clone.os, 'open', spy))
        # wait() None: the QEMU still runs, its error is passed on.
        self.vm = mock.Mock(pid=os.getpid(), **{'wait.return_value': None})
        self.hv = mock.Mock(jailed=True)
        self.hv.launch.return_value = self.vm

    def _fail(self, command):
        def execute(cmd, *args, **kwargs):
            if cmd == command:
                raise clone.exception.HypervisorError(reason='QMP gone')
            return {}
        self.vm.execute.side_effect = execute

    def assertAllClosed(self):
        self.assertTrue(self.opened)
        for fd, path in self.opened:
            try:
                still = os.path.realpath('/proc/self/fd/%d' % fd)
            except OSError:
                continue
            self.assertNotEqual(path, still)

    def _restore(self):
        tmpl = mock.Mock(state_full=self.state)
        with mock.patch.object(clone, '_Deadline') as deadline:
            deadline.return_value.left.return_value = 10.0
            return clone.restore(self.hv, _config(self.tmp), tmpl)

    def test_restore_closes_it_when_capabilities_fail(self):
        self._fail('migrate-set-capabilities')
        self.assertRaises(clone.exception.HypervisorError, self._restore)
        self.vm.kill.assert_called_once_with()
        self.assertAllClosed()

    def test_restore_closes_it_when_the_deadline_fails(self):
        with mock.patch.object(clone, '_Deadline',
                               side_effect=template.TemplateError(
                                   reason='no such process')):
            self.assertRaises(template.TemplateError, clone.restore,
                              self.hv, _config(self.tmp),
                              mock.Mock(state_full=self.state))
        self.vm.kill.assert_called_once_with()
        self.assertAllClosed()

    def test_restore_closes_it_when_handed_over_or_launch_fails(self):
        self._fail('migrate-incoming')
        self.assertRaises(clone.exception.HypervisorError, self._restore)
        self.assertAllClosed()
        self.hv.launch.side_effect = OSError(12, 'no memory')
        self.assertRaises(OSError, self._restore)
        self.assertAllClosed()

    def test_save_closes_it_when_capabilities_fail(self):
        self._fail('migrate-set-capabilities')
        self.assertRaises(clone.exception.HypervisorError, clone.save_state,
                          self.vm, os.path.join(self.tmp, 'saved'), True)
        self.assertAllClosed()
