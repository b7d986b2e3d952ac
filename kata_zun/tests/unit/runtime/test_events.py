"""The host's event log: appends, bounds, rotation, hostile content."""

import json
import multiprocessing
import os

from oslo_config import fixture as cfg_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import events


def _append_many(state_path, tag, count):
    for i in range(count):
        events.emit(state_path, 'container', 'start', '%s-%d' % (tag, i),
                    {'name': 'x' * 100})


class EventLogTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(cfg_fixture.Config(conf.CONF))
        self.path = self.useFixture(__import__('fixtures').TempDir()).path

    def test_emit_and_read(self):
        events.emit(self.path, 'container', 'create', 'c1',
                    {'name': 'web', 'image': 'busybox', 'none': None},
                    now=100.5)
        events.emit(self.path, 'image', 'pull', 'sha256:ab',
                    {'name': 'busybox'}, now=99.0)
        got = events.read(self.path)
        self.assertEqual([('image', 'pull'), ('container', 'create')],
                         [(e['Type'], e['Action']) for e in got])
        self.assertEqual({'name': 'web', 'image': 'busybox'},
                         got[1]['Actor']['Attributes'])
        self.assertEqual(100500000000, got[1]['timeNano'])
        self.assertEqual(0o600, os.stat(events.log_path(self.path)).st_mode
                         & 0o777)

    def test_lines_are_bounded(self):
        attrs = {'k%02d' % i: 'v' * 10000 for i in range(40)}
        events.emit(self.path, 'container', 'a' * 500, 'i' * 5000, attrs)
        with open(events.log_path(self.path), 'rb') as f:
            data = f.read()
        self.assertLessEqual(len(data), events.LINE_MAX)
        (event,) = events.read(self.path)
        self.assertLessEqual(len(event['Actor']['Attributes']),
                             events.ATTRS_MAX)

    def test_rotation_keeps_the_log_bounded(self):
        self.cfg.config(events_log_max_bytes=8192, group='kata')
        _append_many(self.path, 'a', 500)
        for name in ('events.log', 'events.log.1'):
            size = os.stat(os.path.join(self.path, name)).st_size
            self.assertLess(size, 8192 + events.LINE_MAX)
        got = events.read(self.path)
        self.assertEqual('a-499', got[-1]['Actor']['ID'])
        self.assertLess(len(got), 500)

    def test_concurrent_writers_never_interleave(self):
        procs = [multiprocessing.Process(target=_append_many,
                                         args=(self.path, t, 200))
                 for t in 'abcd']
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        with open(events.log_path(self.path), 'rb') as f:
            lines = f.read().split(b'\n')[:-1]
        self.assertEqual(800, len(lines))
        for line in lines:
            json.loads(line)      # whole lines only

    def test_damaged_lines_are_skipped(self):
        events.emit(self.path, 'container', 'start', 'good')
        with open(events.log_path(self.path), 'ab') as f:
            f.write(b'garbage\n{"Type": "container"}\n' + b'x' * 9000 +
                    b'\n[1]\n{"Type": "evil", "Action": "x", "timeNano": 1,'
                    b' "Actor": {"ID": "a", "Attributes": {}}}\n'
                    b'{"half": ')
        events.emit(self.path, 'container', 'die', 'good2')
        # The torn line is skipped; the event appended to it is kept.
        self.assertEqual(['good', 'good2'], [
            e['Actor']['ID'] for e in events.read(self.path)])

    def test_event_after_a_torn_write_is_kept(self):
        # Regression: a writer killed mid-line (or a short write on a full
        # disk) glued the next event to the torn line and both were lost.
        events.emit(self.path, 'container', 'start', 'one')
        with open(events.log_path(self.path), 'rb') as f:
            line = f.read()
        with open(events.log_path(self.path), 'ab') as f:
            f.write(line[:len(line) // 2])
        events.emit(self.path, 'container', 'die', 'two')
        self.assertEqual(['one', 'two'], [
            e['Actor']['ID'] for e in events.read(self.path)])
        self.assertEqual(['start', 'die'], [
            e['Action'] for e in events.read(self.path)])

    def test_an_unwritable_log_does_not_raise(self):
        os.mkdir(events.log_path(self.path))      # a directory: EISDIR
        events.emit(self.path, 'container', 'start', 'c')
        e = self.assertRaises(exception.KataZunException, events.read,
                              self.path)
        self.assertIn('cannot read the event log', str(e))

    def test_follower_sees_new_events_across_rotation(self):
        self.cfg.config(events_log_max_bytes=4096, group='kata')
        events.emit(self.path, 'container', 'create', 'old')
        follower = events.Follower(self.path)
        self.addCleanup(follower.close)
        self.assertEqual([], follower.poll())
        _append_many(self.path, 'n', 60)     # rotates several times
        seen = []
        for _ in range(3):
            seen += [e['Actor']['ID'] for e in follower.poll()]
        # Everything since the follower started, in order, at least the
        # newest file's worth (older rotations may be gone for good).
        self.assertEqual('n-59', seen[-1])
        self.assertNotIn('old', seen)
        self.assertEqual(sorted(seen, key=lambda s: int(s[2:])), seen)

    def test_follower_of_a_log_not_yet_there(self):
        follower = events.Follower(self.path)
        self.addCleanup(follower.close)
        self.assertEqual([], follower.poll())
        events.emit(self.path, 'image', 'pull', 'sha256:1')
        self.assertEqual(['sha256:1'],
                         [e['Actor']['ID'] for e in follower.poll()])
