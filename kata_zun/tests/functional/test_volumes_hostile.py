"""Hostile guests against shared volumes (virtio-fs), in real VMs.

Real: QEMU, the guest kernel and agent, the host's virtiofsd (QEMU 7.2's,
started and confined by :mod:`kata_zun.volume.virtiofs`), busybox in the
container. Nothing is mocked.

The containers are privileged: root of their VM, allowed to mount. That
gives the guest the most it can have against the host daemon (the raw
export, mounted again by its tag, with no container path in between):
what is tested is the host side's confinement, not the container's.

Symlinks are resolved by the guest kernel, in the guest's own tree: to
tell "the host followed it" from "the guest did", every host path the
guest aims at also exists in the container, holding other content.
"""

import os
import stat

import fixtures
from oslotest import base as oslo_base

from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.tests.functional import base
from kata_zun.volume import virtiofs

HOST_MARK = 'host only\n'
GUEST_MARK = 'guest-side'


def _refused(name, cmd):
    """A shell line printing ``refused-NAME`` or ``DONE-NAME``."""
    return '%s 2>/dev/null && echo DONE-%s || echo refused-%s; ' % (
        cmd, name, name)


def _tree(top):
    """:returns: sorted (relative path, is a symlink) under ``top``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out.append((os.path.relpath(path, top), os.path.islink(path)))
    return sorted(out)


class HostileSharedDirectoryTestCase(base.KataZunFunctionalTest):
    extra_config = '[kata_agent]\nconnect_timeout = 120\n'

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
            f.write(HOST_MARK)

    def _run(self, script, *opts):
        # The guest gets the host's paths in a decoy tree of its own.
        prelude = ('mkdir -p %(top)s && echo %(mark)s > %(top)s/secret && '
                   'mkdir -p /mnt/raw && mount -t virtiofs kz-fs0 /mnt/raw '
                   '&& ' % {'top': self.top, 'mark': GUEST_MARK})
        return self.kz('run', '--rm', '--privileged', *(opts + (
            '-v', '%s:/data' % self.export, 'busybox', 'sh', '-c',
            prelude + script)))

    def _assert_host_untouched(self):
        with open(self.secret) as f:
            self.assertEqual(HOST_MARK, f.read())
        st = os.lstat(self.secret)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        # No hard link to it was made anywhere.
        self.assertEqual(1, st.st_nlink)
        self.assertEqual(['export', 'secret'], sorted(os.listdir(self.top)))

    def test_links_to_root_host_paths_and_dotdot_are_not_followed(self):
        r = self._run(
            'ln -s / /data/root && ln -s %(top)s /data/top && '
            'ln -s ../../../../../../../.. /data/up && '
            # Reads through the links: the guest's decoy each time.
            'cat /data/top/secret; cat /data/up%(top)s/secret; '
            'cat /data/root%(top)s/secret; cat /mnt/raw/top/secret; '
            'cat /data/../secret 2>/dev/null || echo no-dotdot; '
            # Writes through them: into the guest's tree, never the host's.
            'echo owned > /data/top/pwned1; '
            'echo owned > /data/up%(top)s/pwned2; '
            'echo owned > /mnt/raw/root%(top)s/pwned3; '
            'mkdir /data/top/pwned-dir; '
            'ls %(top)s | sort | tr "\\n" " "; echo; '
            # The raw export holds what the container made, as links.
            'ls -a /mnt/raw | sort | tr "\\n" " "; echo'
            % {'top': self.top})
        self.assertEqual(0, r.code, r)
        self.assertEqual(
            [GUEST_MARK] * 4 + ['no-dotdot',
                                'pwned-dir pwned1 pwned2 pwned3 secret ',
                                '. .. in root top up '],
            r.text.splitlines())
        # On the host the links are just links inside the export.
        self.assertEqual('/', os.readlink(os.path.join(self.export, 'root')))
        self.assertEqual(self.top, os.readlink(os.path.join(self.export,
                                                            'top')))
        self.assertEqual('../../../../../../../..',
                         os.readlink(os.path.join(self.export, 'up')))
        self.assertEqual([('in', False), ('root', True), ('top', True),
                          ('up', True)], _tree(self.export))
        self._assert_host_untouched()
        for name in ('pwned1', 'pwned2', 'pwned3', 'pwned-dir'):
            self.assertFalse(os.path.lexists(os.path.join(self.top, name)))
            self.assertFalse(os.path.lexists(os.path.join('/', name)))

    def test_hard_links_and_renames_never_leave_the_export(self):
        r = self._run((
            'ln -s %(top)s /data/top && ln -s / /data/root && '
            + _refused('hardlink-through-link',
                       'ln /data/top/secret /data/stolen')
            + _refused('hardlink-dotdot', 'ln /data/../secret /data/s2')
            + _refused('hardlink-raw-dotdot',
                       'ln /mnt/raw/../../secret /mnt/raw/s3')
            # A hard link of a link is a link (to the guest's /).
            + _refused('hardlink-of-link', 'ln /data/root /data/root2')
            # Out of the export: the guest copies to its own tree.
            + _refused('rename-up', 'mv /data/in /data/root%(top)s/moved')
            + _refused('rename-raw-dotdot',
                       'mv /mnt/raw/root2 /mnt/raw/../out')
            + 'ls %(top)s | sort | tr "\\n" " "; echo')
            % {'top': self.top})
        self.assertEqual(0, r.code, r)
        lines = r.text.splitlines()
        self.assertEqual(['refused-hardlink-through-link',
                          'refused-hardlink-dotdot',
                          'refused-hardlink-raw-dotdot',
                          'DONE-hardlink-of-link', 'DONE-rename-up',
                          'DONE-rename-raw-dotdot', 'moved secret '], lines)
        self._assert_host_untouched()
        # 'in' left the export for the guest's tree, not the host's.
        self.assertEqual([('root', True), ('top', True)],
                         _tree(self.export))
        for name in ('moved', 'out', 'stolen', 's2', 's3'):
            self.assertFalse(os.path.lexists(os.path.join(self.top, name)))
            self.assertFalse(os.path.lexists(os.path.join('/', name)))


class HostileSharedFileTestCase(base.KataZunFunctionalTest):
    """A single shared file: the guest, even mounting its export raw,
    reaches that file and nothing of its host directory.
    """
    extra_config = HostileSharedDirectoryTestCase.extra_config

    def setUp(self):
        super().setUp()
        self.load_busybox()
        self.dir = os.path.join(self.state_path, 'host', 'conf')
        os.makedirs(self.dir)
        self.conf = os.path.join(self.dir, 'app.conf')
        with open(self.conf, 'w') as f:
            f.write('key = host\n')
        self.sibling = os.path.join(self.dir, 'sibling')
        with open(self.sibling, 'w') as f:
            f.write(HOST_MARK)

    def test_siblings_are_out_of_reach(self):
        r = self.kz(
            'run', '--rm', '--privileged', '-v',
            '%s:/etc/app.conf' % self.conf, 'busybox', 'sh', '-c',
            'cat /etc/app.conf; ls /etc | grep -c sibling; '
            'mkdir -p /mnt/raw && mount -t virtiofs kz-fs0 /mnt/raw && '
            'ls -a /mnt/raw | tr "\\n" " "; echo; '
            + _refused('read-dotdot', 'cat /mnt/raw/../sibling')
            + _refused('create', 'touch /mnt/raw/new')
            + _refused('mkdir', 'mkdir /mnt/raw/d')
            + _refused('symlink', 'ln -s / /mnt/raw/l')
            + _refused('hardlink', 'ln /mnt/raw/file /mnt/raw/h')
            + _refused('rename', 'mv -f /mnt/raw/file /mnt/raw/r')
            + _refused('unlink', 'rm -f /mnt/raw/file')
            + _refused('chmod-root', 'chmod 777 /mnt/raw')
            + 'ls -a /mnt/raw | tr "\\n" " "; echo; '
            'echo "key = guest" >> /mnt/raw/file; cat /etc/app.conf',
            check=0)
        self.assertEqual(
            ['key = host', '0', '. .. file ', 'refused-read-dotdot',
             'refused-create', 'refused-mkdir', 'refused-symlink',
             'refused-hardlink', 'refused-rename', 'refused-unlink',
             'refused-chmod-root', '. .. file ', 'key = host',
             'key = guest'], r.text.splitlines(), r)
        # The host directory is as it was; the file took the write in
        # place.
        self.assertEqual(['app.conf', 'sibling'], sorted(os.listdir(self.dir)))
        with open(self.sibling) as f:
            self.assertEqual(HOST_MARK, f.read())
        with open(self.conf) as f:
            self.assertEqual('key = host\nkey = guest\n', f.read())
        self.assertEqual(1, os.stat(self.conf).st_nlink)


class HostFileExportTestCase(oslo_base.BaseTestCase):
    """The export of a single file as virtiofsd sees it, no VM: real
    virtiofsd, real mount namespace (needs root, like the shim).
    """

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf = os.path.join(self.tmp, 'app.conf')
        with open(self.conf, 'w') as f:
            f.write('key = host\n')
        with open(os.path.join(self.tmp, 'sibling'), 'w') as f:
            f.write(HOST_MARK)
        self.run_dir = os.path.join(self.tmp, 'run')
        os.makedirs(self.run_dir)

    def _start(self, read_only):
        with open('/proc/self/mountinfo') as f:
            before = f.read()
        daemon, conn = virtiofs.start(
            hv_base.SharedDir(self.conf, 'kz-fs0', read_only, 'file'), 0,
            self.run_dir)

        def stop():
            conn.close()
            daemon.proc.kill()
            daemon.stop()
        self.addCleanup(stop)
        with open('/proc/self/mountinfo') as f:
            self.assertEqual(before, f.read())
        return '/proc/%d/root' % daemon.proc.pid

    def _wait_pivoted(self, root):
        # virtiofsd pivots into its export when it starts.
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.listdir(root) == ['file']:
                return
            time.sleep(0.05)
        self.fail('virtiofsd root: %s' % os.listdir(root))

    def test_export_holds_the_one_file_and_nothing_can_be_added(self):
        for read_only in (True, False):
            root = self._start(read_only)
            self._wait_pivoted(root)
            path = os.path.join(root, 'file')
            with open(path) as f:
                self.assertEqual('key = host\n', f.read())
            for op in (lambda: open(os.path.join(root, 'new'), 'w'),
                       lambda: os.mkdir(os.path.join(root, 'd')),
                       lambda: os.symlink('/', os.path.join(root, 'l')),
                       lambda: os.rename(path, os.path.join(root, 'r')),
                       lambda: os.unlink(path)):
                self.assertRaises(OSError, op)
            self.assertEqual(['file'], os.listdir(root))
            if read_only:
                self.assertRaises(OSError, open, path, 'a')
            else:
                with open(path, 'a') as f:
                    f.write('key = daemon\n')
        with open(self.conf) as f:
            self.assertEqual('key = host\nkey = daemon\n', f.read())
        self.assertEqual(['app.conf', 'run', 'sibling'],
                         sorted(os.listdir(self.tmp)))

    def test_a_source_swapped_for_a_link_or_a_directory_is_refused(self):
        link = os.path.join(self.tmp, 'link')
        os.symlink(self.conf, link)
        # The link itself is looked at (O_NOFOLLOW), never its target.
        for source, message in ((link, 'not a regular file'),
                                (self.tmp, 'not a regular file'),
                                (os.path.join(self.tmp, 'gone'),
                                 'No such file')):
            exc = self.assertRaises(
                exception.HypervisorError, virtiofs.start,
                hv_base.SharedDir(source, 'kz-fs0', False, 'file'), 0,
                self.run_dir)
            self.assertIn(message, str(exc))
        for name in ('../x', 'a/b', '', '..', 'x' * 65):
            exc = self.assertRaises(
                exception.HypervisorError, virtiofs.start,
                hv_base.SharedDir(self.conf, 'kz-fs0', False, name), 0,
                self.run_dir)
            self.assertIn('bad file name', str(exc))
