"""A writer SIGKILLed at every step of an atomic write: readers see the
old record or the new one, never a half (``fileutils.write_atomic``'s
fault points stop a real writer process there; the test kills it).
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

import fixtures
from oslotest import base

from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils

# Writes a record much larger than a pipe or page, so that half of it is
# a real partial file on disk.
_WRITER = '''
import sys
from kata_zun.runtime import fileutils
fileutils.write_json(sys.argv[1], {"version": "new",
                                   "pad": "n" * (256 * 1024)})
'''


class AtomicWriteKilledTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'state.json')
        fileutils.write_json(self.path, {'version': 'old',
                                         'pad': 'o' * (256 * 1024)})

    def _stopped_writer(self, point):
        """A writer process paused at fault point ``point``."""
        env = dict(os.environ, **{faultpoint.ENV: point})
        proc = subprocess.Popen([sys.executable, '-c', _WRITER, self.path],
                                stderr=subprocess.PIPE, env=env)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = b''
        deadline = time.monotonic() + 60
        while not line.endswith(b'\n'):
            left = deadline - time.monotonic()
            self.assertGreater(left, 0, 'writer never reached %s' % point)
            if select.select([proc.stderr], [], [], left)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                self.assertTrue(chunk, 'writer exited: %r' % line)
                line += chunk
        self.assertIn(faultpoint.MARKER + point.encode(), line)
        # SIGSTOPped (the hook stops itself): wait until it is.
        while True:
            with open('/proc/%d/stat' % proc.pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'T':
                    break
            time.sleep(0.01)
        return proc

    def _version(self):
        """The version a reader sees; fails on anything half-written."""
        doc = fileutils.read_json(self.path)
        self.assertEqual(256 * 1024, len(doc['pad']))
        self.assertEqual(doc['version'][0] * len(doc['pad']), doc['pad'])
        return doc['version']

    def _kill_at(self, point):
        proc = self._stopped_writer(point)
        # While the writer is stopped mid-way, readers see a whole record.
        seen_during = self._version()
        temps = [n for n in os.listdir(self.dir)
                 if n.startswith(fileutils.TEMP_PREFIX)]
        proc.send_signal(signal.SIGKILL)
        self.assertEqual(-signal.SIGKILL, proc.wait(30))
        return seen_during, self._version(), temps

    def test_killed_with_half_the_data_written(self):
        during, after, temps = self._kill_at('atomic-write-half')
        self.assertEqual(('old', 'old'), (during, after))
        # The half is there, but only under a name no reader opens.
        self.assertEqual(1, len(temps))
        size = os.path.getsize(os.path.join(self.dir, temps[0]))
        self.assertLess(0, size)
        self.assertLess(size, os.path.getsize(self.path))

    def test_killed_before_the_rename(self):
        self.assertEqual(('old', 'old'),
                         self._kill_at('atomic-write-replace')[:2])

    def test_killed_after_the_rename(self):
        self.assertEqual(('new', 'new'),
                         self._kill_at('atomic-write-replaced')[:2])

    def test_a_killed_writers_temp_file_is_not_a_record(self):
        self._kill_at('atomic-write-half')
        # The next write succeeds and is the record.
        fileutils.write_json(self.path, {'version': 'next',
                                         'pad': 'x' * (256 * 1024)})
        self.assertEqual('next', fileutils.read_json(self.path)['version'])
        with open(self.path) as f:
            self.assertEqual('next', json.load(f)['version'])
