"""The small spawn path of exec (guestspawn + kzspawn.c)."""

import errno
import os
import shutil
import subprocess
import tempfile

from oslotest import base

from kata_zun.agent import guestcaps
from kata_zun.agent import guestseccomp
from kata_zun.agent import guestspawn

SOURCE = os.path.join(os.path.dirname(guestspawn.__file__), 'kzspawn.c')


class CommandTestCase(base.BaseTestCase):

    def test_default_process(self):
        cmd = guestspawn.command(['ls', '-l'], '/w', (1000, 100, [4, 5],
                                                      '/h'),
                                 False, False, 0x3, 40, b'\x01\xff')
        self.assertEqual([guestspawn.HELPER, '-', '3', '40', '1000', '100',
                          '4,5', '/w', '01ff', '--', 'ls', '-l'], cmd)

    def test_privileged_tty_has_no_filter(self):
        cmd = guestspawn.command(['sh'], None, (0, 0, [], '/'), True, True,
                                 0x3, 40, b'ignored')
        self.assertEqual(['tp', '3', '40', '0', '0', '', '', ''], cmd[1:9])


class StatusTestCase(base.BaseTestCase):

    def test_exec_done(self):
        self.assertEqual((42, None, None), guestspawn.parse_status(
            b'pid 42\n'))

    def test_failed_before_exec(self):
        self.assertEqual((42, 'exec: "x": nope', None),
                         guestspawn.parse_status(b'pid 42\nexec: "x": nope'))

    def test_clone_refused(self):
        pid, text, err = guestspawn.parse_status(
            b'fail 11 clone3: Resource temporarily unavailable')
        self.assertIsNone(pid)
        self.assertEqual('clone3: Resource temporarily unavailable', text)
        self.assertTrue(guestspawn.refused(err))
        self.assertFalse(guestspawn.refused(errno.EPERM))

    def test_garbage_is_a_failure(self):
        for data in (b'', b'pid x\n', b'fail', b'\xff' * 100):
            pid, text, _err = guestspawn.parse_status(data)
            self.assertIsNone(pid)
            self.assertTrue(text)


class HelperTestCase(base.BaseTestCase):
    """kzspawn.c compiled and run for real on this host, in the test's
    own namespaces and cgroup (the guest runs it in a container's): it
    needs root (setns), cgroup v2 and a C compiler with a static libc.
    """

    def setUp(self):
        super().setUp()
        cc = shutil.which('gcc')
        if os.geteuid() != 0 or not cc or not os.path.isfile(
                '/sys/fs/cgroup/cgroup.controllers'):
            self.skipTest('needs root, cgroup v2 and gcc')
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.helper = os.path.join(self.tmp, 'kz-spawn')
        subprocess.run([cc, '-static', '-Os', '-Wall', '-Werror', '-o',
                        self.helper, SOURCE], check=True)
        with open('/proc/self/cgroup') as f:
            rel = f.read().strip().split('::', 1)[1]
        fds = [os.open('/proc/self/ns/pid', os.O_RDONLY),
               os.open('/sys/fs/cgroup' + rel, os.O_RDONLY |
                       os.O_DIRECTORY)]
        fds += [os.open('/proc/self/ns/%s' % ns, os.O_RDONLY)
                for ns in ('ipc', 'uts', 'cgroup', 'mnt')]
        fds.append(os.open('/', os.O_RDONLY | os.O_DIRECTORY))
        for fd in fds:
            self.addCleanup(os.close, fd)
        self.fds = tuple(fds)

    def _run(self, argv, workdir, user, privileged=False):
        out_r, out_w = os.pipe()
        null = os.open('/dev/null', os.O_RDONLY)
        try:
            cmd = guestspawn.command(
                argv, workdir, user, False, privileged,
                guestcaps.mask(guestcaps.DEFAULT_CAPS),
                guestcaps.last_cap(), guestseccomp.compiled())
            pid, error, _err = guestspawn.spawn(
                cmd, {'PATH': '/usr/bin:/bin'},
                (null, out_w, out_w) + self.fds, helper=self.helper)
        finally:
            os.close(out_w)
            os.close(null)
        with os.fdopen(out_r, 'rb') as f:
            output = f.read()
        codes = {}
        while True:            # the helper and the process: our children
            try:
                child, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            codes[child] = os.waitstatus_to_exitcode(status)
        return pid, error, codes.get(pid), output.decode()

    def test_confined_process_as_user(self):
        workdir = os.path.join(self.tmp, 'made', 'here')
        pid, error, code, out = self._run(
            ['sh', '-c', 'grep -E "^(CapBnd|CapEff|NoNewPrivs|Seccomp):" '
             '/proc/self/status; id -u; id -G; pwd; ls -l /proc/self/fd'],
            workdir, (65534, 65534, [65533], '/'))
        self.assertIsNone(error)
        self.assertEqual(0, code)
        self.assertIn('CapBnd:\t%016x' % guestcaps.mask(
            guestcaps.DEFAULT_CAPS), out)
        self.assertIn('CapEff:\t0000000000000000', out)   # not root
        self.assertIn('NoNewPrivs:\t1', out)
        self.assertIn('Seccomp:\t2', out)
        self.assertIn('\n65534\n', out)
        self.assertIn('65534 65533', out)
        self.assertIn(workdir + '\n', out)
        # stdio, and the directory ls reads: nothing of ours leaked.
        self.assertNotIn(' 4 -> ', out)
        self.assertNotIn(' 5 -> ', out)

    def test_not_found_in_path(self):
        pid, error, code, _out = self._run(['no-such-command-kz'], '',
                                           (0, 0, [], '/'))
        self.assertEqual(127, code)
        self.assertEqual('exec: "no-such-command-kz": executable file not '
                         'found in $PATH', error)

    def test_bad_workdir(self):
        path = os.path.join(self.tmp, 'file')
        open(path, 'w').close()
        pid, error, code, _out = self._run(['true'], path, (0, 0, [], '/'),
                                           privileged=True)
        self.assertEqual(126, code)
        self.assertIn('chdir to cwd', error)

    def test_bad_arguments_fail_closed(self):
        pid, error, _code = guestspawn.spawn(
            [self.helper, 'only'], {}, (0, 1, 2) + self.fds,
            helper=self.helper)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        self.assertIsNone(pid)
        self.assertIn('bad arguments', error)
