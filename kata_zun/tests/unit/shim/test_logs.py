import os

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
