"""The device program's decisions, by a small eBPF interpreter; the
kernel's verifier accepts it.
"""

import ctypes
import os
import platform
import struct
import tempfile

import fixtures
from oslotest import base

from kata_zun.agent import guestdev as gd

MASK64 = (1 << 64) - 1


def run_ebpf(prog, access, dev_type, major, minor):
    """Evaluate the (tiny) subset of eBPF the device program uses.

    :returns: r0 at exit.
    :raises: AssertionError on anything outside the subset.
    """
    ctx = struct.pack('<III', (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    regs[1] = 'ctx'
    pc = steps = 0
    while True:
        assert 0 <= pc < len(prog), 'jump out of the program'
        steps += 1
        assert steps <= len(prog), 'loop'
        code, dst, src, off, imm = prog[pc]
        pc += 1
        if code == gd.LDX_MEM_W:
            assert regs[src] == 'ctx' and 0 <= off <= 8 and off % 4 == 0
            regs[dst] = struct.unpack_from('<I', ctx, off)[0]
        elif code == gd.MOV64_K:
            regs[dst] = imm & MASK64
        elif code == gd.MOV64_X:
            regs[dst] = regs[src]
        elif code == gd.AND64_K:
            regs[dst] &= imm & MASK64
        elif code == gd.RSH64_K:
            regs[dst] >>= imm
        elif code in (gd.JEQ_K, gd.JNE_K):
            equal = regs[dst] == imm & MASK64
            if equal == (code == gd.JEQ_K):
                assert off >= 0
                pc += off
        elif code == gd.EXIT:
            return regs[0]
        else:
            raise AssertionError('opcode %#x' % code)


class DeviceProgramTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.prog = gd.build()

    def allowed(self, access, dev_type, major, minor):
        return run_ebpf(self.prog, access, dev_type, major, minor) == 1

    def test_container_dev_nodes_open(self):
        rw = gd.ACC_READ | gd.ACC_WRITE
        for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9),
                             (5, 0), (5, 2), (136, 0), (136, 17)):
            for access in (gd.ACC_READ, gd.ACC_WRITE, rw):
                self.assertTrue(self.allowed(access, gd.DEV_CHAR, major,
                                             minor), (major, minor))

    def test_everything_else_refused(self):
        for dev_type, major, minor in (
                (gd.DEV_BLOCK, 254, 0),     # the VM's disks
                (gd.DEV_BLOCK, 1, 3),       # same numbers, block
                (gd.DEV_CHAR, 1, 1),        # /dev/mem
                (gd.DEV_CHAR, 1, 11),       # /dev/kmsg
                (gd.DEV_CHAR, 10, 200),     # tun
                (gd.DEV_CHAR, 244, 1),      # a virtio port
                (gd.DEV_CHAR, 4, 0),        # tty0
                (gd.DEV_CHAR, 136 + 1, 0)):
            self.assertFalse(self.allowed(gd.ACC_READ, dev_type, major,
                                          minor), (dev_type, major, minor))

    def test_mknod_of_anything(self):
        # Like Docker: creating a node is fine, opening it is not.
        self.assertTrue(self.allowed(gd.ACC_MKNOD, gd.DEV_BLOCK, 254, 0))
        self.assertTrue(self.allowed(gd.ACC_MKNOD, gd.DEV_CHAR, 1, 1))
        self.assertFalse(self.allowed(gd.ACC_MKNOD | gd.ACC_READ,
                                      gd.DEV_BLOCK, 254, 0))

    def test_encoding(self):
        code = gd.assemble(self.prog)
        self.assertEqual(8 * len(self.prog), len(code))
        # mov r0, 1; exit at the end (the allow label).
        self.assertEqual(struct.pack('<BBhi', gd.MOV64_K, 0, 0, 1),
                         code[-16:-8])
        self.assertEqual(bytes([gd.EXIT]) + b'\0' * 7, code[-8:])


class KernelTestCase(base.BaseTestCase):

    def test_verifier_accepts_the_program(self):
        if platform.machine() != 'x86_64' or os.geteuid() != 0:
            self.skipTest('loading BPF programs needs root on x86_64')
        libc = ctypes.CDLL(None, use_errno=True)
        fd = gd.load(libc)
        self.assertGreater(fd, 2)
        os.close(fd)


class OneProgramTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.agent.guestdev._program', None))
        self.load = self.useFixture(fixtures.MockPatchObject(
            gd, 'load', return_value=41)).mock
        self.bpf = self.useFixture(fixtures.MockPatchObject(gd, '_bpf')).mock

    def test_loaded_once_attached_to_each_cgroup(self):
        first, second = tempfile.mkdtemp(), tempfile.mkdtemp()
        for path in (first, second):
            self.addCleanup(os.rmdir, path)
            gd.restrict('libc', path)
        self.load.assert_called_once_with('libc')
        self.assertEqual(2, self.bpf.call_count)
        for call in self.bpf.call_args_list:
            _libc, cmd, attr = call[0]
            self.assertEqual(gd.BPF_PROG_ATTACH, cmd)
            _cg, prog, kind, _flags, _x = struct.unpack('<IIIII', attr)
            self.assertEqual((41, gd.BPF_CGROUP_DEVICE), (prog, kind))

    def test_a_refused_load_is_an_error_and_tried_again(self):
        self.load.side_effect = [OSError(1, 'no'), 42]
        path = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, path)
        self.assertRaises(OSError, gd.restrict, 'libc', path)
        self.bpf.assert_not_called()
        gd.restrict('libc', path)
        self.assertEqual(42, gd._program)

    def test_a_refused_attach_is_an_error(self):
        self.bpf.side_effect = OSError(22, 'bad')
        path = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, path)
        self.assertRaises(OSError, gd.restrict, 'libc', path)
