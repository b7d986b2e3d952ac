import io
import os
import subprocess

import fixtures
from oslotest import base

from kata_zun.guest import cpio


class NewcWriterTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def _cpio(self, archive, *args, raw=False):
        out = subprocess.run(['cpio', '--quiet'] + list(args),
                             input=archive, stdout=subprocess.PIPE,
                             check=True).stdout
        return out if raw else out.decode()

    def test_round_trip_through_cpio(self):
        src = os.path.join(self.dir, 'src')
        with open(src, 'wb') as f:
            f.write(os.urandom(4097))
        os.chmod(src, 0o751)
        buf = io.BytesIO()
        w = cpio.NewcWriter(buf)
        w.add_dir('bin')
        w.add_file('bin/tool', src)
        w.add_symlink('bin/sh', 'tool')
        w.add_bytes('/init', '#!/bin/sh\n', mode=0o755)
        w.add_dir('dev')
        w.add_chardev('dev/console', 5, 1)
        w.close()
        archive = buf.getvalue()
        self.assertEqual(['bin', 'bin/tool', 'bin/sh', 'init', 'dev',
                          'dev/console'],
                         self._cpio(archive, '-t').split())
        listing = {line.split()[-1] if '->' not in line
                   else line.split()[-3]: line
                   for line in self._cpio(archive, '-tv').splitlines()}
        self.assertTrue(listing['bin/tool'].startswith('-rwxr-x--x'))
        self.assertIn('4097', listing['bin/tool'])
        self.assertTrue(listing['bin/sh'].startswith('lrwxrwxrwx'))
        self.assertIn('-> tool', listing['bin/sh'])
        self.assertTrue(listing['dev/console'].startswith('crw-------'))
        self.assertIn('5,', listing['dev/console'])
        self.assertTrue(listing['bin'].startswith('drwxr-xr-x'))
        with open(src, 'rb') as f:
            self.assertEqual(f.read(), self._cpio(
                archive, '-i', '--to-stdout', 'bin/tool', raw=True))
        self.assertEqual('#!/bin/sh\n',
                         self._cpio(archive, '-i', '--to-stdout', 'init'))
        self.assertEqual(0, len(archive) % 4)

    def test_reproducible_and_no_duplicates(self):
        def make():
            buf = io.BytesIO()
            w = cpio.NewcWriter(buf)
            w.add_bytes('a', b'x')
            w.close()
            return buf.getvalue()

        self.assertEqual(make(), make())
        w = cpio.NewcWriter(io.BytesIO())
        w.add_dir('etc')
        self.assertRaises(ValueError, w.add_dir, '/etc/')
