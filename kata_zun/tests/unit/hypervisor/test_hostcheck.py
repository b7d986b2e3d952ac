from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import hostcheck
from kata_zun.hypervisor.qemu import accel

R = hostcheck.CheckResult


class HostCheckTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.cfg.config(state_path=self.dir + '/state',
                        run_path=self.dir + '/run', group='kata')

    def test_can_run(self):
        self.assertTrue(hostcheck.can_run(
            [R('a', True, ''), R('kvm', False, 'x', required=False)]))
        self.assertFalse(hostcheck.can_run(
            [R('a', True, ''), R('qemu', False, 'missing')]))

    def test_unusable_kvm_is_reported_not_fatal(self):
        with mock.patch('os.path.exists', return_value=True), \
                mock.patch('os.open'), mock.patch('os.close'), \
                mock.patch.object(accel, 'detect', return_value=accel.Accel(
                    'tcg', 'KVM_RUN failed')):
            result = hostcheck._kvm('/vmlinux')
        self.assertEqual(R('kvm', False, 'KVM_RUN failed; VMs run under TCG',
                           required=False), result)
        self.cfg.config(accelerator='kvm', group='kata_hypervisor')
        with mock.patch('os.path.exists', return_value=False):
            self.assertTrue(hostcheck._kvm('/vmlinux').required)

    def test_missing_guest_assets_fail(self):
        with mock.patch.object(hostcheck.builder, 'find', side_effect=(
                exception.GuestAssetError(reason='run kata-zun guest '
                                                 'build'))):
            result, kernel = hostcheck._guest()
        self.assertFalse(result.ok)
        self.assertTrue(result.required)
        self.assertIsNone(kernel)

    def test_run_checks_shape(self):
        with mock.patch.object(hostcheck.builder, 'find', side_effect=(
                exception.GuestAssetError(reason='missing'))), \
                mock.patch.object(hostcheck, '_qemu',
                                  return_value=[R('qemu', True, '7.2')]):
            results = hostcheck.run_checks()
        names = [r.name for r in results]
        self.assertEqual(['cpu', 'kvm', 'vhost-vsock', 'qemu',
                          'guest-assets', 'memory', 'state-path', 'run-path',
                          'jail-user', 'jail-namespaces', 'jail-seccomp',
                          'jail-cgroup'], names)
        self.assertFalse(hostcheck.can_run(results))
