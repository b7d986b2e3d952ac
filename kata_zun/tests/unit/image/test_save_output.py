"""``kata-zun save -o FILE`` names a complete file only."""

import io
import os
import types
from unittest import mock

import fixtures
from oslotest import base

from kata_zun.cmd import imagecli
from kata_zun.tests.unit import durability


class SaveOutputTestCase(base.BaseTestCase):

    def test_the_tar_is_synced_before_it_is_named(self):
        # Regression: the tar was renamed into place unsynced; after a
        # crash the output could exist empty or short.
        out = self.useFixture(fixtures.TempDir()).join('images.tar')
        rt = mock.Mock()
        rt.images.export.side_effect = lambda refs, f: f.write(b't' * 4096)
        args = types.SimpleNamespace(output=out, images=['busybox'])
        rec = self.useFixture(durability.SyncRecorder())
        with mock.patch('sys.stderr', io.StringIO()):
            self.assertEqual(0, imagecli.cmd_save(rt, args))
        with open(out, 'rb') as f:
            self.assertEqual(b't' * 4096, f.read())
        self.assertEqual([], rec.unsynced(out))
        self.assertEqual(['images.tar'], os.listdir(os.path.dirname(out)))
