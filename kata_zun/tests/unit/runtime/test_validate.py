"""What a user may ask of a container: kata_zun.runtime.validate."""

from unittest import mock

from oslotest import base

from kata_zun import exception
from kata_zun.runtime import validate


class LimitsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(self._cpus(4))

    @staticmethod
    def _cpus(n):
        import fixtures
        return fixtures.MockPatchObject(validate, 'host_cpus',
                                        return_value=n)

    def test_none_is_no_change(self):
        validate.check_limits(None, None)

    def test_memory_floor(self):
        validate.check_limits(validate.MIN_MEMORY_MB, None)
        exc = self.assertRaises(exception.InvalidInput,
                                validate.check_limits, 5, None)
        self.assertIn('at least 6 MiB', str(exc))

    def test_cpus_bounded_by_the_host(self):
        validate.check_limits(None, 0.5)
        validate.check_limits(None, 4)
        for bad in (0, -1, 4.01, 1e9, float('inf')):
            exc = self.assertRaises(exception.InvalidInput,
                                    validate.check_limits, None, bad)
            self.assertIn('this host has 4 CPUs', str(exc))

    def test_cpus_never_past_64_on_a_large_host(self):
        with self._cpus(256):
            validate.check_limits(None, 64)
            self.assertRaises(exception.InvalidInput,
                              validate.check_limits, None, 65)

    def test_nan_cpus_refused(self):
        self.assertRaises(exception.InvalidInput, validate.check_limits,
                          None, float('nan'))


class EnvTestCase(base.BaseTestCase):

    def test_key_value_entries(self):
        validate.check_env(['A=1', 'B=', 'C=x=y'])

    def test_hostile_entries(self):
        for bad in ('NOVALUE', '=1', 'A\0B=1', 'A=1\0'):
            exc = self.assertRaises(exception.InvalidInput,
                                    validate.check_env, ['OK=1', bad])
            self.assertIn('KEY=VALUE', str(exc))

    def test_sizes_count_encoded_bytes(self):
        # Each item counts its bytes and a separator; surrogates (from
        # undecodable arguments) are counted, not refused.
        validate.check_sizes('environment', ['A=\udcff'], 6)
        self.assertRaises(exception.InvalidInput, validate.check_sizes,
                          'environment', ['A=\udcff'], 5)
        exc = self.assertRaises(
            exception.InvalidInput, validate.check_sizes, 'environment',
            ['K=' + 'v' * validate.MAX_ENV_BYTES], validate.MAX_ENV_BYTES)
        self.assertIn('environment too large', str(exc))


class CommandLineTestCase(base.BaseTestCase):

    IMAGE = {'Entrypoint': ['/ep'], 'Cmd': ['default']}

    def test_docker_rules(self):
        self.assertEqual(['/ep', 'default'],
                         validate.command_line(self.IMAGE, None, None))
        self.assertEqual(['/ep', 'x'],
                         validate.command_line(self.IMAGE, ['x'], None))
        # A new entrypoint drops the image's Cmd.
        self.assertEqual(['/other'],
                         validate.command_line(self.IMAGE, None, ['/other']))
        self.assertEqual(['x'], validate.command_line(self.IMAGE, ['x'], []))

    def test_nothing_to_run(self):
        exc = self.assertRaises(exception.InvalidInput,
                                validate.command_line, {}, None, None)
        self.assertIn('no command', str(exc))
        self.assertRaises(exception.InvalidInput, validate.command_line,
                          self.IMAGE, None, [])


class HostMemoryTestCase(base.BaseTestCase):

    def test_unreadable_meminfo_is_unknown(self):
        with mock.patch('builtins.open', side_effect=OSError):
            self.assertIsNone(validate.host_memory_mb())
        with mock.patch('builtins.open',
                        mock.mock_open(read_data='MemTotal: junk kB\n')):
            self.assertIsNone(validate.host_memory_mb())
        with mock.patch('builtins.open',
                        mock.mock_open(read_data='MemTotal: 2048 kB\n')):
            self.assertEqual(2, validate.host_memory_mb())
