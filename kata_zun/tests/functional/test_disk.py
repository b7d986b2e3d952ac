"""The writable layer's size in real VMs, through the real CLI.

Real: QEMU, the guest kernel and agent, the sparse ext4 layer made by the
host's mkfs.ext4 and mounted by the guest under the container's overlay,
busybox's df and dd in the container. Nothing is mocked.
"""

import json
import os
import subprocess
import sys
import time

from kata_zun.tests.functional import base

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _df_root(text):
    """:returns: (size, used, available) in KiB from ``df -k /``."""
    lines = text.strip().splitlines()
    fields = lines[-1].split()
    # Filesystem 1K-blocks Used Available Use% Mounted-on
    if len(fields) != 6 or fields[5] != '/':
        raise AssertionError('unexpected df output: %r' % text)
    return int(fields[1]), int(fields[2]), int(fields[3])


class DiskSizeTestCase(base.KataZunFunctionalTest):
    # Other suites boot VMs on this host at the same time: be patient.
    extra_config = '[kata_agent]\nconnect_timeout = 120\n'

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _inspect(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).text)[0]

    def _assert_fs_size(self, size_kib, layer_bytes):
        # ext4 keeps its journal, inode tables and bitmaps out of what df
        # shows: a few percent of a large layer, more of a small one.
        self.assertLessEqual(size_kib, layer_bytes // KiB)
        self.assertGreater(size_kib, layer_bytes // KiB * 0.85)

    def test_df_shows_the_size_asked_for(self):
        cid = self.kz('run', '-d', '--name', 'big', '--storage-opt',
                      'size=5G', 'busybox', 'sleep', '600',
                      check=0).text.strip()
        info = self._inspect('big')
        self.assertEqual(cid, info['Id'])
        self.assertEqual(5120, info['Limits']['disk_mb'])
        image = os.path.join(self.state_path, 'containers', cid, 'rw.img')
        st = os.stat(image)
        self.assertEqual(5 * GiB, st.st_size)
        # Sparse: 5 GiB promised, a few MiB taken on the host.
        self.assertLess(st.st_blocks * 512, 64 * MiB)
        r = self.kz('exec', 'big', 'df', '-k', '/', check=0)
        size, used, avail = _df_root(r.text)
        self._assert_fs_size(size, 5 * GiB)
        self.assertGreater(avail, 4.7 * GiB // KiB)
        r = self.kz('exec', 'big', 'df', '-h', '/', check=0)
        self.assertEqual('4.8G', r.text.splitlines()[-1].split()[1], r)
        # Without --storage-opt: [kata] writable_layer_mb (256 here).
        r = self.kz('run', '--rm', 'busybox', 'df', '-k', '/', check=0)
        self._assert_fs_size(_df_root(r.text)[0], 256 * MiB)

    def test_a_full_layer_is_enospc_and_nothing_else_breaks(self):
        cid = self.kz('run', '-d', '--name', 'full', '--storage-opt',
                      'size=64M', 'busybox', 'sh', '-c',
                      'echo started; exec sleep 600', check=0).text.strip()
        size, _used, _avail = _df_root(
            self.kz('exec', 'full', 'df', '-k', '/', check=0).text)
        self._assert_fs_size(size, 64 * MiB)
        # Fill it: dd stops at ENOSPC, far short of what it was asked.
        r = self.kz('exec', 'full', 'dd', 'if=/dev/zero', 'of=/fill',
                    'bs=1M', 'count=200')
        self.assertNotEqual(0, r.code, r)
        self.assertIn(b'No space left on device', r.err)
        r = self.kz('exec', 'full', 'sh', '-c', 'echo more > /more')
        self.assertNotEqual(0, r.code, r)
        self.assertIn(b'No space left on device', r.err)
        _size, _used, avail = _df_root(
            self.kz('exec', 'full', 'df', '-k', '/', check=0).text)
        self.assertEqual(0, avail)
        # The container, its record and its shim are fine.
        self.assertEqual('running', self._inspect('full')['State']['Status'])
        with open(os.path.join(self.state_path, 'containers', cid,
                               'config.json')) as f:
            self.assertEqual(cid, json.load(f)['id'])
        self.assertEqual('started\n',
                         self.kz('logs', 'full', check=0).text)
        self.kz('exec', 'full', 'true', check=0)
        # A restart boots with the full layer: the data is still there.
        self.kz('stop', '-t', '1', 'full', check=0)
        self.assertEqual('exited', self._inspect('full')['State']['Status'])
        self.kz('start', 'full', check=0)
        r = self.kz('exec', 'full', 'sh', '-c',
                    'wc -c < /fill && rm /fill && echo ok > /after && '
                    'cat /after', check=0)
        written, ok = r.text.split()
        self.assertGreater(int(written), 40 * MiB)
        self.assertEqual('ok', ok)
        self.assertEqual('started\nstarted\n',
                         self.kz('logs', 'full', check=0).text)
        self.kz('rm', '-f', 'full', check=0)
        self.assertFalse(os.path.exists(os.path.join(
            self.state_path, 'containers', cid)))
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)

    def test_sizes_that_cannot_be_given_are_refused(self):
        total = os.statvfs(self.state_path)
        too_big_mb = total.f_blocks * total.f_frsize // MiB + 1
        for opt, want in (
                ('size=%dm' % too_big_mb, b'larger than the'),
                ('size=99999999999999999999P', b'larger than the'),
                ('size=8M', b'at least 16 MiB'),
                ('size=0', b'at least 16 MiB'),
                ('size=5X', b'invalid size'),
                ('size=' + '9' * 10000, b'invalid size'),
                ('dm.basesize=5G', b"unknown storage option 'dm.basesize'"),
                ('size', b'invalid storage option')):
            r = self.kz('run', '--rm', '--storage-opt', opt, 'busybox',
                        'true')
            self.assertEqual(125, r.code, r)
            self.assertIn(want, r.err)
            self.assertLess(len(r.err), 1000)
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)
        self.assertEqual([], [n for n in os.listdir(os.path.join(
            self.state_path, 'containers')) if not n.startswith('.')])


class HostFullTestCase(base.KataZunFunctionalTest):
    """The layers are sparse: the host file system may fill before a
    layer does. QEMU then stops the VM rather than lose a write; the shim
    resumes it once there is room again, and a stop still stops it.

    Real: a small tmpfs as the state path (so "the host is full" is
    cheap and safe), QEMU, the guest, the shim.
    """
    extra_config = '[kata_agent]\nconnect_timeout = 120\n'

    def setUp(self):
        super().setUp()
        guest = os.readlink(os.path.join(self.state_path, 'guest'))
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=160m',
                        'kz-test-full', self.state_path], check=True,
                       timeout=30)
        self.addCleanup(subprocess.run, ['umount', '-l', self.state_path],
                        timeout=30)
        # Runs before the umount: no VM outlives its state path.
        self.addCleanup(self._remove_all)
        os.symlink(guest, os.path.join(self.state_path, 'guest'))
        self.load_busybox()
        self.filler = os.path.join(self.state_path, 'filler')

    def _fill_host(self, leave_mb):
        st = os.statvfs(self.state_path)
        size = st.f_bavail * st.f_frsize - leave_mb * MiB
        with open(self.filler, 'wb') as f:
            for _ in range(size // MiB):
                f.write(b'\xff' * MiB)

    def _free(self):
        st = os.statvfs(self.state_path)
        return st.f_bavail * st.f_frsize

    def _exec_bg(self, *command):
        argv = [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
                self.conf_file, 'exec'] + list(command)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        self.addCleanup(proc.kill)
        return proc

    def _wait_for_stall(self, proc):
        deadline = time.monotonic() + 120
        while self._free() > MiB and proc.poll() is None:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.5)
        # Full, and the writer waits instead of failing.
        time.sleep(6)
        if proc.poll() is not None:
            self.fail('the writer did not wait: %r' % (proc.communicate(),))

    def test_a_full_host_stalls_the_vm_until_there_is_room(self):
        cid = self.kz('run', '-d', '--name', 'thin', '--storage-opt',
                      'size=100M', 'busybox', 'sh', '-c',
                      'echo started; exec sleep 600', check=0).text.strip()
        self._fill_host(leave_mb=30)
        writer = self._exec_bg('thin', 'sh', '-c',
                               'dd if=/dev/zero of=/fill bs=1M count=60 '
                               'conv=fsync && echo written')
        self._wait_for_stall(writer)
        os.unlink(self.filler)
        out, err = writer.communicate(timeout=120)
        self.assertEqual(0, writer.returncode, (out, err))
        self.assertEqual(b'written\n', out)
        # Nothing was lost: every byte dd wrote is there.
        r = self.kz('exec', 'thin', 'wc', '-c', '/fill', check=0)
        self.assertEqual(str(60 * MiB), r.text.split()[0])
        with open(os.path.join(self.state_path, 'containers', cid,
                               'shim.log')) as f:
            self.assertIn('room again: resuming the VM', f.read())

        # Stalled again, then stopped: the stop does not wait for room.
        self._fill_host(leave_mb=10)
        writer = self._exec_bg('thin', 'dd', 'if=/dev/zero', 'of=/more',
                               'bs=1M', 'count=40', 'conv=fsync')
        self._wait_for_stall(writer)
        started = time.monotonic()
        self.kz('stop', '-t', '1', 'thin', check=0)
        self.assertLess(time.monotonic() - started, 60)
        os.unlink(self.filler)
        state = json.loads(self.kz('inspect', 'thin', check=0).text)[0][
            'State']
        self.assertEqual(('exited', 137), (state['Status'],
                                           state['ExitCode']))
        self.assertIn('host file system of its disks is full',
                      state['Error'])
        writer.communicate(timeout=60)
        # It starts again, with the data written before.
        self.kz('start', 'thin', check=0)
        r = self.kz('exec', 'thin', 'wc', '-c', '/fill', check=0)
        self.assertEqual(str(60 * MiB), r.text.split()[0])
        self.kz('rm', '-f', 'thin', check=0)
