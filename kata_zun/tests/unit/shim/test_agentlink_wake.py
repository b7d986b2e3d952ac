"""The set-up wait wakes QEMU once when it has not read what the shim
sent (issue 14: under 50 concurrent boots the agent greeted the shim,
then waited for bytes that stayed in QEMU's socket).
"""

import os
import socket

from oslotest import base

from kata_zun.shim import agentlink


class FakeVM(object):
    def __init__(self):
        self.pid = os.getpid()
        self.commands = []

    def execute(self, cmd, args=None, timeout=10.0):
        self.commands.append(cmd)
        return {}


class Link(agentlink.AgentLink):
    cid = 'c' * 64
    agent_timeout = 30
    boot_cpu_budget = 120


class WakeQemuTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.ours, self.qemu = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.qemu.close)
        self.link = Link()
        self.link.vm = FakeVM()
        self.link._agent_sock = self.ours

    def test_unread_bytes_wake_qemu_once(self):
        self.ours.sendall(b'x' * 278)
        self.assertGreater(agentlink._unread(self.ours), 0)
        self.assertTrue(self.link._wake_qemu())
        self.assertEqual(['query-status'], self.link.vm.commands)
        # A second stall fails: one wake-up per boot.
        self.assertFalse(self.link._wake_qemu())
        self.assertEqual(['query-status'], self.link.vm.commands)

    def test_all_read_is_a_silent_agent(self):
        self.ours.sendall(b'x' * 18)
        self.qemu.recv(100)
        self.assertEqual(0, agentlink._unread(self.ours))
        self.assertFalse(self.link._wake_qemu())
        self.assertEqual([], self.link.vm.commands)
