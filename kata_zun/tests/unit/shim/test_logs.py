import os
import tracemalloc

import fixtures
from oslotest import base

from kata_zun.shim import logs


class LogsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'container.log')

    def test_lines_streams_and_partial_lines(self):
        w = logs.LogWriter(self.path, 1 << 20)
        w.write(logs.STDOUT, b'one\ntw', now=10.0)
        w.write(logs.STDERR, b'err\n', now=11.0)
        w.write(logs.STDOUT, b'o\nthree', now=12.0)
        w.close()
        recs = logs.read(self.path)
        self.assertEqual([(10.0, 1, b'one\n'), (11.0, 2, b'err\n'),
                          (12.0, 1, b'two\n')], recs[:3])
        self.assertEqual(b'three', recs[3][2])
        self.assertEqual([b'err\n'],
                         [r[2] for r in logs.read(self.path, stdout=False)])
        self.assertEqual([b'two\n', b'three'],
                         [r[2] for r in logs.read(self.path, tail=2)])
        self.assertEqual([], logs.read(self.path, tail=0))
        self.assertEqual([b'two\n', b'three'],
                         [r[2] for r in logs.read(self.path, since=12.0,
                                                  stderr=False)])

    def test_binary_and_long_lines_are_byte_exact(self):
        data = os.urandom(100000)
        w = logs.LogWriter(self.path, 1 << 30)
        for i in range(0, len(data), 777):
            w.write(logs.STDOUT, data[i:i + 777])
        w.close()
        recs = logs.read(self.path)
        self.assertEqual(data, b''.join(r[2] for r in recs))
        self.assertTrue(all(len(r[2]) <= logs.MAX_LINE for r in recs))

    def test_rotation_keeps_one_file(self):
        w = logs.LogWriter(self.path, 4096)
        for i in range(1000):
            w.write(logs.STDOUT, b'line %04d\n' % i)
        w.close()
        self.assertTrue(os.path.exists(self.path + '.1'))
        self.assertLess(os.path.getsize(self.path), 8192)
        recs = logs.read(self.path)
        self.assertEqual(b'line 0999\n', recs[-1][2])
        nums = [int(r[2][5:9]) for r in recs]
        self.assertEqual(sorted(nums), nums)

    def test_follower_sees_appends(self):
        w = logs.LogWriter(self.path, 1 << 20)
        w.write(logs.STDOUT, b'a\n')
        f = logs.Follower(self.path, offset=os.path.getsize(self.path))
        self.assertEqual([], f.poll())
        w.write(logs.STDERR, b'b\n')
        self.assertEqual([b'b\n'], [r[2] for r in f.poll()])
        w.close()
        f.close()

    def test_parse_since(self):
        self.assertIsNone(logs.parse_since(None))
        self.assertIsNone(logs.parse_since('None'))
        self.assertEqual(1700000000.0, logs.parse_since('1700000000'))
        self.assertEqual(940.0, logs.parse_since('1m', now=1000.0))
        self.assertEqual(-6200.0, logs.parse_since('2h', now=1000.0))
        self.assertEqual(0.5, logs.parse_since('1970-01-01 00:00:00,500000'))
        self.assertEqual(3600.0, logs.parse_since('1970-01-01T01:00:00Z'))
        self.assertRaises(ValueError, logs.parse_since, 'yesterday')

    def test_format_time(self):
        self.assertEqual('1970-01-01T00:00:01.500000000Z',
                         logs.format_time(1.5))


class TailFromTheEndTestCase(base.BaseTestCase):
    """``--tail`` costs the records it returns, not the size of the log."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'container.log')

    def _flood(self, lines, max_bytes=1 << 40):
        w = logs.LogWriter(self.path, max_bytes)
        chunk = b''.join(b'%07d %s\n' % (i, b'x' * 90) for i in range(1000))
        for _ in range(lines // 1000):
            w.write(logs.STDOUT, chunk)
        w.write(logs.STDERR, b'last words\n')
        w.close()

    def test_tail_of_a_big_log_reads_only_the_end(self):
        self._flood(300000)                     # ~33 MB of records
        self.assertGreater(os.path.getsize(self.path), 30 * 10 ** 6)
        tracemalloc.start()
        try:
            recs = logs.read(self.path, tail=3)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual([b'0000998 ' + b'x' * 90 + b'\n',
                          b'0000999 ' + b'x' * 90 + b'\n',
                          b'last words\n'], [r[2] for r in recs])
        self.assertLess(peak, 1024 * 1024)
        # Streams and --since are applied from the end too.
        self.assertEqual([b'last words\n'], [
            r[2] for r in logs.read(self.path, stdout=False, tail=5)])

    def test_byte_budget_keeps_the_newest_and_says_so(self):
        self._flood(20000)
        recs, truncated = logs.read(self.path, max_bytes=10000)
        self.assertTrue(truncated)
        self.assertLessEqual(sum(len(r[2]) for r in recs), 10000)
        self.assertEqual(b'last words\n', recs[-1][2])
        recs, truncated = logs.read(self.path, tail=2, max_bytes=10000)
        self.assertEqual((2, False), (len(recs), truncated))

    def test_tail_spans_the_rotated_file(self):
        w = logs.LogWriter(self.path, 4096)
        for i in range(200):
            w.write(logs.STDOUT, b'line %04d\n' % i)
        w.close()
        self.assertTrue(os.path.exists(self.path + '.1'))
        recs = logs.read(self.path, tail=150)
        self.assertEqual([b'line %04d\n' % i for i in range(50, 200)],
                         [r[2] for r in recs])

    def test_old_format_and_torn_end_are_read_forwards(self):
        with open(self.path, 'wb') as f:            # no magic, no trailers
            for i in range(5):
                f.write(logs.RECORD.pack(i, logs.STDOUT, 2) + b'%d\n' % i)
        self.assertEqual([b'3\n', b'4\n'],
                         [r[2] for r in logs.read(self.path, tail=2)])
        # The writer rotates it away rather than mixing formats.
        w = logs.LogWriter(self.path, 1 << 20)
        w.write(logs.STDOUT, b'new\n')
        w.close()
        self.assertEqual([b'3\n', b'4\n', b'new\n'],
                         [r[2] for r in logs.read(self.path, tail=3)])
        with open(self.path, 'ab') as f:           # a torn last record
            f.write(logs.RECORD.pack(9, logs.STDOUT, 50) + b'torn')
        self.assertEqual([b'4\n', b'new\n'],
                         [r[2] for r in logs.read(self.path, tail=2)])
