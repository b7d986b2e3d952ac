"""The small spawn path of exec (guestspawn + kzspawn.c)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from oslotest import base

from kata_zun.agent import guestcaps
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
            b'\0pid 42\n'))

    def test_failed_before_exec_either_order(self):
        # The process runs as soon as it is cloned: its error may come
        # before the helper's pid line.
        for data in (b'\0pid 42\nexec: "x": nope',
                     b'exec: "x": nope\0pid 42\n'):
            self.assertEqual((42, 'exec: "x": nope', None),
                             guestspawn.parse_status(data))

    def test_clone_refused(self):
        pid, text, err = guestspawn.parse_status(
            b'fail 11 clone3: Resource temporarily unavailable')
        self.assertIsNone(pid)
        self.assertEqual('clone3: Resource temporarily unavailable', text)
        self.assertTrue(guestspawn.refused(err))
        self.assertFalse(guestspawn.refused(errno.EPERM))

    def test_garbage_is_a_failure(self):
        for data in (b'', b'\0pid x\n', b'\0pid 7', b'\0pid -1\n',
                     b'pid 42\n', b'fail', b'\xff' * 100):
            pid, text, _err = guestspawn.parse_status(data)
            self.assertIsNone(pid)
            self.assertTrue(text)


# Runs in a private mount namespace with a cgroup v2 hierarchy mounted at
# argv[1] (the host may have cgroup v1 only): the helper, given this
# process's own namespaces and that cgroup, starts argv[3:]; one JSON
# line tells what happened.
_RUNNER = """
import json, os, sys
from kata_zun.agent import guestcaps, guestseccomp, guestspawn
cgroup, helper, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
guestspawn.USE_SERVER = spec['serve']
fds = [os.open('/proc/self/ns/pid', os.O_RDONLY),
       os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)]
fds += [os.open('/proc/self/ns/' + ns, os.O_RDONLY)
        for ns in ('ipc', 'uts', 'cgroup', 'mnt')]
fds.append(os.open('/', os.O_RDONLY | os.O_DIRECTORY))
out_r, out_w = os.pipe()
null = os.open('/dev/null', os.O_RDONLY)
cmd = spec.get('raw') or guestspawn.command(
    spec['argv'], spec['workdir'], spec['user'], False,
    spec['privileged'], guestcaps.mask(guestcaps.DEFAULT_CAPS),
    guestcaps.last_cap(), guestseccomp.compiled())
env = {'PATH': '/usr/bin:/bin'}
env.update(('PAD%d' % i, 'x' * 1024) for i in range(spec['pad']))
for _ in range(spec['times']):
    pid, error, err = guestspawn.spawn(cmd, env,
                                       (null, out_w, out_w) + tuple(fds),
                                       helper=helper)
server = guestspawn._server is not None
guestspawn.stop_server()
os.close(out_w)
with os.fdopen(out_r, 'rb') as f:
    output = f.read().decode()
codes = {}
while True:            # the helper and the process: both our children
    try:
        child, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    codes[child] = os.waitstatus_to_exitcode(status)
print(json.dumps({'pid': pid, 'error': error, 'code': codes.get(pid),
                  'out': output, 'server': server, 'children': len(codes)}))
