"""The shim's NIC hotplug ops against a fake VM and a silent agent."""

from unittest import mock

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.shim import server


class NicOpsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        shim = server.Shim.__new__(server.Shim)
        shim.timers, shim.pending, shim.next_rid = [], {}, 1
        shim.waiters = []
        shim.exited = False
        shim.state = {'status': 'running'}
        shim.vm = mock.Mock()
        shim.agent = mock.Mock(closed=False)
        shim.responses = []
        shim._respond = lambda client, rid, result=None, error=None: \
            shim.responses.append((rid, result, error))
        self.shim = shim
        self.clock = 100.0
        self.useFixture(fixtures.MockPatchObject(
            server.time, 'monotonic', side_effect=lambda: self.clock))

    def _silence_passes(self):
        self.clock += server.NIC_AGENT_TIMEOUT + 1
        self.shim._run_timers()

    def test_silent_agent_does_not_stop_a_detach(self):
        self.shim.op_nic_remove(None, 7, {'tap': 'kzt1',
                                          'mac': 'FA:16:3E:00:00:01'})
        self.assertEqual([], self.shim.responses)
        self.shim.vm.remove_nic.return_value = False
        self._silence_passes()
        self.shim.vm.remove_nic.assert_called_once_with('kzt1')
        self.assertEqual([(7, {'guest': None, 'device_gone': False},
                           None)], self.shim.responses)
        # The late answer is ignored.
        for callback in list(self.shim.pending.values()):
            callback({'slot': '1'}, None)
        self.assertEqual(1, len(self.shim.responses))

    def test_failed_configuration_takes_the_nic_out(self):
        iface = {'mac': 'fa:16:3e:00:00:01', 'address': '10.0.0.5',
                 'prefix': 24}
        self.shim.op_nic_add(None, 8, {'tap': 'kzt1',
                                       'mac': 'fa:16:3e:00:00:01',
                                       'interface': iface})
        self.shim.vm.add_nic.assert_called_once()
        self.assertTrue(
            self.shim.vm.add_nic.call_args[0][0].checksum_offload)
        self._silence_passes()
        self.shim.vm.remove_nic.assert_called_once_with('kzt1')
        rid, result, error = self.shim.responses[0]
        self.assertEqual((8, 'timeout'), (rid, error['code']))

    def test_nic_without_checksum_offload(self):
        self.shim.op_nic_add(None, 12, {'tap': 'kzt1',
                                        'mac': 'fa:16:3e:00:00:01',
                                        'checksum_offload': False})
        self.assertFalse(
            self.shim.vm.add_nic.call_args[0][0].checksum_offload)

    def test_configure_an_existing_nic(self):
        iface = {'mac': 'fa:16:3e:00:00:02', 'address': '10.0.2.5',
                 'prefix': 24, 'gateway': '10.0.2.1'}
        self.shim.op_nic_configure(None, 11, {'interface': iface})
        sent = self.shim.agent.send.call_args[0][0]
        self.assertIn(b'add_interface', sent)
        self.shim.vm.add_nic.assert_not_called()
        for callback in list(self.shim.pending.values()):
            callback({'name': 'eth1'}, None)
        self.assertEqual([(11, {'name': 'eth1'}, None)],
                         self.shim.responses)

    def test_refusals(self):
        self.shim.vm.add_nic.side_effect = exception.NicHotplugError(
            reason='all 8 NIC slots are taken')
        self.shim.op_nic_add(None, 9, {'tap': 'kzt1',
                                       'mac': 'fa:16:3e:00:00:01'})
        self.assertEqual('hotplug', self.shim.responses[-1][2]['code'])
        self.shim.state['status'] = 'paused'
        self.shim.op_nic_remove(None, 10, {'tap': 'kzt1',
                                           'mac': 'fa:16:3e:00:00:01'})
        self.assertEqual((10, 'state'), (self.shim.responses[-1][0],
                                         self.shim.responses[-1][2][
                                             'code']))
        self.shim.agent.send.assert_not_called()
