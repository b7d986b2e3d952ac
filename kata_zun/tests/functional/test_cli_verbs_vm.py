"""attach, events, top with ps options, system df and the prunes,
with real VMs driven through the real CLI.
"""

import json
import os
import signal
import subprocess
import sys
import time

from kata_zun.tests.functional import base


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class AttachEventsPruneTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def popen(self, *args, stdin=subprocess.DEVNULL):
        # SIGINT as at a terminal, whatever the test runner inherited (a
        # runner started in the background by a non-interactive shell
        # ignores it, and so would a CLI it starts: Python then never
        # turns SIGINT into KeyboardInterrupt).
        proc = subprocess.Popen(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf_file] + list(args), stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_default_sigint)
        self.addCleanup(self._reap, proc)
        return proc

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    def read_until(self, stream, want, timeout=120):
        """Lines of ``stream`` up to the first one containing ``want``."""
        os.set_blocking(stream.fileno(), True)
        deadline = time.time() + timeout
        lines = []
        while time.time() < deadline:
            line = stream.readline()
            if not line:
                break
            lines.append(line)
            if want in line:
                return lines
        self.fail('%r never came: %r' % (want, lines))

    def events(self, *args):
        r = self.kz('events', '--since', '0', '--until',
                    '%f' % (time.time() + 0.01), '--format', '{{json .}}',
                    *args, check=0)
        return [json.loads(line) for line in r.text.splitlines()]

    def test_attach_stdin_events_df_and_prune(self):
        self.kz('run', '-d', '-i', '--name', 'att', 'busybox', 'sh', '-c',
                'echo ready; while read l; do echo "got $l"; '
                '[ "$l" = quit ] && exit 7; done', check=0)
        attach = self.popen('attach', 'att', stdin=subprocess.PIPE)
        attach.stdin.write(b'hello\n')
        attach.stdin.flush()
        self.read_until(attach.stdout, b'got hello')
        attach.stdin.write(b'quit\n')
        attach.stdin.flush()
        self.read_until(attach.stdout, b'got quit')
        self.assertEqual(7, attach.wait(timeout=120))
        r = self.kz('attach', 'att', check=1)
        self.assertIn(b'You cannot attach to a stopped container, start '
                      b'it first', r.err)

        # What happened is in the log, each once, in order.
        cid = json.loads(self.kz('inspect', 'att', check=0).out)[0]['Id']
        mine = [e for e in self.events('--filter', 'container=att')]
        self.assertEqual(['create', 'start', 'die'],
                         [e['Action'] for e in mine])
        self.assertEqual({'name': 'att', 'image': 'busybox',
                          'exitCode': '7'}, mine[2]['Actor']['Attributes'])
        self.assertEqual(cid, mine[0]['Actor']['ID'])
        self.assertIn('load', [e['Action'] for e in self.events(
            '--filter', 'type=image')])
        text = self.kz('events', '--since', '0', '--until', '%f' %
                       time.time(), '--filter', 'event=die',
                       check=0).text
        self.assertRegex(text, r'^\S+ container die %s \(exitCode=7, '
                               r'image=busybox, name=att\)\n$' % cid)

        df = self.kz('system', 'df', check=0).text.splitlines()
        self.assertEqual(['TYPE', 'TOTAL', 'ACTIVE', 'SIZE',
                          'RECLAIMABLE'], df[0].split())
        self.assertEqual(['Images', '1', '1'], df[1].split()[:3])
        self.assertEqual(['Containers', '1', '0'], df[2].split()[:3])
        self.assertNotEqual('0B', df[2].split()[3])   # its writable layer

        r = self.kz('container', 'prune', input=b'n\n', check=0)
        self.assertIn(b'Are you sure you want to continue? [y/N]', r.out)
        self.assertIn(b'att', self.kz('ps', '-a', check=0).out)
        r = self.kz('container', 'prune', '-f', check=0)
        self.assertIn(('Deleted Containers:\n%s\n' % cid).encode(), r.out)
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)
        self.assertEqual(['destroy'], [e['Action'] for e in self.events(
            '--filter', 'container=%s' % cid[:12], '--filter',
            'event=destroy')])
        r = self.kz('image', 'prune', '-f', check=0)     # only dangling
        self.assertEqual(b'Total reclaimed space: 0B\n', r.out)
        r = self.kz('image', 'prune', '-a', '-f', check=0)
        self.assertIn(b'untagged: busybox:latest\ndeleted: sha256:', r.out)
        self.assertNotIn(b'busybox', self.kz('images', check=0).out)
        df = self.kz('system', 'df', check=0).text.splitlines()
        self.assertEqual(['Images', '0', '0', '0B', '0B'], df[1].split())
        self.assertEqual('delete', self.events('--filter',
                                               'type=image')[-1]['Action'])

    def test_sig_proxy_follow_and_top(self):
        self.kz('run', '-d', '--name', 'sig', 'busybox', 'sh', '-c',
                'trap "echo caught; exit 3" INT; '
                'while true; do echo tick; sleep 1; done', check=0)
        r = self.kz('top', 'sig', '-o', 'pid,comm', check=0)
        rows = [line.split() for line in r.text.splitlines()]
        self.assertEqual(['PID', 'COMMAND'], rows[0])
        # The guest's pids (as docker top shows the host's).
        self.assertIn('sh', [row[1] for row in rows[1:]])
        self.assertTrue(all(row[0].isdigit() for row in rows[1:]))
        r = self.kz('top', 'sig', check=0)
        self.assertEqual(['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY',
                          'TIME', 'CMD'], r.text.splitlines()[0].split())
        r = self.kz('top', 'sig', 'aux', check=1)
        self.assertIn(b'VSZ', r.err)
        self.assertIn(b'Supported:', r.err)

        # From now on (--since): a follower still starting (a busy host)
        # when the kill comes would not see it otherwise.
        follow = self.popen('events', '--since', '%f' % time.time(),
                            '--filter', 'container=sig')
        attach = self.popen('attach', 'sig')
        self.read_until(attach.stdout, b'tick')
        attach.send_signal(signal.SIGINT)
        self.read_until(attach.stdout, b'caught')
        self.assertEqual(3, attach.wait(timeout=120))
        self.read_until(follow.stdout, b'container kill')
        self.read_until(follow.stdout, b'container die')
        follow.send_signal(signal.SIGINT)
        self.assertEqual(130, follow.wait(timeout=60))
        kill = self.events('--filter', 'event=kill')
        self.assertEqual('2', kill[0]['Actor']['Attributes']['signal'])


