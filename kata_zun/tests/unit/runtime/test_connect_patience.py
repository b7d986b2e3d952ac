"""Connecting to a shim that answers late (issue 14: a CLI soak cycle's
``stop`` failed with "cannot talk to the shim ... timed out" while the
host's memory ran out and the shim's answer took longer than the fixed
10 s handshake).
"""

import os
import socket
import tempfile
import threading
import time
import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun.agent import protocol
from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import liveness
from kata_zun.runtime import manager


class _LateShim(object):
    """A shim socket that takes every connection and answers the HELLO of
    the ``answer_on``-th one only (None: never).
    """

    def __init__(self, path, answer_on=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.answer_on = answer_on
        self.connections = 0
        self._held = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            if self.connections == self.answer_on:
                conn.sendall(protocol.encode_json(
                    protocol.HELLO, {'version': protocol.VERSION}))

    def close(self):
        self.sock.close()
        for conn in self._held:
            conn.close()


class ConnectPatienceTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)
        self.path = os.path.join(self.dir, 'shim.sock')
        self.addCleanup(lambda: os.path.exists(self.path) and
                        os.unlink(self.path))
        # Runtime.connect reads only these of the runtime.
        self.rt = types.SimpleNamespace(pod_of=lambda c: None,
                                        _run_dir=lambda cid: self.dir)
        self.c = types.SimpleNamespace(id='a' * 64,
                                       state={'shim_pid': 4242})
        self.alive = mock.patch.object(liveness, 'pid_is_shim',
                                       return_value=True)

    def _shim(self, answer_on):
        shim = _LateShim(self.path, answer_on)
        self.addCleanup(shim.close)
        return shim

    def _connect(self):
        return manager.Runtime.connect(self.rt, self.c, timeout=0.2)

    def test_a_late_shim_that_lives_is_asked_again(self):
        shim = self._shim(answer_on=3)
        with self.alive:
            client = self._connect()
        client.close()
        self.assertEqual(3, shim.connections)

    def test_a_dead_shim_is_not_waited_for(self):
        shim = self._shim(answer_on=3)
        with mock.patch.object(liveness, 'pid_is_shim',
                               return_value=False):
            exc = self.assertRaises(exception.ShimUnresponsive,
                                    self._connect)
        self.assertIn('did not answer within', str(exc))
        self.assertEqual(1, shim.connections)

    def test_a_shim_that_never_answers_is_bounded(self):
        self.cfg.config(shim_start_timeout=1, group='kata')
        self._shim(answer_on=None)
        t = time.monotonic()
        with self.alive:
            self.assertRaises(exception.ShimUnresponsive, self._connect)
        self.assertLess(time.monotonic() - t, 10)

    def test_no_socket_fails_at_once(self):
        # Nothing listens: not a late answer, no retry.
        with self.alive:
            exc = self.assertRaises(exception.ShimError, self._connect)
        self.assertNotIsInstance(exc, exception.ShimUnresponsive)
