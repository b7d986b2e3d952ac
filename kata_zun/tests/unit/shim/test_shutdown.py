"""How the shim stops a VM once its container has ended."""

from unittest import mock

from oslotest import base

from kata_zun.shim import server


class ShutdownTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        shim = server.Shim.__new__(server.Shim)
        shim.cid = 'c' * 64
        shim.exited = True
        shim.vm = mock.Mock()
        shim.vm.poll.return_value = None
        shim.agent = mock.Mock(closed=False)
        shim._vm_exited = mock.Mock()
        self.answer = None
        shim._agent_call = mock.Mock(
            side_effect=lambda op, args, callback: callback(*self.answer))
        self.shim = shim

    def test_quit_at_once_once_the_agent_has_synced(self):
        self.answer = ({}, None)
        self.shim._shutdown_vm()
        self.assertEqual('shutdown', self.shim._agent_call.call_args[0][0])
        # No power-off grace: the guest's disks are flushed already.
        self.shim.vm.stop.assert_called_once_with(0)
        self.shim._vm_exited.assert_called_once_with()

    def test_a_guest_that_did_not_answer_gets_its_grace(self):
        self.answer = ({}, {'code': 'timeout', 'message': 'silent'})
        self.shim._shutdown_vm()
        self.shim.vm.stop.assert_called_once_with(3)

    def test_a_lost_agent_link_stops_at_once(self):
        self.answer = ({}, {'code': 'gone', 'message': 'the VM is gone'})
        self.shim.agent.closed = True
        self.shim._shutdown_vm()
        self.shim.vm.stop.assert_called_once_with(0)

    def test_a_vm_that_is_gone_is_not_stopped(self):
        self.answer = ({}, None)
        self.shim.vm.poll.return_value = 0
        self.shim._shutdown_vm()
        self.shim.vm.stop.assert_not_called()
        self.shim._vm_exited.assert_called_once_with()
