"""``kata-zun commit`` tells that the container's Env goes into the image."""

import io
import types
from unittest import mock

from oslotest import base

from kata_zun.cmd import imagecli


class CommitWarningTestCase(base.BaseTestCase):

    def commit(self, env):
        rt = mock.Mock()
        rt.commit.return_value = types.SimpleNamespace(
            id='sha256:' + 'a' * 64, config={'Env': env})
        args = types.SimpleNamespace(container='c1', repository='r:1',
                                     change=[], message=None)
        out, err = io.StringIO(), io.StringIO()
        with mock.patch('sys.stdout', out), mock.patch('sys.stderr', err):
            self.assertEqual(0, imagecli.cmd_commit(rt, args))
        self.assertEqual('sha256:' + 'a' * 64 + '\n', out.getvalue())
        return err.getvalue()

    def test_env_warning(self):
        err = self.commit(['PATH=/bin', 'DB_PASSWORD=hunter2'])
        self.assertIn('2 environment variables', err)
        self.assertNotIn('hunter2', err)
        self.assertEqual('', self.commit([]))
