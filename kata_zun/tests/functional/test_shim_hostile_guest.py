"""The shim against a hostile guest.

The VM is replaced by a fake guest speaking over the real unix socket the
shim connects to, so that it can send what no honest agent would. The
shim code under test is the real one; the VMM process is a real child
(``sleep``) so exit detection and stop() run for real too.
"""

import os
import socket
import subprocess
import threading
import time

import fixtures
from oslotest import base

from kata_zun.agent import protocol
from kata_zun.hypervisor import base as hv_base
from kata_zun.runtime import fileutils
from kata_zun.shim import client as shim_client
from kata_zun.shim import server


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

    def start(self, config):
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
        from kata_zun import exception
        self.assertRaisesRegex(exception.ShimError, 'unknown request',
                               client.call, '__init__')
        self.assertRaisesRegex(exception.ShimError, 'unknown request',
                               client.call, 'boot')
        self.assertEqual('created', client.call('state')['status'])
        shim.vm.stop(0)
        serving.join(10)
        self.assertEqual(255, self._state()['exit_code'])
