"""Volumes in real VMs, through the real CLI.

Real: QEMU (jailed when the config says so, the default as root), the
guest kernel and agent, e2fsprogs' mke2fs in the guest, the raw image
files. Nothing is mocked. A block volume is handed to QEMU as an open
file descriptor; the host never mounts it (checked against the host's
mount table and loop devices).
"""

import hashlib
import json
import os
import subprocess
import time

from kata_zun.tests.functional import base

EXT4_MAGIC_OFFSET = 1080


def _ext_magic(path):
    with open(path, 'rb') as f:
        f.seek(EXT4_MAGIC_OFFSET)
        return f.read(2)


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _host_mounts():
    with open('/proc/self/mountinfo') as f:
        return f.read()


def _loops_of(path):
    out = subprocess.run(['losetup', '-j', path], capture_output=True,
                         timeout=30)
    return out.stdout


class VolumeTestCase(base.KataZunFunctionalTest):
    # Other suites boot VMs on this host at the same time: be patient.
    extra_config = '[kata_agent]\nconnect_timeout = 120\n'

    def setUp(self):
        super().setUp()
        self.load_busybox()
        self.dir = os.path.join(self.state_path, 'files')
        os.makedirs(self.dir)

    def _blank(self, name, size=64 * 1024 * 1024):
        path = os.path.join(self.dir, name)
        with open(path, 'wb') as f:
            f.truncate(size)
        return path

    def test_block_volume_from_file(self):
        image = self._blank('data.img')
        mounts_before = _host_mounts()
        r = self.kz('run', '--rm', '--mount',
                    'type=block,source=%s,target=/data' % image, 'busybox',
                    'sh', '-c', 'echo hello > /data/f && cat /data/f && '
                    'grep " /data " /proc/mounts', check=0)
        lines = r.text.splitlines()
        self.assertEqual('hello', lines[0])
        # The guest found the blank disk and made an ext4 on it.
        self.assertIn('ext4', lines[1])
        self.assertIn('rw', lines[1].split()[3].split(','))
        self.assertEqual(b'\x53\xef', _ext_magic(image))
        # The host never mounted it, not even through a loop device.
        self.assertEqual(mounts_before, _host_mounts())
        self.assertEqual(b'', _loops_of(image))
        # Read-only on both sides: the data is there, writes fail, even
        # after a privileged container (root in its VM, allowed to mount)
        # remounts it read-write: the disk itself is read-only.
        before = _digest(image)
        r = self.kz('run', '--rm', '--privileged', '--mount',
                    'type=block,source=%s,target=/data,readonly' % image,
                    'busybox', 'sh', '-c',
                    'cat /data/f; grep " /data " /proc/mounts; '
                    'mount -o remount,rw /data; echo x > /data/g', check=1)
        lines = r.text.splitlines()
        self.assertEqual('hello', lines[0])
        self.assertIn('ro', lines[1].split()[3].split(','))
        self.assertIn(b'Read-only file system', r.err)
        self.assertEqual(before, _digest(image))

    def test_blank_read_only_block_volume_is_refused(self):
        image = self._blank('blank.img')
        r = self.kz('run', '--rm', '--mount',
                    'type=block,source=%s,target=/data,readonly' % image,
                    'busybox', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'blank and read-only', r.err)
        self.assertEqual(b'\0' * 2, _ext_magic(image))

    def test_named_volume_persists_and_rm_refuses_in_use(self):
        self.kz('volume', 'create', '--size', '64M', 'vol1', check=0)
        listed = self.kz('volume', 'ls', '-q', check=0)
        self.assertEqual(b'vol1\n', listed.out)
        self.kz('run', '--name', 'writer', '-v', 'vol1:/data', 'busybox',
                'sh', '-c', 'cd /data && head -c 1000000 /dev/urandom > blob '
                '&& md5sum blob > sum', check=0)
        # In use by a (stopped) container: refused, data untouched.
        r = self.kz('volume', 'rm', 'vol1')
        self.assertEqual(1, r.code, r)
        self.assertIn(b'in use', r.out + r.err)
        info = json.loads(self.kz('volume', 'inspect', 'vol1',
                                  check=0).out)[0]
        self.assertEqual(64 * 1024 * 1024, info['size'])
        self.assertEqual(1, len(info['containers']))
        self.kz('rm', 'writer', check=0)
        # A new container reads what the first one wrote.
        r = self.kz('run', '--rm', '-v', 'vol1:/srv/d:ro', 'busybox', 'sh',
                    '-c', 'cd /srv/d && md5sum -c sum', check=0)
        self.assertEqual(b'blob: OK\n', r.out)
        self.kz('volume', 'rm', 'vol1', check=0)
        self.assertEqual(b'', self.kz('volume', 'ls', '-q', check=0).out)
        self.assertFalse(os.path.exists(os.path.join(self.state_path,
                                                     'volumes', 'vol1')))

    def test_run_creates_a_missing_named_volume(self):
        self.kz('run', '--rm', '-v', 'auto1:/data', 'busybox', 'sh', '-c',
                'echo kept > /data/x', check=0)
        r = self.kz('run', '--rm', '--mount',
                    'type=volume,src=auto1,dst=/data', 'busybox', 'cat',
                    '/data/x', check=0)
        self.assertEqual(b'kept\n', r.out)

    def test_one_writer_per_volume(self):
        """Two VMs writing one ext4 corrupt it: the second is refused
        while the first runs, and nothing the first wrote is lost.
        """
        self.kz('volume', 'create', '--size', '64M', 'shared', check=0)
        self.kz('run', '-d', '--name', 'first', '-v', 'shared:/data',
                'busybox', 'sh', '-c', 'echo one > /data/one; sleep 600',
                check=0)
        r = self.kz('run', '--name', 'second', '-v', 'shared:/data',
                    'busybox', 'sh', '-c', 'echo two > /data/two')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'in use by another VM', r.err)
        # A reader is refused too while a writer runs.
        r = self.kz('run', '--rm', '-v', 'shared:/data:ro', 'busybox',
                    'true')
        self.assertEqual(125, r.code, r)
        self.kz('rm', '-f', 'first', 'second', check=0)
        r = self.kz('run', '--rm', '-v', 'shared:/data', 'busybox', 'sh',
                    '-c', 'cat /data/one; ls /data', check=0)
        self.assertEqual(['one', 'lost+found', 'one'], r.text.split())

    def test_bad_requests_fail_clearly(self):
        cases = [
            (('-v', 'vol:relative'), b'absolute'),
            (('-v', 'vol:/a/../etc'), b'..'),
            (('-v', 'vol:/'), b'cannot be mounted at /'),
            (('-v', '../x:/data'), b'invalid volume name'),
            (('-v', 'vol:/data:rx'), b'unsupported volume option'),
            (('--mount', 'type=nfs,source=a,target=/b'), b'unknown mount'),
            (('--mount', 'type=block,source=/nonexistent,target=/b'),
             b'No such file'),
            (('--mount', 'type=block,source=/dev/null,target=/b'),
             b'not a file or a block device'),
            (('-v', 'a:/data', '-v', 'b:/data/'), b'two volumes at /data'),
        ]
        for opts, message in cases:
            r = self.kz('run', '--rm', *(opts + ('busybox', 'true')))
            self.assertEqual(125, r.code, (opts, r))
            self.assertIn(message, r.err, opts)
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)
        self.assertEqual(b'', self.kz('volume', 'ls', '-q', check=0).out)