class ProgressTestCase(base.KataZunFunctionalTest):
    """Pull and save progress through a real pseudo-terminal, and the
    same commands quiet on a pipe (a real registry; no VM).
    """

    def _with_pty(self, *args):
        """Run the CLI with stderr on a pty; :returns: (code, stdout,
        what the terminal received).
        """
        import pty
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf_file] + list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        screen = bytearray()
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:       # EIO: the last writer closed the pty
                break
            if not data:
                break
            screen += data
        os.close(master)
        out = proc.stdout.read()
        proc.stdout.close()
        return proc.wait(timeout=300), out, bytes(screen)

    def test_pull_and_save_progress_on_a_tty_only(self):
        import fixtures
        from kata_zun.image import busybox
        from kata_zun.tests.functional import registry_fixture as rf
        tmp = self.useFixture(fixtures.TempDir()).path
        registry = self.useFixture(rf.Registry('http'))
        path = os.path.join(tmp, 'big.tar')
        # Incompressible, so that the layer takes several reads.
        busybox.write_oci_archive(path, extra_files={
            'big.bin': os.urandom(3 * 1024 * 1024)})
        registry.push('oci-archive:' + path, 'team/big:1')
        ref = '%s/team/big:1' % registry.address
        with open(self.conf_file, 'a') as f:
            f.write('[kata_image]\ninsecure_registries = %s\n'
                    % registry.address)

        code, out, screen = self._with_pty('pull', ref)
        self.assertEqual(0, code, screen)
        self.assertTrue(out.startswith(b'sha256:'), out)
        text = screen.decode()
        self.assertRegex(text, r'Layer 1/1 [0-9a-f]{12}: Downloading '
                               r'\[[=> ]{30}\] [\d.]+[kM]B/[\d.]+MB  '
                               r'[\d.]+[kMG]?B/s')
        self.assertIn('\x1b[J', text)             # redrawn in place
        self.assertRegex(text, r'Layer 1/1 [0-9a-f]{12}: done')

        saved = os.path.join(tmp, 'saved.tar')
        code, _out, screen = self._with_pty('save', '-o', saved, ref)
        self.assertEqual(0, code, screen)
        self.assertRegex(screen.decode(),
                         r'%s: Writing [\d.]+[kM]?B' % saved)
        self.assertIn('%s: saved ' % saved, screen.decode())

        # Not a terminal: the status lines, no byte counts, no escapes.
        self.kz('rmi', ref, check=0)
        r = self.kz('pull', ref, check=0)
        self.assertIn(b'Pulling %s' % ref.encode(), r.err)
        self.assertRegex(r.text + r.err.decode(), r': done')
        self.assertNotIn(b'\x1b', r.err)
        self.assertNotIn(b'Downloading', r.err)
        self.assertNotIn(b' / ', r.err)
        r = self.kz('save', '-o', saved, ref, check=0)
        self.assertEqual(b'', r.err)
