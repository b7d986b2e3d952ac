"""The default seccomp filter: its decisions, evaluated two ways.

A small classic-BPF interpreter runs the program over every case; the
same program is then installed for real in a forked child on this host
(x86_64), where the kernel checks it and answers the system calls.
"""

import ctypes
import errno
import os
import platform
import re
import struct

from oslotest import base

from kata_zun.agent import guestseccomp as sc
from kata_zun.tests import forked

ALLOW = sc.SECCOMP_RET_ALLOW
EPERM = sc.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = sc.SECCOMP_RET_ERRNO | errno.ENOSYS
KILL = sc.SECCOMP_RET_KILL_PROCESS
AUDIT_ARCH_I386 = 0x40000003
# A few x86_64 numbers of calls every program makes.
READ, WRITE, GETPID, PTRACE, EXECVE, CHROOT, SETHOSTNAME = (
    0, 1, 39, 101, 59, 161, 170)
SIGCHLD = 17


def run_bpf(prog, nr, arch=sc.AUDIT_ARCH_X86_64, args=(0,) * 6):
    """Evaluate a classic BPF seccomp program over one seccomp_data.

    :returns: the action the program returns.
    :raises: AssertionError on anything the kernel would reject.
    """
    return run_bpf_counted(prog, nr, arch, args)[0]


