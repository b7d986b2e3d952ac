"""The per-container operation lock (flock on <record>/op.lock)."""

import os
import threading
import time

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.runtime import recordlock

CID = 'ab' * 32


class RecordLockTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.record = os.path.join(self.useFixture(
            fixtures.TempDir()).path, CID)
        os.mkdir(self.record)
        with open(os.path.join(self.record, 'config.json'), 'w') as f:
            f.write('{}')

    def test_second_holder_told_at_once_what_the_first_does(self):
        with recordlock.held(self.record, CID, 'started'):
            t = time.monotonic()
            # flock is per open file: a second open in this process
            # conflicts as another process would.
            with self.assertRaises(exception.Conflict) as ctx:
                with recordlock.held(self.record, CID, 'removed'):
                    self.fail('got a held lock')
            self.assertLess(time.monotonic() - t, 1)
        self.assertIn('container %s is being started by another request'
                      % CID[:12], str(ctx.exception))
        # Released: the next one gets it.
        with recordlock.held(self.record, CID, 'removed'):
            pass

    def test_a_holder_that_has_not_said_yet_is_waited_for(self):
        # Locked, its word not written yet (the moment between a new
        # holder's flock and its write): the other request reads again
        # rather than say "being changed".
        import fcntl
        fd = os.open(os.path.join(self.record, recordlock.LOCK_FILE),
                     os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        timer = threading.Timer(0.05, os.pwrite, (fd, b'started', 0))
        timer.start()
        self.addCleanup(timer.join)
        with self.assertRaises(exception.Conflict) as ctx:
            with recordlock.held(self.record, CID, 'started'):
                self.fail('got a held lock')
        self.assertIn('is being started by another request',
                      str(ctx.exception))

    def test_waits_for_the_holder_when_asked(self):
        release = threading.Event()
        taken = threading.Event()

        def holder():
            with recordlock.held(self.record, CID, 'started'):
                taken.set()
                release.wait(10)
        thread = threading.Thread(target=holder)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(release.set)
        taken.wait(10)
        threading.Timer(0.3, release.set).start()
        t = time.monotonic()
        with recordlock.held(self.record, CID, 'removed', wait=10):
            self.assertGreater(time.monotonic() - t, 0.2)

    def test_wait_is_bounded(self):
        with recordlock.held(self.record, CID, 'started'):
            t = time.monotonic()
            self.assertRaises(exception.Conflict, recordlock.held(
                self.record, CID, 'removed', wait=0.3).__enter__)
            self.assertLess(time.monotonic() - t, 2)

    def test_record_gone(self):
        self.assertRaises(exception.ContainerNotFound, recordlock.held(
            self.record + 'x', CID, 'started').__enter__)

    def test_record_removed_while_waiting_leaves_nothing(self):
        # An rm removed config.json (and is removing the directory) by
        # the time we got the lock: not found, and no lock file left to
        # keep the dying directory alive.
        os.unlink(os.path.join(self.record, 'config.json'))
        self.assertRaises(exception.ContainerNotFound, recordlock.held(
            self.record, CID, 'started').__enter__)
        self.assertFalse(os.path.exists(self.record))
