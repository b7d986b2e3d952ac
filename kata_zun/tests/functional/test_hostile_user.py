"""Hostile input from the user of the API (here the CLI; Zun's requests
reach the same runtime): each gets a clear error before anything is made,
and no VM is started for it.
"""

import os

from kata_zun.tests.functional import base


class HostileUserTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _refused(self, *args):
        result = self.kz('run', *args)
        self.assertEqual(125, result.code, result)
        self.assertIn(b'Invalid input', result.err, result)
        # Nothing made: no record, and the state path has no container.
        self.assertEqual('', self.kz('ps', '-a', '-q', check=0).text)
        containers = os.path.join(self.state_path, 'containers')
        self.assertEqual([], os.listdir(containers)
                         if os.path.isdir(containers) else [])
        return result.err.decode()

    def test_more_cpus_than_the_host_has(self):
        # Under TCG a VM with 64 vCPUs on a small host never answered:
        # the request tied the host up for the whole start timeout.
        err = self._refused('--cpus', str(os.cpu_count() + 1), 'busybox',
                            'true')
        self.assertIn('this host has %d CPUs' % os.cpu_count(), err)

    def test_more_memory_than_the_host_has(self):
        err = self._refused('--memory', '100000000', 'busybox', 'true')
        self.assertIn('does not fit', err)

    def test_oversized_environment_and_command(self):
        chunk = 'x' * 100000           # one argument may hold 128 KiB
        env = []
        for i in range(6):
            env += ['-e', 'V%d=%s' % (i, chunk)]
        self.assertIn('environment too large',
                      self._refused(*(env + ['busybox', 'true'])))
        self.assertIn('command too large', self._refused(
            'busybox', 'echo', *([chunk] * 6)))

    def test_malformed_values(self):
        self._refused('--hostname', 'a\nb', 'busybox', 'true')
        self._refused('-w', 'relative/dir', 'busybox', 'true')
        self._refused('-e', 'NOEQUALS', 'busybox', 'true')
        self._refused('--restart', 'sometimes', 'busybox', 'true')
