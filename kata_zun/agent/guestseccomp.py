"""The default seccomp filter of container processes (x86_64 only).

Behaves like the default profile Docker documents for a container without
extra capabilities: the system calls that reach kernel state no container
owns (keyrings, BPF, perf, kernel modules, kexec, mounts and namespaces,
swap, the clock, accounting, quotas, raw I/O ports, file handles, the
kernel log, ...) fail with EPERM, everything else is allowed. ``clone3``
fails with ENOSYS: its flags live in memory a filter cannot read, and on
ENOSYS libc falls back to ``clone``, whose flags we check. System calls
newer than this table also fail with ENOSYS, so a newer kernel's additions
are refused until someone has looked at them (and libc falls back).

Only the native x86_64 ABI is allowed: a 32-bit (int 0x80) or x32 system
call kills the process, since neither has a table here.

The program is classic BPF over ``struct seccomp_data`` built by hand; it
is installed with ``prctl(PR_SET_SECCOMP)`` after ``no_new_privs``.
Standard library only (runs in the guest agent).
"""

import struct

# struct seccomp_data offsets (little-endian x86_64).
OFF_NR = 0
OFF_ARCH = 4


def off_arg(index):
    """:returns: the offset of the low 32 bits of argument ``index``."""
    return 16 + 8 * index


AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM = 1
ENOSYS = 38

# Classic BPF opcodes we use.
BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JGT_K = 0x25
BPF_JMP_JSET_K = 0x45
BPF_RET_K = 0x06

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# x86_64 system call numbers of everything the filter names (from the
# kernel's arch/x86/entry/syscalls/syscall_64.tbl).
SYSCALLS = {
    'syslog': 103, 'uselib': 134, 'ustat': 136, 'personality': 135,
    'sysfs': 139, 'vhangup': 153, 'pivot_root': 155, '_sysctl': 156,
    'adjtimex': 159, 'acct': 163, 'settimeofday': 164, 'mount': 165,
    'umount2': 166, 'swapon': 167, 'swapoff': 168, 'reboot': 169,
    'iopl': 172, 'ioperm': 173, 'create_module': 174, 'init_module': 175,
    'delete_module': 176, 'get_kernel_syms': 177, 'query_module': 178,
    'quotactl': 179, 'nfsservctl': 180, 'lookup_dcookie': 212,
    'clock_settime': 227, 'mbind': 237, 'set_mempolicy': 238,
    'kexec_load': 246, 'add_key': 248, 'request_key': 249, 'keyctl': 250,
    'migrate_pages': 256, 'unshare': 272, 'move_pages': 279,
    'perf_event_open': 298, 'fanotify_init': 300,
    'name_to_handle_at': 303, 'open_by_handle_at': 304,
    'clock_adjtime': 305, 'setns': 308, 'kcmp': 312, 'finit_module': 313,
    'kexec_file_load': 320, 'bpf': 321, 'userfaultfd': 323,
    'io_uring_setup': 425, 'io_uring_enter': 426, 'io_uring_register': 427,
    'open_tree': 428, 'move_mount': 429, 'fsopen': 430, 'fsconfig': 431,
    'fsmount': 432, 'fspick': 433, 'clone3': 435, 'mount_setattr': 442,
    'quotactl_fd': 443, 'set_mempolicy_home_node': 450,
    'clone': 56, 'socket': 41,
}
# The last system call number this table was reviewed against (Linux
# 6.1): anything above is refused with ENOSYS.
MAX_KNOWN_NR = 450

# Refused with EPERM whatever the arguments. Grouped by what they reach.
DENIED = (
    # kernel keyrings are not namespaced
    'add_key', 'keyctl', 'request_key',
    # kernel code, BPF programs, tracing and page-fault handling
    'bpf', 'perf_event_open', 'userfaultfd', 'kexec_load',
    'kexec_file_load', 'init_module', 'finit_module', 'delete_module',
    'create_module', 'get_kernel_syms', 'query_module', 'lookup_dcookie',
    # mounts and namespaces (CAP_SYS_ADMIN in Docker's terms)
    'mount', 'umount2', 'pivot_root', 'setns', 'open_tree', 'move_mount',
    'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr',
    'fanotify_init',
    # whole-machine state: swap, reboot, accounting, quotas, the clock,
    # the kernel log, raw I/O ports, the tty, NUMA placement of others
    'swapon', 'swapoff', 'reboot', 'acct', 'quotactl', 'quotactl_fd',
    'settimeofday', 'clock_settime', 'adjtimex', 'clock_adjtime',
    'syslog', 'iopl', 'ioperm', 'vhangup', 'mbind', 'set_mempolicy',
    'set_mempolicy_home_node', 'migrate_pages', 'move_pages',
    # file handles bypass the mount a container sees (the old
    # open_by_handle_at breakout), kcmp compares other processes' state
    'name_to_handle_at', 'open_by_handle_at', 'kcmp',
    # obsolete interfaces nobody needs in a container
    'uselib', 'ustat', 'sysfs', '_sysctl', 'nfsservctl',
    # io_uring runs system calls where this filter does not see them
    'io_uring_setup', 'io_uring_enter', 'io_uring_register',
)
# Refused with ENOSYS: callers fall back to an older system call.
NOT_IMPLEMENTED = ('clone3',)

