import os
from unittest import mock

import fixtures
from oslotest import base

from kata_zun.runtime import fileutils
from kata_zun.tests.unit import durability


class FileutilsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_write_read(self):
        path = os.path.join(self.dir, 'state.json')
        fileutils.write_json(path, {'a': 1})
        fileutils.write_json(path, {'a': 2})
        self.assertEqual({'a': 2}, fileutils.read_json(path))
        self.assertEqual(['state.json'], os.listdir(self.dir))
        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)

    def test_failed_write_keeps_old_content_and_no_temp(self):
        path = os.path.join(self.dir, 'state.json')
        fileutils.write_json(path, {'a': 1})
        with mock.patch('os.replace', side_effect=OSError('disk full')):
            self.assertRaises(OSError, fileutils.write_json, path, {'a': 2})
        self.assertEqual({'a': 1}, fileutils.read_json(path))
        self.assertEqual(['state.json'], os.listdir(self.dir))

    def test_read_limit(self):
        path = os.path.join(self.dir, 'big.json')
        fileutils.write_atomic(path, '[' + '1,' * 100 + '1]')
        self.assertRaises(ValueError, fileutils.read_json, path, limit=50)

    def test_writer_and_reader_agree_on_the_limit(self):
        path = os.path.join(self.dir, 'state.json')
        fileutils.write_json(path, {'a': 1})
        big = {'error': '\U0001f600' * (fileutils.RECORD_LIMIT // 12 + 1)}
        self.assertRaisesRegex(ValueError, 'more than the limit',
                               fileutils.write_json, path, big)
        self.assertEqual({'a': 1}, fileutils.read_json(path))
        fits = {'error': 'x' * (fileutils.RECORD_LIMIT - 100)}
        fileutils.write_json(path, fits)
        self.assertEqual(fits, fileutils.read_json(path))

    def test_deeply_nested_record_is_a_value_error(self):
        path = os.path.join(self.dir, 'state.json')
        with open(path, 'w') as f:
            f.write('[' * 100000)
        self.assertRaisesRegex(ValueError, 'nested too deeply',
                               fileutils.read_json, path)


class FsyncTreeTestCase(base.BaseTestCase):

    def test_every_file_and_directory_but_links(self):
        top = self.useFixture(fixtures.TempDir()).join('top')
        os.makedirs(os.path.join(top, 'a', 'b'))
        for rel in ('f', 'a/g', 'a/b/h'):
            with open(os.path.join(top, rel), 'w') as f:
                f.write(rel)
        os.symlink('/nonexistent', os.path.join(top, 'a', 'dangling'))
        os.symlink('b', os.path.join(top, 'a', 'dirlink'))
        rec = self.useFixture(durability.SyncRecorder())
        fileutils.fsync_tree(top)
        os.rename(top, top + '.done')
        fileutils.fsync_dir(os.path.dirname(top))
        self.assertEqual([], rec.unsynced(top + '.done'))


class PollFlockTestCase(base.BaseTestCase):

    def test_takes_a_free_lock_and_gives_up_on_a_held_one(self):
        import fcntl
        import time
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'l')
        holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, holder)
        other = os.open(path, os.O_RDWR)
        self.addCleanup(os.close, other)
        self.assertTrue(fileutils.poll_flock(holder, deadline=0))
        # Another open file description of it: held, one try only.
        self.assertFalse(fileutils.poll_flock(other, deadline=0))
        t = time.monotonic()
        self.assertFalse(fileutils.poll_flock(other, t + 0.2, 0.01))
        self.assertGreaterEqual(time.monotonic() - t, 0.2)
        fcntl.flock(holder, fcntl.LOCK_UN)
        self.assertTrue(fileutils.poll_flock(other))

    def test_backs_off_from_first_to_interval_and_stops_at_deadline(self):
        import fcntl
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'l')
        holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)
        other = os.open(path, os.O_RDWR)
        self.addCleanup(os.close, other)
        clock = [100.0]
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            clock[0] += seconds
        with mock.patch.object(fileutils.time, 'sleep', side_effect=sleep), \
                mock.patch.object(fileutils.time, 'monotonic',
                                  side_effect=lambda: clock[0]):
            self.assertFalse(fileutils.poll_flock(
                other, deadline=100.1, interval=0.04, first=0.005))
        # Doubling up to the interval; the last wait ends at the deadline.
        self.assertEqual([0.005, 0.01, 0.02, 0.04], slept[:4])
        self.assertTrue(all(s == 0.04 for s in slept[4:-1]), slept)
        self.assertAlmostEqual(100.1, clock[0])