class SharedDirectoryTestCase(base.KataZunFunctionalTest):
    """Bind mounts through virtio-fs: a virtiofsd per shared directory,
    confined to it.
    """
    extra_config = VolumeTestCase.extra_config

    def setUp(self):
        super().setUp()
        self.load_busybox()
        self.top = os.path.join(self.state_path, 'host')
        self.export = os.path.join(self.top, 'export')
        os.makedirs(self.export)
        with open(os.path.join(self.export, 'in'), 'w') as f:
            f.write('from the host\n')
        # Next to the export, never part of it.
        self.secret = os.path.join(self.top, 'secret')
        with open(self.secret, 'w') as f:
            f.write('host only\n')

    def test_bind_mount_reads_and_writes_reach_the_host(self):
        mounts_before = _host_mounts()
        r = self.kz('run', '--rm', '-v', '%s:/data' % self.export,
                    'busybox', 'sh', '-c',
                    'cat /data/in && echo from the guest > /data/out && '
                    'mkdir /data/sub && echo x > /data/sub/f && '
                    'grep " /data " /proc/mounts', check=0)
        lines = r.text.splitlines()
        self.assertEqual('from the host', lines[0])
        self.assertEqual('virtiofs', lines[1].split()[2])
        with open(os.path.join(self.export, 'out')) as f:
            self.assertEqual('from the guest\n', f.read())
        self.assertTrue(os.path.isfile(os.path.join(self.export, 'sub/f')))
        # virtiofsd's bind mount lived in its own namespace only.
        self.assertEqual(mounts_before, _host_mounts())

    def test_read_only_bind_mount(self):
        """Read-only on the host side too: a container that remounts its
        volume read-write still cannot write. (Only a privileged container
        may remount at all: the default seccomp filter refuses mount.)
        """
        r = self.kz('run', '--rm', '--privileged',
                    '-v', '%s:/data:ro' % self.export,
                    'busybox', 'sh', '-c',
                    'cat /data/in; grep " /data " /proc/mounts; '
                    'mount -o remount,rw /data && grep " /data " '
                    '/proc/mounts; echo x > /data/in; rm /data/in; '
                    'mkdir /data/d', check=1)
        lines = r.text.splitlines()
        self.assertEqual('from the host', lines[0])
        self.assertIn('ro', lines[1].split()[3].split(','))
        # The remount worked in the guest (only the host holds the line).
        self.assertIn('rw', lines[2].split()[3].split(','))
        self.assertEqual(3, r.err.count(b'Read-only file system'), r)
        with open(os.path.join(self.export, 'in')) as f:
            self.assertEqual('from the host\n', f.read())
        self.assertEqual(['in'], os.listdir(self.export))

    def _virtiofsd_pids(self):
        found = []
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if (argv[0].endswith(b'virtiofsd') and any(
                    a.startswith(b'source=' + self.run_path.encode())
                    for a in argv)):
                found.append(int(pid))
        return found

    def test_virtiofsd_is_confined_and_goes_with_the_sandbox(self):
        cid = self.kz('run', '-d', '-v', '%s:/data' % self.export,
                      'busybox', 'sleep', '600', check=0).text.strip()
        pids = self._virtiofsd_pids()
        self.assertTrue(pids)
        own_mnt = os.readlink('/proc/self/ns/mnt')
        for pid in pids:
            # In the sandbox's host cgroup and its own mount namespace,
            # where the host's tree is out of reach.
            with open('/proc/%d/cgroup' % pid) as f:
                self.assertIn('kz-%s/vmm' % cid[:12], f.read())
            self.assertNotEqual(own_mnt,
                                os.readlink('/proc/%d/ns/mnt' % pid))
        # The daemon serving requests sees the export as its whole root.
        roots = [sorted(os.listdir('/proc/%d/root' % p)) for p in pids]
        self.assertIn(['in'], roots)
        r = self.kz('exec', cid, 'cat', '/data/in', check=0)
        self.assertEqual(b'from the host\n', r.out)
        self.kz('rm', '-f', cid, check=0)
        self.assertEqual([], [p for p in pids
                              if os.path.exists('/proc/%d' % p)])


