"""The shim against a hostile guest.

The VM is replaced by a fake guest speaking over the real unix socket the
shim connects to, so that it can send what no honest agent would. The
shim code under test is the real one; the VMM process is a real child
(``sleep``) so exit detection and stop() run for real too.
"""

import json
import logging
import os
import socket
import subprocess
import threading
import time

import fixtures
from oslotest import base

from kata_zun.agent import protocol
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.runtime import fileutils
from kata_zun.shim import client as shim_client
from kata_zun.shim import server
from kata_zun.tests.functional import base as fbase


class FakeVM(hv_base.VM):
    def __init__(self, sock_path):
        self._proc = subprocess.Popen(['sleep', '300'])
        self._sock = sock_path

    @property
    def pid(self):
        return self._proc.pid

    @property
    def agent_socket(self):
        return self._sock

    def pause(self):
        pass

    def resume(self):
        pass

    def poll(self):
        return self._proc.poll()

    def wait(self, timeout=None):
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout):
        self._proc.kill()
        self._proc.wait()


class FakeGuest(hv_base.Hypervisor):
    """Serves the agent socket with a scripted guest."""

    def __init__(self, script):
        self.script = script
        self.thread = None

    def start(self, config, admit=None):
        path = os.path.join(config.run_dir, 'agent.sock')
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)

        def run():
            conn, _ = listener.accept()
            try:
                self.script(conn)
            except OSError:
                pass
            finally:
                time.sleep(0.2)
                conn.close()
                listener.close()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.vm = FakeVM(path)
        return self.vm


class GuestEnd(object):
    """The guest's side of the link, one frame at a time."""

    def __init__(self, conn):
        self.conn = conn
        self.decoder = protocol.Decoder()
        self.frames = []

    def next(self):
        while not self.frames:
            data = self.conn.recv(65536)
            if not data:
                raise OSError('host closed the link')
            self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    def reply(self, result):
        req = self.next().json()
        self.conn.sendall(protocol.encode_json(protocol.RESPONSE, {
            'id': req['id'], 'result': result}))


def honest_setup(conn):
    """Behave like the agent until the container is created."""
    guest = GuestEnd(conn)
    conn.sendall(protocol.encode_json(protocol.HELLO, {'version': 1}))
    guest.next()                                    # host HELLO
    guest.reply({})                                 # create_sandbox
    guest.reply({'proc': 1})                        # create_container
    return guest


class HostileGuestTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.state_dir = os.path.join(root, 'c')
        self.run_dir = os.path.join(root, 'r')
        os.mkdir(self.state_dir)
        os.mkdir(self.run_dir)
        fileutils.write_json(os.path.join(self.state_dir, 'config.json'), {
            'id': 'ab' * 32, 'sandbox': {'hostname': 'h'},
            'agent_spec': {'id': 'ab' * 32, 'argv': ['true']}})
        fileutils.write_json(os.path.join(self.state_dir, 'state.json'),
                             {'status': 'created'})

    def _shim(self, script):
        self.guest = FakeGuest(script)
        shim = server.Shim(self.state_dir, self.run_dir, self.guest,
                           max_frame=4096, agent_timeout=5,
                           log_max_bytes=1 << 20, stop_timeout=1)
        self.addCleanup(lambda: shim.vm and shim.vm.stop(0))
        return shim

    def _config(self):
        return hv_base.VMConfig(name='t', vcpus=1, memory_mb=64, kernel='k',
                                initrd='i', run_dir=self.run_dir,
                                console_log='/dev/null')

    def _state(self):
        return fileutils.read_json(os.path.join(self.state_dir,
                                                'state.json'))

    def test_oversized_frame_during_handshake(self):
        def script(conn):
            conn.sendall(protocol.HEADER.pack(protocol.HELLO, 1 << 30))
            conn.sendall(b'x' * 8192)
        shim = self._shim(script)
        start = time.monotonic()
        self.assertRaisesRegex(server.ShimSetupError, 'exceeds the limit',
                               shim.boot, self._config())
        self.assertLess(time.monotonic() - start, 5)

    def test_garbage_instead_of_hello(self):
        shim = self._shim(lambda conn: conn.sendall(os.urandom(64) +
                                                    b'\xff' * 16))
        self.assertRaisesRegex(server.ShimSetupError, 'protocol violation',
                               shim.boot, self._config())

    def test_silent_guest_times_out(self):
        shim = self._shim(lambda conn: time.sleep(3))
        shim.agent_timeout = 1
        self.assertRaisesRegex(server.ShimSetupError, 'did not answer',
                               shim.boot, self._config())

    def test_wrong_protocol_version(self):
        shim = self._shim(lambda conn: conn.sendall(protocol.encode_json(
            protocol.HELLO, {'version': 99})))
        self.assertRaisesRegex(server.ShimSetupError, 'version 99',
                               shim.boot, self._config())

    def test_garbage_after_start_ends_container_not_shim(self):
        def script(conn):
            honest_setup(conn).reply({'pid': 5})             # start
            # Malformed exit events are ignored ...
            conn.sendall(protocol.encode_json(protocol.EVENT, {
                'event': 'exit', 'proc': 'one', 'exit_code': []}))
            conn.sendall(protocol.encode_stream(protocol.STDOUT, 1,
                                                b'before\n'))
            time.sleep(0.3)
            # ... a frame over the limit closes the link.
            conn.sendall(protocol.HEADER.pack(protocol.STDOUT, 10 ** 9))
            time.sleep(1)
        shim = self._shim(script)
        shim.boot(self._config())
        serving = threading.Thread(target=shim.serve, daemon=True)
        serving.start()
        client = shim_client.ShimClient(
            os.path.join(self.run_dir, 'shim.sock'), timeout=5)
        self.addCleanup(client.close)
        client.call('attach')
        client.call('start')
        result = client.call('wait', {'timeout': 10}, timeout=15)
        self.assertTrue(result['exited'])
        self.assertEqual(255, result['exit_code'])
        self.assertIn('exceeds the limit', result['error'])
        serving.join(10)
        self.assertFalse(serving.is_alive())
        state = self._state()
        self.assertEqual('exited', state['status'])
        self.assertIn('agent link lost', state['error'])
        self.assertIsNotNone(shim.vm.poll())     # the VM was stopped
        with open(os.path.join(self.state_dir, 'container.log'), 'rb') as f:
            self.assertIn(b'before\n', f.read())

    def test_unknown_requests_from_clients_are_refused(self):
        def script(conn):
            honest_setup(conn)
            time.sleep(3)
        shim = self._shim(script)
        shim.boot(self._config())
        serving = threading.Thread(target=shim.serve, daemon=True)
        serving.start()
        client = shim_client.ShimClient(
            os.path.join(self.run_dir, 'shim.sock'), timeout=5)
        self.addCleanup(client.close)
        self.assertRaisesRegex(exception.ShimError, 'unknown request',
                               client.call, '__init__')
        self.assertRaisesRegex(exception.ShimError, 'unknown request',
                               client.call, 'boot')
        self.assertEqual('created', client.call('state')['status'])
        shim.vm.stop(0)
        serving.join(10)
        self.assertEqual(255, self._state()['exit_code'])

    def _serve(self, script, max_frame=4096):
        shim = self._shim(script)
        shim.max_frame = max_frame
        shim.boot(self._config())
        serving = threading.Thread(target=shim.serve, daemon=True)
        serving.start()
        self.addCleanup(serving.join, 10)
        self.addCleanup(lambda: shim.vm.stop(0))
        client = shim_client.ShimClient(
            os.path.join(self.run_dir, 'shim.sock'), timeout=5,
            max_frame=max_frame)
        self.addCleanup(client.close)
        return shim, serving, client

    def test_lying_start_answer_cannot_bloat_or_forge_the_record(self):
        # A 1 MiB answer of astral characters: JSON-escaped, each becomes
        # 12 bytes. Stored as it came, the record outgrew what its reader
        # takes and the container vanished from ps and Zun's sync.
        forged = '\n2026-01-01 00:00:00.000 1 ERROR forged \x1b[2J\r'
        blob = '\U0001f600' * (125 * 1024) + forged

        def script(conn):
            guest = honest_setup(conn)
            req = guest.next().json()
            conn.sendall(protocol.encode(protocol.RESPONSE, json.dumps({
                'id': req['id'], 'result': {
                    'proc': 1, 'pid': blob, 'error': blob}},
                ensure_ascii=False).encode()))
            conn.sendall(protocol.encode_json(protocol.EVENT, {
                'event': 'exit', 'proc': 1, 'exit_code': 1}))
            time.sleep(1)
        shim, serving, client = self._serve(script, max_frame=1 << 20)
        client.call('attach')
        result = client.call('start')
        self.assertLessEqual(len(result['error']), 4096)
        result = client.call('wait', {'timeout': 10}, timeout=15)
        self.assertTrue(result['exited'])
        serving.join(10)
        path = os.path.join(self.state_dir, 'state.json')
        self.assertLess(os.path.getsize(path), 64 * 1024)
        state = self._state()
        self.assertIsNone(state['pid'])
        for text in (state['error'], state['start_error']):
            self.assertNotIn('\n', text)
            self.assertNotIn('\r', text)
            self.assertNotIn('\x1b', text)
            self.assertIn('more characters', text)

    def test_deeply_nested_answer_is_a_protocol_error(self):
        def script(conn):
            honest_setup(conn).next()                       # start
            conn.sendall(protocol.encode(protocol.RESPONSE,
                                         b'[' * 4000))
            time.sleep(1)
        shim, serving, client = self._serve(script)
        self.assertRaisesRegex(exception.ShimError, 'container exited',
                               client.call, 'start')
        serving.join(10)
        state = self._state()
        self.assertEqual(255, state['exit_code'])
        self.assertIn('nested deeper', state['error'])
        self.assertFalse(serving.is_alive())
        self.assertIsNotNone(shim.vm.poll())

    def test_ps_and_stats_answers_are_typed_bounded_and_escaped(self):
        def script(conn):
            guest = honest_setup(conn)
            guest.reply({'proc': 1, 'pid': 9})                # start
            guest.reply({'processes': [
                {'pid': '1; rm -rf /', 'ppid': [], 'uid': 2 ** 80,
                 'state': 'S\x1b]0;owned\x07', 'cpu_time': 'x',
                 'start_time': None, 'cmd': 'sh\n\x1b[31mroot'},
                'not a process', 7] * 3 + [{'pid': 5}] * 5000})
            guest.reply({'cpu_usage_usec': -5, 'memory_usage': 'lots',
                         'memory_limit': 1.5, 'pids': True,
                         'extra': 'x' * 3000, 'time': 'now'})
            time.sleep(2)
        shim, serving, client = self._serve(script, max_frame=1 << 20)
        client.call('start')
        procs = client.call('ps')['processes']
        # At most 4096 entries, those that are no objects left out.
        self.assertEqual(4096 - 6, len(procs))
        self.assertEqual({'pid': 0, 'ppid': 0, 'uid': 0,
                          'state': 'S\\x1b]0;own...[3 more characters]',
                          'cpu_time': 0.0,
                          'start_time': 0.0, 'rss_kb': 0,
                          'cmd': 'sh\\n\\x1b[31mroot'}, procs[0])
        stats = client.call('stats')
        self.assertNotIn('extra', stats)
        self.assertEqual((0, 0, 0, 0, 0.0), (
            stats['cpu_usage_usec'], stats['memory_usage'],
            stats['memory_limit'], stats['pids'], stats['time']))

    def test_guest_warnings_are_rate_limited(self):
        logger = self.useFixture(fixtures.FakeLogger(level=logging.WARNING))

        def script(conn):
            honest_setup(conn).reply({'proc': 1, 'pid': 9})   # start
            bad = protocol.encode_json(protocol.EVENT, {
                'event': 'exit', 'proc': 'x', 'exit_code': 'y'})
            conn.sendall(bad * 2000)
            time.sleep(1)
        shim, serving, client = self._serve(script)
        client.call('start')
        deadline = time.monotonic() + 10
        while (shim.agent.decoder.pending or
               time.monotonic() < deadline and
               logger.output.count('malformed') < 10):
            time.sleep(0.1)
        time.sleep(0.5)
        self.assertEqual(10, logger.output.count('malformed exit event'))
        self.assertEqual('running', client.call('state')['status'])

    def test_stdout_flood_keeps_container_log_within_its_cap(self):
        def script(conn):
            honest_setup(conn).reply({'proc': 1, 'pid': 9})   # start
            line = (b'y' * 1000 + b'\n') * 60
            for i in range(400):                              # 24 MB
                conn.sendall(protocol.encode_stream(
                    protocol.STDOUT if i % 2 else protocol.STDERR, 1,
                    line if i % 3 else b'z' * 60000))
            conn.sendall(protocol.encode_json(protocol.EVENT, {
                'event': 'exit', 'proc': 1, 'exit_code': 0}))
            time.sleep(1)
        shim, serving, client = self._serve(script, max_frame=1 << 20)
        client.call('start')
        result = client.call('wait', {'timeout': 60}, timeout=65)
        self.assertEqual(0, result['exit_code'])
        serving.join(10)
        names = [n for n in os.listdir(self.state_dir)
                 if n.startswith('container.log')]
        total = sum(os.path.getsize(os.path.join(self.state_dir, n))
                    for n in names)
        # Two files of at most log_max_bytes plus one line each.
        self.assertLessEqual(total, 2 * ((1 << 20) + 16 * 1024 + 64))
        from kata_zun.shim import logs
        last = logs.read(os.path.join(self.state_dir, 'container.log'),
                         tail=1)
        self.assertEqual(1, len(last))

    def test_archive_out_stops_at_its_limit(self):
        def script(conn):
            guest = honest_setup(conn)
            guest.reply({'proc': 1, 'pid': 9})                # start
            req = guest.next().json()                         # archive_get
            conn.sendall(protocol.encode_json(protocol.RESPONSE, {
                'id': req['id'], 'result': {
                    'proc': 2, 'stat': {'name': 'x', 'size': 'huge',
                                        'mode': -1, 'junk': [1] * 99}}}))
            chunk = protocol.encode_stream(protocol.STDOUT, 2,
                                           b'\0' * 60000)
            for _ in range(1000):                             # 60 MB
                conn.sendall(chunk)
        shim, serving, client = self._serve(script, max_frame=1 << 20)
        client.call('start')
        result = client.call('archive_get', {'path': '/'})
        self.assertEqual({'name': 'x', 'size': 0, 'mode': 0, 'mtime': 0.0,
                          'linkTarget': ''}, result['stat'])
        out, err, code = client.exchange(result['proc'], None,
                                         limit=1 << 20, stop_over=True,
                                         timeout=60)
        self.assertIsNone(code)
        self.assertEqual(1 << 20, len(out))

    def _flood(self, sock, frame, total, stall=1.0):
        """Send ``frame`` until ``total`` bytes went or the shim stops
        taking them for ``stall`` seconds.

        :returns: bytes sent.
        """
        sock.settimeout(stall)
        sent = 0
        while sent < total:
            try:
                sock.sendall(frame)
            except socket.timeout:
                break
            sent += len(frame)
        return sent

    def test_a_guest_that_stops_reading_holds_up_its_feeders_only(self):
        def script(conn):
            honest_setup(conn).reply({'proc': 1, 'pid': 9})   # start
            time.sleep(30)                  # and never reads again
        fileutils.write_json(os.path.join(self.state_dir, 'config.json'), {
            'id': 'ab' * 32, 'sandbox': {'hostname': 'h'},
            'agent_spec': {'id': 'ab' * 32, 'argv': ['cat'],
                           'stdin': True}})
        shim, serving, client = self._serve(script, max_frame=1 << 20)
        client.call('start')
        client.call('attach', {'stdin': True})
        frame = protocol.encode_stream(protocol.STDIN, 1,
                                       b'x' * protocol.STREAM_CHUNK)
        sent = self._flood(client.sock, frame, 128 * 1024 * 1024)
        self.assertLess(sent, 16 * 1024 * 1024)
        self.assertLess(shim.agent.pending_out, 2 * 1024 * 1024)
        # A client that asks the silent guest again and again is held
        # up after a few requests in progress, not queued without end.
        asker = shim_client.ShimClient(
            os.path.join(self.run_dir, 'shim.sock'), timeout=5)
        self.addCleanup(asker.close)
        request = protocol.encode_json(protocol.REQUEST, {
            'id': 1, 'op': 'ps', 'args': {}})
        self._flood(asker.sock, request, 10 ** 6 * len(request))
        self.assertLessEqual(len(shim.pending), 2 * 16)
        # Others are served.
        other = shim_client.ShimClient(
            os.path.join(self.run_dir, 'shim.sock'), timeout=5)
        self.addCleanup(other.close)
        self.assertEqual('running', other.call('state')['status'])