def run_bpf_counted(prog, nr, arch=sc.AUDIT_ARCH_X86_64, args=(0,) * 6):
    """:func:`run_bpf`, also counting instructions.

    :returns: (the action, how many instructions ran).
    """
    args = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack('<iIQ6Q', nr, arch, 0, *args)
    acc = 0
    pc = 0
    steps = 0
    while True:
        assert 0 <= pc < len(prog), 'jump out of the program'
        code, jt, jf, k = prog[pc]
        steps += 1
        assert steps <= len(prog), 'backward jump'
        if code == sc.BPF_LD_W_ABS:
            assert k % 4 == 0 and k + 4 <= len(data), k
            acc = struct.unpack_from('<I', data, k)[0]
            pc += 1
        elif code == sc.BPF_RET_K:
            return k, steps
        elif code in (sc.BPF_JMP_JEQ_K, sc.BPF_JMP_JGT_K,
                      sc.BPF_JMP_JSET_K):
            taken = {sc.BPF_JMP_JEQ_K: acc == k,
                     sc.BPF_JMP_JGT_K: acc > k,
                     sc.BPF_JMP_JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        else:
            raise AssertionError('unknown opcode %#x' % code)


class FilterDecisionsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.prog = sc.build()

    def decide(self, name_or_nr, *args, **kw):
        nr = sc.SYSCALLS.get(name_or_nr, name_or_nr)
        return run_bpf(self.prog, nr, args=args, **kw)

    def test_program_is_well_formed(self):
        self.assertLess(len(self.prog), 4096)
        self.assertEqual((sc.BPF_RET_K, 0, 0, ALLOW), self.prog[-1])
        for code, jt, jf, k in self.prog:
            self.assertTrue(0 <= jt <= 255 and 0 <= jf <= 255)
        self.assertEqual(8 * len(self.prog), len(sc.assemble(self.prog)))

    def test_what_docker_refuses_is_refused(self):
        for name in ('keyctl', 'add_key', 'request_key', 'bpf',
                     'perf_event_open', 'userfaultfd', 'kexec_load',
                     'kexec_file_load', 'init_module', 'finit_module',
                     'delete_module', 'mount', 'umount2', 'pivot_root',
                     'setns', 'swapon', 'swapoff', 'reboot', 'acct',
                     'settimeofday', 'clock_settime', 'adjtimex',
                     'open_by_handle_at', 'iopl', 'ioperm', 'quotactl',
                     'syslog', 'fsopen', 'move_mount', 'io_uring_setup'):
            self.assertEqual(EPERM, self.decide(name), name)

    def test_everyday_calls_pass(self):
        for nr in (READ, WRITE, GETPID, EXECVE, CHROOT, SETHOSTNAME,
                   # ptrace is safe on kernels >= 4.8, Docker allows it
                   PTRACE):
            self.assertEqual(ALLOW, self.decide(nr), nr)

    def test_clone_and_unshare_without_new_namespaces(self):
        for flags in (SIGCHLD, 0x003D0F00):    # fork, pthread_create
            self.assertEqual(ALLOW, self.decide('clone', flags))
        self.assertEqual(ALLOW, self.decide('unshare', 0x400))  # FILES
        for flag in (sc.CLONE_NEWNS, sc.CLONE_NEWCGROUP, sc.CLONE_NEWUTS,
                     sc.CLONE_NEWIPC, sc.CLONE_NEWUSER, sc.CLONE_NEWPID,
                     sc.CLONE_NEWNET):
            self.assertEqual(EPERM, self.decide('clone', SIGCHLD | flag))
            self.assertEqual(EPERM, self.decide('unshare', flag))
        self.assertEqual(EPERM, self.decide('unshare', sc.CLONE_NEWTIME))
        # clone's 0x80 is part of the exit signal, not a namespace.
        self.assertEqual(ALLOW, self.decide('clone', 0x80 | SIGCHLD))

    def test_no_vsock(self):
        AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
        for family in (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK):
            self.assertEqual(ALLOW, self.decide('socket', family, 1, 0))
        self.assertEqual(EPERM, self.decide('socket', sc.AF_VSOCK, 1, 0))

    def test_clone3_falls_back(self):
        self.assertEqual(ENOSYS, self.decide('clone3'))

    def test_personality(self):
        for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
            self.assertEqual(ALLOW, self.decide('personality', value))
        for value in (0x0400000, 0x0040000, 0x0001):
            self.assertEqual(EPERM, self.decide('personality', value))

    def test_foreign_abis_and_unknown_numbers(self):
        self.assertEqual(KILL, self.decide(READ, arch=AUDIT_ARCH_I386))
        self.assertEqual(KILL, self.decide(sc.X32_SYSCALL_BIT | WRITE))
        self.assertEqual(KILL, self.decide(-1))
        self.assertEqual(ENOSYS, self.decide(sc.MAX_KNOWN_NR + 1))
        self.assertEqual(ENOSYS, self.decide(1000))

    def test_every_number_is_decided_by_the_tables(self):
        # The search tree against the tables it is built from, for every
        # number the filter knows (arguments all zero: no namespace, not
        # vsock, the default personality).
        for nr in range(sc.MAX_KNOWN_NR + 1):
            expected = ALLOW
            if nr in {sc.SYSCALLS[n] for n in sc.DENIED}:
                expected = EPERM
            elif nr in {sc.SYSCALLS[n] for n in sc.NOT_IMPLEMENTED}:
                expected = ENOSYS
            self.assertEqual(expected, self.decide(nr), nr)

    def test_any_call_runs_a_short_path(self):
        # Every call of every container runs the filter: a binary search
        # keeps it to a few compares where a list took one per rule.
        longest = max(run_bpf_counted(self.prog, nr, args=(sc.AF_VSOCK,))[1]
                      for nr in range(sc.MAX_KNOWN_NR + 2))
        self.assertLessEqual(longest, 24)
        self.assertLessEqual(run_bpf_counted(self.prog, READ)[1], 16)

    def test_table_matches_this_hosts_kernel_headers(self):
        header = '/usr/include/x86_64-linux-gnu/asm/unistd_64.h'
        if not os.path.exists(header):
            self.skipTest('no %s to compare with' % header)
        with open(header) as f:
            known = {m.group(1): int(m.group(2)) for m in
                     re.finditer(r'#define __NR_(\w+) (\d+)', f.read())}
        for name, nr in sc.SYSCALLS.items():
            self.assertEqual(known[name], nr, name)
        self.assertLessEqual(sc.MAX_KNOWN_NR, max(known.values()))


class InstalledFilterTestCase(base.BaseTestCase):
    """The kernel accepts the program and answers as the interpreter."""

    def setUp(self):
        super().setUp()
        if platform.machine() != 'x86_64':
            self.skipTest('the filter is for x86_64')

    def _in_child(self, calls):
        """Install the filter in a forked child and make ``calls``.

        :returns: {name: errno (0 for success)} as the child saw it.
        """
        def child():
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            sc.install(libc)
            out = []
            for name, nr, args in calls:
                ret = libc.syscall(ctypes.c_long(nr),
                                   *[ctypes.c_long(a) for a in args])
                out.append('%s=%d' % (name, ctypes.get_errno()
                                      if ret == -1 else 0))
            return ' '.join(out).encode()
        code, data = forked.run(child)
        self.assertEqual(0, code, data)
        return {k: int(v) for k, v in
                (item.split('=') for item in data.decode().split())}

    def test_kernel_answers_like_the_interpreter(self):
        KEYCTL_GET_KEYRING_ID = 0
        got = self._in_child([
            ('getpid', GETPID, ()),
            ('keyctl', sc.SYSCALLS['keyctl'],
             (KEYCTL_GET_KEYRING_ID, -3, 0)),
            ('unshare_user', sc.SYSCALLS['unshare'], (sc.CLONE_NEWUSER,)),
            ('clone3', sc.SYSCALLS['clone3'], (0, 0)),
            ('personality_query', sc.SYSCALLS['personality'],
             (0xFFFFFFFF,)),
            ('personality_exec', sc.SYSCALLS['personality'], (0x0400000,)),
            ('bpf', sc.SYSCALLS['bpf'], (0, 0, 0)),
            ('vsock', sc.SYSCALLS['socket'], (sc.AF_VSOCK, 1, 0)),
            ('unknown', sc.MAX_KNOWN_NR + 7, ()),
        ])
        self.assertEqual({'getpid': 0, 'keyctl': errno.EPERM,
                          'unshare_user': errno.EPERM,
                          'clone3': errno.ENOSYS, 'personality_query': 0,
                          'personality_exec': errno.EPERM,
                          'bpf': errno.EPERM, 'vsock': errno.EPERM,
                          'unknown': errno.ENOSYS},
                         got)
