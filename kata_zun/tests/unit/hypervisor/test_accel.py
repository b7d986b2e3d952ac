import json
import os
import threading
import time
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun.hypervisor.qemu import accel


class ChooseTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(run_path=os.path.join(root, 'run'), group='kata')
        self.qemu = os.path.join(root, 'qemu')
        self.kernel = os.path.join(root, 'vmlinux')
        for path in (self.qemu, self.kernel):
            open(path, 'w').close()
        self.cfg.config(qemu_path=self.qemu, group='kata_hypervisor')
        self.useFixture(fixtures.MockPatchObject(accel, '_warned', []))
        self.boot_id = self.useFixture(fixtures.MockPatchObject(
            accel.fileutils, 'boot_id', return_value='boot-1')).mock
        self.log = self.useFixture(fixtures.MockPatchObject(
            accel, 'LOG')).mock
        self.probe = mock.Mock(return_value=(True, 'booted'))

    def _choose(self, **kwargs):
        return accel.choose(self.kernel, probe=self.probe, **kwargs)

    def test_forced_modes_do_not_probe(self):
        for mode in ('kvm', 'tcg'):
            self.cfg.config(accelerator=mode, group='kata_hypervisor')
            self.assertEqual(mode, self._choose().name)
        self.probe.assert_not_called()

    def test_auto_kvm_when_probe_boots(self):
        result = self._choose()
        self.assertEqual(accel.Accel('kvm', 'booted'), result)
        self.probe.assert_called_once_with(self.qemu, self.kernel, 'max',
                                           'microvm', 15)
        self.log.warning.assert_not_called()

    def test_auto_tcg_warns_once(self):
        self.probe.return_value = (False, 'KVM_RUN failed: EINVAL')
        for _ in range(2):
            result = self._choose()
            self.assertEqual('tcg', result.name)
            self.assertEqual('KVM_RUN failed: EINVAL', result.reason)
        self.assertEqual(1, self.log.warning.call_count)
        self.assertIn('KVM_RUN failed', self.log.warning.call_args[0][1])

    def test_concurrent_first_uses_probe_once(self):
        # Regression (issue 14): 50 sandboxes starting at once on a
        # fresh run path each ran the 15 s KVM probe.
        os.makedirs(conf.CONF.kata.run_path)
        started = threading.Event()

        def slow_probe(*args):
            started.set()
            time.sleep(0.3)
            return False, 'no KVM'
        self.probe.side_effect = slow_probe
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            self._choose())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(1, self.probe.call_count)
        self.assertEqual(['tcg'] * 4, [r.name for r in results])

    def test_cached_until_a_key_part_changes(self):
        self._choose()
        self._choose()
        self.assertEqual(1, self.probe.call_count)
        with open(os.path.join(conf.CONF.kata.run_path,
                               accel.CACHE_FILE)) as f:
            self.assertEqual(1, len(json.load(f)))
        os.utime(self.kernel, (1, 1))           # kernel replaced
        self._choose()
        self.assertEqual(2, self.probe.call_count)
        os.utime(self.qemu, (1, 1))             # QEMU upgraded
        self._choose()
        self.assertEqual(3, self.probe.call_count)
        self.boot_id.return_value = 'boot-2'    # host rebooted
        self._choose()
        self.assertEqual(4, self.probe.call_count)
        self._choose(cpu_model='host')          # another CPU model
        self.assertEqual(5, self.probe.call_count)
        self._choose()
        self.assertEqual(5, self.probe.call_count)

    def test_corrupt_cache_is_reprobed(self):
        os.makedirs(conf.CONF.kata.run_path)
        path = os.path.join(conf.CONF.kata.run_path, accel.CACHE_FILE)
        with open(path, 'w') as f:
            f.write('{garbage')
        self.assertEqual('kvm', self._choose().name)
        self.assertEqual(1, self.probe.call_count)
        with open(path) as f:
            self.assertEqual(1, len(json.load(f)))

    def test_cache_is_bounded(self):
        for n in range(accel.MAX_CACHE_ENTRIES + 3):
            self._choose(cpu_model='model%d' % n)
        with open(os.path.join(conf.CONF.kata.run_path,
                               accel.CACHE_FILE)) as f:
            self.assertEqual(accel.MAX_CACHE_ENTRIES, len(json.load(f)))


class ProbeTestCase(base.BaseTestCase):

    def test_no_dev_kvm(self):
        with mock.patch('os.path.exists', return_value=False):
            self.assertEqual((False, '/dev/kvm does not exist'),
                             accel.probe_kvm('/q', '/k', 'max', 'microvm', 1))

    def test_dev_kvm_not_openable(self):
        with mock.patch('os.path.exists', return_value=True), \
                mock.patch('os.open', side_effect=PermissionError(
                    13, 'Permission denied')):
            ok, reason = accel.probe_kvm('/q', '/k', 'max', 'microvm', 1)
        self.assertFalse(ok)
        self.assertIn('cannot open /dev/kvm', reason)