def _rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


class StdinFloodTestCase(fbase.KataZunFunctionalTest):
    """A client streams stdin into a paused VM (a real one).

    The shim holds it back instead of buffering it, and serves the others.
    """

    FLOOD = 256 * 1024 * 1024

    def test_stdin_into_a_paused_container_is_held_back(self):
        self.load_busybox()
        cid = self.kz('run', '-d', '-i', '--name', 'flood', 'busybox',
                      'sleep', '600', check=0).text.strip()
        self.kz('pause', 'flood', check=0)
        with open(os.path.join(self.state_path, 'containers', cid,
                               'state.json')) as f:
            shim_pid = json.load(f)['shim_pid']
        sock_path = os.path.join(self.run_path, cid[:16], 'shim.sock')
        before = _rss_kib(shim_pid)
        feeder = shim_client.ShimClient(sock_path, timeout=10)
        self.addCleanup(feeder.close)
        main = feeder.call('state')['main']
        feeder.call('attach', {'stdin': True})
        frame = protocol.encode_stream(protocol.STDIN, main,
                                       b'x' * protocol.STREAM_CHUNK)
        feeder.sock.settimeout(2)
        sent = 0
        deadline = time.monotonic() + 60
        while sent < self.FLOOD and time.monotonic() < deadline:
            try:
                feeder.sock.sendall(frame)
            except socket.timeout:
                break                  # held back: what this test wants
            sent += len(frame)
        grown = _rss_kib(shim_pid) - before
        # Others are served while the feeder is held back.
        other = shim_client.ShimClient(sock_path, timeout=10)
        self.addCleanup(other.close)
        self.assertEqual('paused', other.call('state')['status'])
        self.assertLess(sent, 32 * 1024 * 1024, 'the shim took all of it')
        self.assertLess(grown, 32 * 1024, 'shim RSS grew by %d KiB' % grown)
        # A flooded, paused container can still be stopped.
        self.kz('stop', '-t', '0', 'flood', check=0)
        self.assertEqual('exited', json.loads(self.kz(
            'inspect', 'flood', check=0).out)[0]['State']['Status'])


