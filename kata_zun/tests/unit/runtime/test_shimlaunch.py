"""The shim's ready message: kata_zun.runtime.shimlaunch.spawn."""

import os
import threading
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import admission
from kata_zun.runtime import shimlaunch


class SpawnTestCase(base.BaseTestCase):
    """A stand-in shim writes its ready pipe; what it says is bounded."""

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(shim_start_timeout=5, group='kata')
        self.c = mock.Mock(dir='/state/c1')

    def _shim_says(self, *chunks, close=True):
        read_fd, write_fd = os.pipe()

        def shim():
            try:
                for chunk in chunks:
                    os.write(write_fd, chunk)
            except BrokenPipeError:
                pass
            finally:
                if close:
                    os.close(write_fd)
        writer = threading.Thread(target=shim)
        writer.start()
        self.addCleanup(writer.join)
        if not close:
            self.addCleanup(os.close, write_fd)
        return mock.patch.object(shimlaunch, 'launch', return_value=read_fd)

    def test_ok(self):
        with self._shim_says(b'o', b'k\n'):
            shimlaunch.spawn(self.c, '/run/c1')

    def test_refused_by_admission(self):
        with self._shim_says((admission.REFUSED + 'no memory').encode()):
            exc = self.assertRaises(exception.InsufficientResources,
                                    shimlaunch.spawn, self.c, '/run/c1')
        self.assertIn('no memory', str(exc))

    def test_died_silently_names_its_log(self):
        with self._shim_says():
            exc = self.assertRaises(exception.ShimError, shimlaunch.spawn,
                                    self.c, '/run/c1')
        self.assertIn('/state/c1/shim.log', str(exc))

    def test_oversized_message_is_bounded(self):
        # 8 MiB of "error": read to the end, only the first 64 KiB kept.
        with self._shim_says(*[b'x' * 65536] * 128):
            exc = self.assertRaises(exception.ShimError, shimlaunch.spawn,
                                    self.c, '/run/c1')
        # What it said, not a timeout: read to its end, bounded.
        self.assertIn('x' * 1000, str(exc))
        self.assertNotIn('did not come up', str(exc))
        self.assertLessEqual(len(str(exc)), shimlaunch._READY_MAX + 200)

    def test_silent_shim_is_given_up_on(self):
        self.cfg.config(shim_start_timeout=1, group='kata')
        with self._shim_says(close=False):
            exc = self.assertRaises(exception.ShimError, shimlaunch.spawn,
                                    self.c, '/run/c1')
        self.assertIn('did not come up within 1 s', str(exc))