class SharedFileTestCase(base.KataZunFunctionalTest):
    """Bind mounts of one file (Docker's ``-v /host/file:/etc/app.conf``,
    Zun's injected files): the container gets that file, never its
    siblings, and its writes land in the host file itself.
    """
    extra_config = VolumeTestCase.extra_config

    def setUp(self):
        super().setUp()
        self.load_busybox()
        self.top = os.path.join(self.state_path, 'host')
        os.makedirs(self.top)
        self.conf = os.path.join(self.top, 'app.conf')
        with open(self.conf, 'w') as f:
            f.write('key = host\n')
        self.secret = os.path.join(self.top, 'secret')
        with open(self.secret, 'w') as f:
            f.write('host only\n')

    def _read(self, path):
        with open(path) as f:
            return f.read()

    def test_file_reads_and_writes_in_place(self):
        inode = os.stat(self.conf).st_ino
        mounts_before = _host_mounts()
        r = self.kz('run', '--rm', '-v', '%s:/etc/app.conf' % self.conf,
                    '--mount', 'type=bind,source=%s,target=/new/dir/copy'
                    % self.conf, 'busybox', 'sh', '-c',
                    'cat /etc/app.conf && echo "key = guest" >> '
                    '/etc/app.conf && sleep 2 && cat /new/dir/copy && '
                    'grep " /etc/app.conf " /proc/mounts && '
                    'ls /etc | grep -c -e secret -e "^file$"; '
                    'ls -a /new/dir', check=0)
        lines = r.text.splitlines()
        self.assertEqual('key = host', lines[0])
        # The second mount of the same file (another virtiofsd) sees the
        # first one's write once its cached attributes expire
        # (cache=auto: one second), as the host's own writes.
        self.assertEqual(['key = host', 'key = guest'], lines[1:3])
        self.assertEqual('virtiofs', lines[3].split()[2])
        self.assertIn('rw', lines[3].split()[3].split(','))
        # Neither the file's siblings nor its export's name showed up.
        self.assertEqual('0', lines[4])
        self.assertEqual(['.', '..', 'copy'], lines[5:])
        # In place: the same inode, the guest's line appended.
        self.assertEqual('key = host\nkey = guest\n', self._read(self.conf))
        self.assertEqual(inode, os.stat(self.conf).st_ino)
        self.assertEqual(['app.conf', 'secret'], sorted(os.listdir(self.top)))
        self.assertEqual(mounts_before, _host_mounts())
        # A truncating write (sh's >) lands in place too.
        r = self.kz('run', '--rm', '-v', '%s:/etc/app.conf' % self.conf,
                    'busybox', 'sh', '-c', 'echo "key = new" > /etc/app.conf',
                    check=0)
        self.assertEqual('key = new\n', self._read(self.conf))
        self.assertEqual(inode, os.stat(self.conf).st_ino)

    def test_host_side_changes_in_place_are_seen_replacements_not(self):
        """As with Docker: the mount holds the file's inode."""
        cid = self.kz('run', '-d', '-v', '%s:/etc/app.conf:ro' % self.conf,
                      'busybox', 'sleep', '600', check=0).text.strip()
        with open(self.conf, 'r+') as f:
            f.write('key = HOST\n')
        # Seen once the guest's cached attributes expire (one second).
        deadline = time.monotonic() + 10
        while True:
            r = self.kz('exec', cid, 'cat', '/etc/app.conf', check=0)
            if r.out == b'key = HOST\n' or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(b'key = HOST\n', r.out)
        new = os.path.join(self.top, 'new')
        with open(new, 'w') as f:
            f.write('key = replaced\n')
        os.rename(new, self.conf)
        time.sleep(2)
        r = self.kz('exec', cid, 'cat', '/etc/app.conf', check=0)
        self.assertEqual(b'key = HOST\n', r.out)
        self.kz('rm', '-f', cid, check=0)
        self.assertEqual('key = replaced\n', self._read(self.conf))

    def test_read_only_file_is_read_only_on_the_host_side_too(self):
        r = self.kz('run', '--rm', '--privileged', '-v',
                    '%s:/etc/app.conf:ro' % self.conf, 'busybox', 'sh', '-c',
                    'cat /etc/app.conf; grep " /etc/app.conf " /proc/mounts; '
                    'echo x >> /etc/app.conf; '
                    'mount -o remount,rw /etc/app.conf && '
                    'grep " /etc/app.conf " /proc/mounts; '
                    'echo y >> /etc/app.conf; rm /etc/app.conf', check=1)
        lines = r.text.splitlines()
        self.assertEqual('key = host', lines[0])
        self.assertIn('ro', lines[1].split()[3].split(','))
        # The guest's remount worked; the host still refused the write.
        self.assertIn('rw', lines[2].split()[3].split(','))
        self.assertEqual(2, r.err.count(b'Read-only file system'), r)
        # A mount point: the container cannot remove or replace it.
        self.assertIn(b'esource busy', r.err)
        self.assertEqual('key = host\n', self._read(self.conf))

    def test_image_path_is_kept_or_refused(self):
        # Over a file of the image: the host file wins while it is
        # mounted.
        r = self.kz('run', '--rm', '-v', '%s:/etc/passwd:ro' % self.conf,
                    'busybox', 'cat', '/etc/passwd', check=0)
        self.assertEqual(b'key = host\n', r.out)
        # The files the agent writes itself give way to the user's.
        r = self.kz('run', '--rm', '-v', '%s:/etc/resolv.conf:ro'
                    % self.conf, '-v', '%s:/etc/hosts:ro' % self.conf,
                    'busybox', 'sh', '-c',
                    'cat /etc/resolv.conf /etc/hosts; hostname', check=0)
        self.assertEqual(['key = host', 'key = host'],
                         r.text.splitlines()[:2])
        # Over a directory: refused, as Docker does.
        r = self.kz('run', '--rm', '-v', '%s:/etc' % self.conf, 'busybox',
                    'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'is a directory', r.err)
        # A file source is checked at create: a fifo is neither shared
        # directory nor shared file.
        fifo = os.path.join(self.top, 'fifo')
        os.mkfifo(fifo)
        r = self.kz('run', '--rm', '-v', '%s:/f' % fifo, 'busybox', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'not a directory or a regular file', r.err)
        self.assertEqual('key = host\n', self._read(self.conf))