# Namespace flags of clone/unshare (CLONE_NEWTIME is 0x80, which clone
# uses for the exit signal: only unshare checks it).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
            CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
# personality(2) values that only change how Linux itself behaves:
# PER_LINUX, PER_LINUX32, UNAME26 (and with PER_LINUX32), and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# socket(2) families refused: vsock reaches the host (CID 2) and other
# VMs' listeners directly, past the VM's network.
AF_VSOCK = 40


def stmt(code, k):
    return (code, 0, 0, k)


def jump(code, k, jt, jf):
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError('jump too far')
    return (code, jt, jf, k)


# Rules per leaf of the search tree: a leaf tests its numbers one by one.
LEAF_SIZE = 3


def _rules():
    """:returns: {system call number: its block}, each block a list of
    instructions that ends in a return (its jumps stay inside it).
    """
    errno_eperm = SECCOMP_RET_ERRNO | EPERM
    errno_enosys = SECCOMP_RET_ERRNO | ENOSYS
    rules = {SYSCALLS[name]: [stmt(BPF_RET_K, errno_eperm)]
             for name in DENIED}
    for name in NOT_IMPLEMENTED:
        rules[SYSCALLS[name]] = [stmt(BPF_RET_K, errno_enosys)]
    # clone and unshare: refused when asking for a new namespace.
    for name, flags in (('clone', NS_FLAGS),
                        ('unshare', NS_FLAGS | CLONE_NEWTIME)):
        rules[SYSCALLS[name]] = [
            stmt(BPF_LD_W_ABS, off_arg(0)),
            jump(BPF_JMP_JSET_K, flags, 0, 1),
            stmt(BPF_RET_K, errno_eperm),
            stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        ]
    # socket: no vsock.
    rules[SYSCALLS['socket']] = [
        stmt(BPF_LD_W_ABS, off_arg(0)),
        jump(BPF_JMP_JEQ_K, AF_VSOCK, 0, 1),
        stmt(BPF_RET_K, errno_eperm),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
    # personality: only the values above (the kernel reads an int).
    block = [stmt(BPF_LD_W_ABS, off_arg(0))]
    for i, value in enumerate(PERSONALITIES):
        # Jump to the ALLOW after the EPERM below.
        block.append(jump(BPF_JMP_JEQ_K, value, len(PERSONALITIES) - i, 0))
    block += [stmt(BPF_RET_K, errno_eperm),
              stmt(BPF_RET_K, SECCOMP_RET_ALLOW)]
    rules[SYSCALLS['personality']] = block
    return rules


def _search(numbers, rules):
    """:returns: the code deciding a number (in the accumulator) among
    the sorted ``numbers``: a binary search over them, each leaf testing
    a few for equality; a number with no rule is allowed.
    """
    if len(numbers) <= LEAF_SIZE:
        code = []
        for nr in numbers:
            block = rules[nr]
            code.append(jump(BPF_JMP_JEQ_K, nr, 0, len(block)))
            code += block
        code.append(stmt(BPF_RET_K, SECCOMP_RET_ALLOW))
        return code
    half = len(numbers) // 2
    low = _search(numbers[:half], rules)
    high = _search(numbers[half:], rules)
    # Above the low half's last number: skip over the low half's code.
    return [jump(BPF_JMP_JGT_K, numbers[half - 1], len(low), 0)] + \
        low + high


def build():
    """Build the default filter.

    Every system call a container makes runs it, so the rules are found
    by a binary search on the number: about a dozen instructions for
    any call, where a list of the rules took seventy for every allowed
    one. Under TCG that matters twice: each process gets its own copy of
    the program (JIT-compiled), which QEMU translates again for every
    new process, one block per compare taken.

    :returns: a list of (code, jt, jf, k) instructions.
    """
    prog = [
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        # x32 numbers have bit 30 set: everything >= it is not native.
        jump(BPF_JMP_JGT_K, X32_SYSCALL_BIT - 1, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JMP_JGT_K, MAX_KNOWN_NR, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS),
    ]
    rules = _rules()
    return prog + _search(sorted(rules), rules)


def assemble(prog):
    """:returns: the program as the kernel's array of sock_filter."""
    return b''.join(struct.pack('<HBBI', *insn) for insn in prog)


_compiled = None


def compiled():
    """:returns: the default program assembled (built once per process:
    every exec installs it, and building it in Python is not free under
    TCG).
    """
    global _compiled
    if _compiled is None:
        _compiled = assemble(build())
    return _compiled


def install(libc, prog=None):
    """Set no_new_privs and install the filter on the calling thread.

    :param libc: a ctypes CDLL of libc (use_errno=True).
    :param prog: instructions (default: :func:`build`).
    :raises: OSError if the kernel refuses.
    """
    import ctypes
    import os
    machine = os.uname().machine
    if machine != 'x86_64':
        # The table and the arch check are x86_64's: never install a
        # filter that would mean something else.
        raise OSError(95, 'no seccomp filter for %s' % machine)

    code = assemble(prog) if prog is not None else compiled()
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog: an unsigned short, then (aligned) a pointer.
    fprog = (ctypes.c_uint64 * 2)(len(code) // 8, ctypes.addressof(buf))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'no_new_privs')
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                  ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'seccomp filter')
