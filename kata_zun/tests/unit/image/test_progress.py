"""Progress on a terminal, and quiet elsewhere."""

import io

from oslotest import base

from kata_zun.image import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class TerminalTestCase(base.BaseTestCase):

    def test_not_a_terminal_prints_status_lines_only(self):
        out = io.StringIO()
        report = progress.Terminal(out)
        report('Pulling busybox')
        report(progress.Update('L1: downloading 2.0 MB', key='L1'))
        report(progress.Update('L1: 1.0 MB / 2.0 MB', key='L1',
                               done=10 ** 6, total=2 * 10 ** 6))
        report(progress.Update('L1: done', key='L1'))
        self.assertEqual('Pulling busybox\nL1: downloading 2.0 MB\n'
                         'L1: done\n', out.getvalue())
        self.assertNotIn('\x1b', out.getvalue())

    def test_terminal_lines_per_key_with_bytes_bar_and_rate(self):
        out, clock = _Tty(), _Clock()
        report = progress.Terminal(out, clock=clock)
        report(progress.Update('L1: downloading', key='L1'))
        report(progress.Update('L2: downloading', key='L2'))
        clock.now += 2
        report(progress.Update('x', key='L1', done=10 ** 6,
                               total=4 * 10 ** 6))
        text = out.getvalue()
        self.assertIn('L1: Downloading [======>', text)
        self.assertIn('1.0MB/4.0MB  500.0kB/s', text)
        # Redrawn in place: up two lines, clear, the block again.
        self.assertIn('\r\x1b[2A\x1b[J', text)
        screen = text.rsplit('\x1b[J', 1)[1]
        self.assertEqual(['L2: downloading', 'L1: Downloading'],
                         [line[:15] for line in screen.splitlines()])
        # Counts closer than REDRAW_INTERVAL are not drawn (but the
        # first of a line); a status is.
        report(progress.Update('x', key='L2', done=1, total=4))
        self.assertIn('L2: Downloading [', out.getvalue())
        before = out.getvalue()
        report(progress.Update('x', key='L1', done=2 * 10 ** 6,
                               total=4 * 10 ** 6))
        self.assertEqual(before, out.getvalue())
        report('Digest: sha256:1')
        report(progress.Update('L1: done', key='L1'))
        screen = out.getvalue().rsplit('\x1b[J', 1)[1]
        self.assertEqual(['Digest: sha256:1'], out.getvalue().rsplit(
            '\x1b[J', 2)[1].splitlines()[:1])
        self.assertEqual(['L2: Downloading', 'L1: done'],
                         [line[:15] for line in screen.splitlines()])

    def test_counting_writer(self):
        out, sink = _Tty(), io.BytesIO()
        report = progress.Terminal(out)
        w = progress.CountingWriter(sink, report, 'img.tar')
        w.write(b'x' * 1500)
        self.assertEqual(b'x' * 1500, sink.getvalue())
        self.assertEqual(1500, w.done)
        self.assertIn('img.tar: Writing 1.5kB', out.getvalue())
        self.assertEqual(1500, w.tell())

    def test_a_closed_stream_never_fails_the_work(self):
        out = _Tty()
        report = progress.Terminal(out)
        out.close()
        report('still fine')
        report(progress.Update('x', key='k', done=1, total=2))