class ShimLogCapTestCase(fbase.KataZunFunctionalTest):
    """Whatever makes the shim log, its log stays within its cap."""

    extra_config = '[kata]\nshim_log_max_bytes = 16384\n'

    def test_shim_log_is_rotated_at_its_cap(self):
        self.load_busybox()
        cid = self.kz('run', '-d', '--name', 'noisy', 'busybox', 'sleep',
                      '600', check=0).text.strip()
        cdir = os.path.join(self.state_path, 'containers', cid)
        sock_path = os.path.join(self.run_path, cid[:16], 'shim.sock')
        # Each connection sending garbage costs a warning line.
        sent = 0
        while sent < 3000:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sock_path)
                s.sendall(b'\x63' * 16)
                sent += 1
            except BlockingIOError:
                time.sleep(0.05)           # its listen backlog is full
            finally:
                s.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                client = shim_client.ShimClient(sock_path, timeout=30)
                break
            except exception.ShimError:
                # Still working through the backlog of connections.
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.2)
        with client:
            self.assertEqual('running', client.call('state')['status'])
        sizes = [os.path.getsize(os.path.join(cdir, name))
                 for name in os.listdir(cdir) if name.startswith('shim.log')]
        self.assertLessEqual(sum(sizes), 2 * 16384 + 4096, sizes)
        r = self.kz('exec', 'noisy', 'echo', 'alive', check=0)
        self.assertEqual(b'alive\n', r.out)
