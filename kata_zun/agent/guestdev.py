"""Which devices a container may open: a cgroup v2 device program.

cgroup v2 has no devices.allow file: access to device nodes is decided by
an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the cgroup. The
agent builds a tiny one by hand and attaches it to every default
container's cgroup: like Docker, a container may create any node (it
keeps CAP_MKNOD) but may open only the character devices of its /dev
(null, zero, full, random, urandom, tty, console, ptmx and the ptys), so
a node it makes for its VM's disks, or for the agent's port, is useless.
A privileged container gets no program: every device of its VM.

Standard library only (runs in the guest agent).
"""

import struct

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
SYS_BPF = 321                          # x86_64

# struct bpf_cgroup_dev_ctx: access_type (access << 16 | type), major,
# minor.
DEV_BLOCK = 1
DEV_CHAR = 2
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4

ANY = None
# (major, minor) of the character devices a container may open.
ALLOWED_CHAR = ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9),   # null .. urandom
                (5, 0), (5, 1), (5, 2),                  # tty console ptmx
                (136, ANY))                              # /dev/pts/*

# eBPF opcodes we use.
LDX_MEM_W = 0x61
MOV64_K = 0xB7
MOV64_X = 0xBF
AND64_K = 0x57
RSH64_K = 0x77
JEQ_K = 0x15
JNE_K = 0x55
EXIT = 0x95


def build():
    """:returns: the program as (code, dst, src, off, imm) tuples; r0 = 1
    allows the access, r0 = 0 refuses it (EPERM).
    """
    body = [
        (LDX_MEM_W, 2, 1, 0, 0),       # r2 = ctx->access_type
        (MOV64_X, 3, 2, 0, 0),         # r3 = r2
        (AND64_K, 3, 0, 0, 0xFFFF),    # r3 = device type
        (RSH64_K, 2, 0, 0, 16),        # r2 = access bits
        (LDX_MEM_W, 4, 1, 4, 0),       # r4 = major
        (LDX_MEM_W, 5, 1, 8, 0),       # r5 = minor
        (JEQ_K, 2, 0, 'allow', ACC_MKNOD),
        (JNE_K, 3, 0, 'deny', DEV_CHAR),
    ]
    for major, minor in ALLOWED_CHAR:
        if minor is ANY:
            body.append((JEQ_K, 4, 0, 'allow', major))
        else:
            body += [(JNE_K, 4, 0, 1, major),
                     (JEQ_K, 5, 0, 'allow', minor)]
    labels = {}
    body += [('deny',), (MOV64_K, 0, 0, 0, 0), (EXIT, 0, 0, 0, 0),
             ('allow',), (MOV64_K, 0, 0, 0, 1), (EXIT, 0, 0, 0, 0)]
    prog = []
    for insn in body:
        if len(insn) == 1:
            labels[insn[0]] = len(prog)
        else:
            prog.append(insn)
    out = []
    for pc, (code, dst, src, off, imm) in enumerate(prog):
        if isinstance(off, str):
            off = labels[off] - pc - 1
        out.append((code, dst, src, off, imm))
    return out


def assemble(prog):
    return b''.join(struct.pack('<BBhi', code, (src << 4) | dst, off, imm)
                    for code, dst, src, off, imm in prog)


def _bpf(libc, cmd, attr):
    import ctypes
    import os
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, 'bpf(%d): %s' % (cmd, os.strerror(err)))
    return ret


def load(libc):
    """Load the device program (the kernel's verifier checks it).

    :returns: the program's file descriptor.
    :raises: OSError if the kernel refuses.
    """
    import ctypes
    code = assemble(build())
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b'Apache-2.0')
    attr = struct.pack('<IIQQIIQII16sII', BPF_PROG_TYPE_CGROUP_DEVICE,
                       len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license), 0, 0, 0, 0, 0,
                       b'kz_devices', 0, 0)
    return _bpf(libc, BPF_PROG_LOAD, attr)


_program = None


def program(libc):
    """:returns: the agent's one loaded device program (its fd, which is
    close-on-exec), loaded on first use. Every container of the VM gets
    the same program: it is immutable once loaded, and loading it again
    per container ran the kernel's verifier and JIT each time (a VM
    template loads it once for all its clones, see guestidentity).

    :raises: OSError if the kernel refuses.
    """
    global _program
    if _program is None:
        _program = load(libc)
    return _program


def restrict(libc, cgroup_dir):
    """Attach the device program to ``cgroup_dir`` (cgroup v2).

    :raises: OSError if the kernel refuses (the container then does not
        start: never less protection than asked for).
    """
    import os
    prog_fd = program(libc)
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # No flags: nothing below this cgroup may replace it.
        _bpf(libc, BPF_PROG_ATTACH,
             struct.pack('<IIIII', cg_fd, prog_fd, BPF_CGROUP_DEVICE, 0, 0))
    finally:
        os.close(cg_fd)
