import json
import os
import struct
import subprocess
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.guest import builder
from kata_zun.tests.unit import durability

MODULES_DEP = """\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: \
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko \
kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: \
kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/x/a.ko: kernel/x/b.ko
kernel/x/b.ko: kernel/x/a.ko
"""
MODULES_BUILTIN = "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"


def _elf(payload=b''):
    """A minimal ELF64 header with no segments or sections."""
    hdr = bytearray(64)
    hdr[:5] = b'\x7fELF\x02'
    struct.pack_into('<QQ', hdr, 0x20, 64, 0)
    struct.pack_into('<HHHH', hdr, 0x36, 56, 0, 64, 0)
    return bytes(hdr) + payload


class ModulesTestCase(base.BaseTestCase):

    def test_load_order(self):
        order = builder.module_load_order(
            MODULES_DEP, MODULES_BUILTIN,
            ['virtio-mmio', 'virtio_console', 'ext4', 'erofs',
             'vmw_vsock_virtio_transport'])
        self.assertEqual([
            'kernel/drivers/virtio/virtio_ring.ko',
            'kernel/drivers/virtio/virtio.ko',
            'kernel/drivers/virtio/virtio_mmio.ko',
            'kernel/drivers/char/virtio_console.ko',
            'kernel/lib/libcrc32c.ko',
            'kernel/fs/erofs/erofs.ko',
            'kernel/net/vmw_vsock/vsock.ko',
            'kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko',
            'kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko'], order)

    def test_unknown_module_and_cycle(self):
        self.assertRaises(exception.GuestAssetError,
                          builder.module_load_order, MODULES_DEP,
                          MODULES_BUILTIN, ['nosuch'])
        exc = self.assertRaises(exception.GuestAssetError,
                                builder.module_load_order, MODULES_DEP,
                                MODULES_BUILTIN, ['a'])
        self.assertIn('cycle', str(exc))

    def test_strip_signature(self):
        body = _elf(b'module body')
        sig = b'S' * 300
        info = struct.pack('>BBBBB3xI', 0, 0, 2, 0, 0, len(sig))
        signed = body + sig + info + b'~Module signature appended~\n'
        self.assertEqual(body, builder.strip_module_signature(signed))
        self.assertEqual(body, builder.strip_module_signature(body))
        self.assertRaises(exception.GuestAssetError,
                          builder.strip_module_signature,
                          b'xx' + info + b'~Module signature appended~\n')


class KernelTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def _write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def test_release_from_bzimage_and_elf(self):
        image = bytearray(0x1000)
        image[0x202:0x206] = b'HdrS'
        struct.pack_into('<H', image, 0x20e, 0x300)
        image[0x500:0x520] = b'6.1.0-9-cloud-amd64 (debian) #1\0'
        self.assertEqual('6.1.0-9-cloud-amd64', builder.kernel_release(
            self._write('bz', bytes(image))))
        self.assertEqual('6.2.0-x', builder.kernel_release(self._write(
            'elf', _elf(b'..Linux version 6.2.0-x (gcc) #1 SMP..'))))
        self.assertRaises(exception.GuestAssetError, builder.kernel_release,
                          self._write('junk', b'nothing'))

    def test_extract_vmlinux_tolerates_trailing_garbage(self):
        vmlinux = _elf(os.urandom(5000))
        raw = self._write('raw', vmlinux)
        subprocess.run(['lz4', '-q', '-l', '-f', raw, raw + '.lz4'],
                       check=True)
        with open(raw + '.lz4', 'rb') as f:
            stream = f.read()
        self.assertEqual(builder.LZ4_MAGIC, stream[:4])
        bz = self._write('bz', b'setup code' * 100 + stream + b'\0trailer')
        dest = os.path.join(self.dir, 'vmlinux')
        builder.extract_vmlinux(bz, dest)
        with open(dest, 'rb') as f:
            self.assertEqual(vmlinux, f.read())

    def test_extracted_vmlinux_is_synced_before_it_is_named(self):
        # Regression: the cached vmlinux was renamed into place unsynced;
        # after a crash the cache could hold an empty kernel, trusted as
        # it is by every later build.
        raw = self._write('raw', _elf(os.urandom(5000)))
        subprocess.run(['lz4', '-q', '-l', '-f', raw, raw + '.lz4'],
                       check=True)
        dest = os.path.join(self.dir, 'vmlinux')
        rec = self.useFixture(durability.SyncRecorder())
        builder.extract_vmlinux(raw + '.lz4', dest)
        self.assertEqual([], rec.unsynced(dest))

    def test_extract_vmlinux_rejects_non_lz4_and_truncated_elf(self):
        dest = os.path.join(self.dir, 'vmlinux')
        self.assertRaises(exception.GuestAssetError, builder.extract_vmlinux,
                          self._write('xz', b'\xfd7zXZ' * 10), dest)
        # A program header pointing past the end: the ELF is incomplete.
        elf = bytearray(_elf())
        struct.pack_into('<HHHH', elf, 0x36, 56, 1, 64, 0)
        elf += struct.pack('<IIQQQQQQ', 1, 5, 0, 0, 0, 10 ** 6, 10 ** 6, 0)
        raw = self._write('raw', bytes(elf))
        subprocess.run(['lz4', '-q', '-l', '-f', raw, raw + '.lz4'],
                       check=True)
        self.assertRaises(exception.GuestAssetError, builder.extract_vmlinux,
                          raw + '.lz4', dest)
        self.assertFalse(os.path.exists(dest))
        self.assertFalse(os.path.exists(dest + '.tmp'))


class FindTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(state_path=os.path.join(self.dir, 'state'),
                        group='kata')
        self.kernel = os.path.join(self.dir, 'vmlinux')
        busybox = os.path.join(self.dir, 'busybox')
        for path in (self.kernel, busybox):
            open(path, 'w').close()
        self.useFixture(fixtures.MockPatchObject(builder, 'BUSYBOX',
                                                 busybox))
        self.cfg.config(kernel=self.kernel, kernel_version='6.1.0-t',
                        group='kata_guest')
        self.agent = os.path.join(self.dir, 'agent')
        os.mkdir(self.agent)
        self._agent('guest.py', 'def main(): pass\n')

    def _agent(self, name, text):
        with open(os.path.join(self.agent, name), 'w') as f:
            f.write(text)

    def _install(self, name, input_key, built_at):
        path = os.path.join(conf.CONF.kata.state_path, 'guest', name)
        os.makedirs(path)
        open(os.path.join(path, 'initrd.img'), 'w').close()
        with open(os.path.join(path, 'manifest.json'), 'w') as f:
            json.dump({'version': name, 'input_key': input_key,
                       'kernel': self.kernel, 'built_at': built_at}, f)
        return path

    def test_missing_tells_operator_to_build(self):
        exc = self.assertRaises(exception.GuestAssetError, builder.find,
                                agent_dir=self.agent)
        self.assertIn('kata-zun guest build', str(exc))

    def test_finds_newest_matching_build_until_inputs_change(self):
        key = builder._digest(builder._local_inputs(self.agent))
        self._install('old', key, 1)
        path = self._install('new', key, 2)
        self._install('other', 'another-key', 3)
        self.assertEqual(builder.GuestAssets(
            self.kernel, os.path.join(path, 'initrd.img'), 'new'),
            builder.find(agent_dir=self.agent))
        self._agent('protocol.py', 'VERSION = 2\n')   # the agent changed
        self.assertRaises(exception.GuestAssetError, builder.find,
                          agent_dir=self.agent)

    def test_spawn_helper_source_is_an_input(self):
        key = builder._digest(builder._local_inputs(self.agent))
        self._agent(builder.SPAWN_SOURCE, 'int main(void) { return 0; }\n')
        self.assertNotEqual(key, builder._digest(
            builder._local_inputs(self.agent)))

    def test_spawn_helper_built_static_or_left_out(self):
        self._agent(builder.SPAWN_SOURCE, 'int main(void) { return 0; }\n')
        out = os.path.join(self.dir, 'root')
        os.mkdir(out)
        said = []
        with mock.patch.object(builder.shutil, 'which', return_value=None):
            builder._build_spawner(self.agent, out, said.append)
        self.assertEqual([], os.listdir(out))
        self.assertIn('forks the agent', said[0])
        if builder.shutil.which(builder.CC) is None:
            return                     # the real compile needs gcc here
        builder._build_spawner(self.agent, out, said.append)
        helper = os.path.join(out, builder.SPAWN_HELPER)
        self.assertTrue(os.access(helper, os.X_OK))
        # Static (no .interp): the initrd has no libc for it to load.
        with open(helper, 'rb') as f:
            self.assertNotIn(b'.interp', f.read())

    def test_explicit_initrd(self):
        initrd = os.path.join(self.dir, 'initrd')
        open(initrd, 'w').close()
        self.cfg.config(initrd=initrd, group='kata_guest')
        self.assertEqual(builder.GuestAssets(self.kernel, initrd, 'custom'),
                         builder.find())

    def test_apt_candidates(self):
        policy = (b'libc6:\n  Installed: 2.36-9\n  Candidate: 2.36-9+u1\n'
                  b'  Version table:\n zlib1g:\n'
                  b'zlib1g:\n  Installed: (none)\n  Candidate: 1:1.2.13\n'
                  b'libnope:\n  Installed: (none)\n  Candidate: (none)\n')
        with mock.patch.object(builder, '_run', return_value=policy):
            self.assertEqual({'libc6': '2.36-9+u1', 'zlib1g': '1:1.2.13'},
                             builder._apt_candidates(['libc6', 'zlib1g']))
            self.assertRaises(exception.GuestAssetError,
                              builder._apt_candidates, ['libc6', 'libnope'])

    def test_built_assets_are_synced_before_they_are_named(self):
        # Regression: the build directory was renamed into place with
        # nothing fsynced: after a crash the version could be there, its
        # manifest naming an empty initrd.
        def build_into(tmp, dest, version, *args):
            os.mkdir(os.path.join(tmp, 'sub'))
            for rel in ('vmlinux', 'initrd.img', 'sub/x'):
                with open(os.path.join(tmp, rel), 'wb') as f:
                    f.write(b'data')
            with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
                json.dump({'version': version, 'built_at': 1,
                           'kernel': os.path.join(dest, 'vmlinux')}, f)
            return builder.GuestAssets(os.path.join(dest, 'vmlinux'),
                                       os.path.join(dest, 'initrd.img'),
                                       version)
        self.useFixture(fixtures.MockPatchObject(
            builder, '_apt_candidates', return_value={}))
        self.useFixture(fixtures.MockPatchObject(builder, '_build_into',
                                                 build_into))
        rec = self.useFixture(durability.SyncRecorder())
        assets = builder.build(agent_dir=self.agent)
        dest = os.path.dirname(assets.initrd)
        self.assertEqual([], rec.unsynced(dest))
        # A forced rebuild replaces the version the same way.
        builder.build(force=True, agent_dir=self.agent)
        self.assertEqual([], rec.unsynced(dest))

    def test_prune_keeps_newest_and_recent_versions(self):
        import time
        now = time.time()
        ancient = self._install('ancient', 'k', now - 3 * 86400)
        old = self._install('old', 'k', now - 2 * 86400)
        recent = self._install('recent', 'k', now - 60)
        newest = self._install('newest', 'k', now)
        builder._prune(keep=1)
        for path in (recent, newest):
            self.assertTrue(os.path.isdir(path), path)
        for path in (ancient, old):
            self.assertFalse(os.path.exists(path), path)