"""


class HelperTestCase(base.BaseTestCase):
    """kzspawn.c compiled and run for real on this host, with the
    namespaces of a test process and a cgroup v2 hierarchy of its own
    (the guest runs it with a container's): it needs root (setns,
    mount), unshare(1) and a C compiler with a static libc.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = None
        cc = shutil.which('gcc')
        if os.geteuid() != 0 or not cc or not shutil.which('unshare'):
            return
        # Compiled once for the class. Not under a test's private
        # TMPDIR: the process may be nobody.
        cls.tmp = tempfile.mkdtemp(dir='/tmp')
        os.chmod(cls.tmp, 0o755)
        cls.helper = os.path.join(cls.tmp, 'kz-spawn')
        subprocess.run([cc, '-static', '-Os', '-Wall', '-Werror', '-o',
                        cls.helper, SOURCE], check=True)
        cls.cgroup = os.path.join(cls.tmp, 'cgroup')
        os.mkdir(cls.cgroup)

    @classmethod
    def tearDownClass(cls):
        if cls.tmp:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        if not self.tmp:
            self.skipTest('needs root, unshare and gcc')

    serve = False

    def _run(self, argv=None, workdir='', user=(0, 0, [], '/'),
             privileged=False, raw=None, times=1, pad=0):
        spec = {'argv': argv, 'workdir': workdir, 'user': user,
                'privileged': privileged, 'raw': raw, 'serve': self.serve,
                'times': times, 'pad': pad}
        root = os.path.dirname(os.path.dirname(os.path.dirname(SOURCE)))
        proc = subprocess.run(
            ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
             'mount -t cgroup2 none "$1" && shift && exec "$@"', 'sh',
             self.cgroup, sys.executable, '-c', _RUNNER, self.cgroup,
             self.helper, json.dumps(spec)],
            capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=root))
        self.assertEqual(0, proc.returncode, proc.stderr)
        result = json.loads(proc.stdout)
        self.last = result
        return (result['pid'], result['error'], result['code'],
                result['out'])

    def test_confined_process_as_user(self):
        workdir = os.path.join(self.tmp, 'made', 'here')
        self.addCleanup(shutil.rmtree, os.path.join(self.tmp, 'made'))
        pid, error, code, out = self._run(
            ['sh', '-c', 'grep -E "^(CapBnd|CapEff|NoNewPrivs|Seccomp):" '
             '/proc/self/status; id -u; id -G; pwd; ls /proc/self/fd'],
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
        # stdio and the directory ls reads: nothing of ours leaked.
        self.assertTrue(out.endswith('\n0\n1\n2\n3\n'), out)

    def test_privileged_keeps_everything(self):
        _pid, error, code, out = self._run(
            ['sh', '-c', 'grep -E "^(NoNewPrivs|Seccomp):" '
             '/proc/self/status'], '', (0, 0, [], '/'), privileged=True)
        self.assertIsNone(error)
        self.assertEqual(0, code)
        self.assertIn('NoNewPrivs:\t0', out)
        self.assertIn('Seccomp:\t0', out)

    def test_not_found_in_path(self):
        _pid, error, code, _out = self._run(['no-such-command-kz'])
        self.assertEqual(127, code)
        self.assertEqual('exec: "no-such-command-kz": executable file not '
                         'found in $PATH', error)

    def test_bad_workdir(self):
        path = os.path.join(self.tmp, 'file')
        open(path, 'w').close()
        self.addCleanup(os.unlink, path)
        _pid, error, code, _out = self._run(['true'], path,
                                            privileged=True)
        self.assertEqual(126, code)
        self.assertIn('chdir to cwd', error)

    def test_bad_arguments_fail_closed(self):
        pid, error, _code, _out = self._run(raw=[self.helper, 'only'])
        self.assertIsNone(pid)
        self.assertIn('bad arguments', error)

    def test_bad_filter_fails_closed(self):
        cmd = guestspawn.command(['true'], '', (0, 0, [], '/'), False,
                                 False, 0, 40, b'\x01\x02\x03')
        _pid, error, code, _out = self._run(raw=cmd)
        self.assertEqual(126, code)
        self.assertIn('seccomp filter', error)


class ServerTestCase(HelperTestCase):
    """The same process through the spawn server (``kz-spawn --serve``),
    which then exits when its socket closes (every child reaped), and
    hostile requests to it.
    """

    serve = True

    def test_served_and_reused(self):
        pid, error, code, out = self._run(['sh', '-c', 'echo x'], times=3)
        self.assertIsNone(error)
        self.assertEqual(0, code)
        self.assertEqual('x\nx\nx\n', out)
        self.assertTrue(self.last['server'])
        # Three processes and one server, all reaped: one server served
        # the three.
        self.assertEqual(4, self.last['children'])

    def test_too_big_for_the_server_goes_one_shot(self):
        # 200 KiB of environment: more than a server request holds, not
        # more than an exec takes. The one-shot helper runs it; no
        # server was started for it.
        _pid, error, code, out = self._run(
            ['sh', '-c', 'echo ${#PAD199}'], pad=200)
        self.assertIsNone(error)
        self.assertEqual(0, code)
        self.assertEqual('1024\n', out)
        self.assertFalse(self.last['server'])
        self.assertEqual(2, self.last['children'])   # helper and process

    def test_requests_the_server_cannot_take(self):
        cmd = guestspawn.command(['true'], '', (0, 0, [], '/'), False,
                                 True, 0, 40, b'')
        self.assertIsNotNone(guestspawn._request(cmd, {'A': 'b'}))
        self.assertIsNone(guestspawn._request(cmd, {'A': 'b\0c'}))
        self.assertIsNone(guestspawn._request(cmd + ['a\0b'], {}))
        self.assertIsNone(guestspawn._request(
            cmd, {'A': 'x' * guestspawn.SERVE_MAX}))

    def test_bad_arguments_fail_closed(self):
        # A request the server refuses whole, like the one-shot helper.
        pid, error, _code, _out = self._run(
            raw=[self.helper, '-', '0', '0', '0', '0', '', '', '', 'x',
                 'true'])
        self.assertIsNone(pid)
        self.assertIn('bad request', error)

    def _raw_server(self, packets):
        """Send hostile packets straight to a server; :returns: what each
        status pipe held and whether the server still serves a good one.
        """
        script = """
import array, json, os, socket, sys
helper = sys.argv[1]
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
theirs.set_inheritable(True)
null = os.open('/dev/null', os.O_RDWR)
os.posix_spawn(helper, [helper, '--serve'], {}, file_actions=[
    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)])
theirs.close()
out = []
fds = [os.open('/proc/self/ns/pid', os.O_RDONLY), null]
fds += [os.open('/proc/self/ns/' + ns, os.O_RDONLY)
        for ns in ('ipc', 'uts', 'cgroup', 'mnt')]
fds.append(os.open('/', os.O_RDONLY))
for packet, nfds in json.loads(sys.stdin.read()):
    r, w = os.pipe()
    sent = [null, null, null, w] + fds
    ours.sendmsg([bytes.fromhex(packet)], [(socket.SOL_SOCKET,
        socket.SCM_RIGHTS, array.array('i', sent[:nfds]))] if nfds else [])
    os.close(w)
    if nfds == 11:
        with os.fdopen(r, 'rb') as f:
            out.append(f.read(8192).decode('utf-8', 'replace'))
    else:
        os.close(r)
        out.append(None)
ours.close()
print(json.dumps({'out': out, 'code': os.waitpid(-1, 0)[1]}))
"""
        proc = subprocess.run(
            [sys.executable, '-c', script, self.helper],
            input=json.dumps(packets).encode(), capture_output=True,
            timeout=60)
        self.assertEqual(0, proc.returncode, proc.stderr)
        return json.loads(proc.stdout)

    def test_hostile_requests(self):
        head = guestspawn._REQUEST_HEAD
        big = head.pack(2 ** 31, 2 ** 31)
        lying = head.pack(12, 0) + b'a\0' * 3
        no_nul = head.pack(10, 0) + b'x' * 100
        deep = head.pack(10, 0) + b'\0' * 10       # no "--" at 9
        result = self._raw_server([
            # (An empty packet reads as end of file: the server exits,
            # and the agent starts another at its next exec.)
            [b'\x01'.hex(), 11], [big.hex(), 11],
            [lying.hex(), 11], [no_nul.hex(), 11], [deep.hex(), 11],
            [lying.hex(), 3],                          # fds missing
            [lying.hex(), 0],
            # Over the server's buffer: cut short, so refused whole.
            [(head.pack(10, 0) + b'y' * (guestspawn.SERVE_MAX + 10)).hex(),
             11],
            # A well-formed one: answered (this cgroup fd is /dev/null,
            # so the clone fails, and says so).
            [guestspawn._request(guestspawn.command(
                ['true'], '', (0, 0, [], '/'), False, True, 0, 40, b''),
                {'PATH': '/bin'}).hex(), 11],
        ])
        out = result['out']
        for text in out[:5]:
            self.assertIn('bad request', text)
        self.assertEqual([None, None], out[5:7])
        self.assertIn('request too big', out[7])
        self.assertTrue(out[8].startswith('fail 9 clone3'), out[8])
        # Still serving after all that, then gone at end of file.
        self.assertEqual(0, result['code'])


class StartServerTestCase(base.BaseTestCase):
    """Started ahead of the first exec only where an exec would use it."""

    def test_started_when_the_helper_is_there(self):
        with mock.patch.object(guestspawn, 'available', return_value=True), \
                mock.patch.object(guestspawn, '_server_socket',
                                  return_value=object()) as start:
            self.assertTrue(guestspawn.start_server('/h'))
        start.assert_called_once_with('/h')

    def test_nothing_without_a_helper_or_when_exec_does_not_serve(self):
        for avail, serve in ((False, True), (True, False)):
            with mock.patch.object(guestspawn, 'available',
                                   return_value=avail), \
                    mock.patch.object(guestspawn, 'USE_SERVER', serve), \
                    mock.patch.object(guestspawn, '_server_socket') as start:
                self.assertFalse(guestspawn.start_server('/h'))
            start.assert_not_called()

    def test_a_server_that_cannot_start_is_no_error(self):
        with mock.patch.object(guestspawn, 'available', return_value=True), \
                mock.patch.object(guestspawn, '_server_socket',
                                  return_value=None):
            self.assertFalse(guestspawn.start_server('/h'))
