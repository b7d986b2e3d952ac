"""Capabilities, no_new_privs and seccomp of container processes.

A default container process gets Docker's default capability set: the
others leave the bounding set (so nothing the process executes can get
them back) and the permitted and effective sets; the inheritable and
ambient sets are emptied (inheritable capabilities were the way around
the bounding set of CVE-2022-24769). no_new_privs and the default seccomp
filter (:mod:`kata_zun.agent.guestseccomp`) come last.

A privileged container keeps everything: the VM is its boundary.
Standard library only (runs in the guest agent, in the forked child).
"""

from kata_zun.agent import guestseccomp

CAPS = {
    'CHOWN': 0, 'DAC_OVERRIDE': 1, 'DAC_READ_SEARCH': 2, 'FOWNER': 3,
    'FSETID': 4, 'KILL': 5, 'SETGID': 6, 'SETUID': 7, 'SETPCAP': 8,
    'LINUX_IMMUTABLE': 9, 'NET_BIND_SERVICE': 10, 'NET_BROADCAST': 11,
    'NET_ADMIN': 12, 'NET_RAW': 13, 'IPC_LOCK': 14, 'IPC_OWNER': 15,
    'SYS_MODULE': 16, 'SYS_RAWIO': 17, 'SYS_CHROOT': 18, 'SYS_PTRACE': 19,
    'SYS_PACCT': 20, 'SYS_ADMIN': 21, 'SYS_BOOT': 22, 'SYS_NICE': 23,
    'SYS_RESOURCE': 24, 'SYS_TIME': 25, 'SYS_TTY_CONFIG': 26, 'MKNOD': 27,
    'LEASE': 28, 'AUDIT_WRITE': 29, 'AUDIT_CONTROL': 30, 'SETFCAP': 31,
    'MAC_OVERRIDE': 32, 'MAC_ADMIN': 33, 'SYSLOG': 34, 'WAKE_ALARM': 35,
    'BLOCK_SUSPEND': 36, 'AUDIT_READ': 37, 'PERFMON': 38, 'BPF': 39,
    'CHECKPOINT_RESTORE': 40,
}
# Docker's default set for a container without --cap-add/--cap-drop.
DEFAULT_CAPS = ('CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD',
                'NET_RAW', 'SETGID', 'SETUID', 'SETFCAP', 'SETPCAP',
                'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE')

# Every capability number the kernel's interface has room for: dropping
# one the kernel does not know fails with EINVAL, which we ignore. (Not
# /proc/sys/kernel/cap_last_cap: an archive helper runs chrooted in the
# image, where that path is whatever the image put there.)
CAP_LIMIT = 64
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
EINVAL = 22


def mask(names):
    """:returns: the capability bit mask of ``names``."""
    value = 0
    for name in names:
        value |= 1 << CAPS[name]
    return value


def _fail(what):
    import ctypes
    err = ctypes.get_errno()
    import os
    raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def limit(libc, keep, last_cap=CAP_LIMIT - 1):
    """Reduce the calling process's capabilities to the mask ``keep``.

    :param libc: a ctypes CDLL of libc (use_errno=True).
    :param keep: capability bit mask to keep (bounding, permitted and
        effective); inheritable and ambient end up empty.
    :param last_cap: the kernel's highest capability (read by the caller
        before any chroot, see :func:`last_cap`): none above it exists to
        drop, and every drop is a system call.
    :raises: OSError if the kernel refuses.
    """
    import ctypes
    for cap in range(min(last_cap, CAP_LIMIT - 1) + 1):
        if not keep & (1 << cap):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() != EINVAL:
                    _fail('drop capability %d' % cap)
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        if ctypes.get_errno() != EINVAL:   # kernels before 4.3
            _fail('clear ambient capabilities')
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    lo, hi = keep & 0xFFFFFFFF, keep >> 32
    # Two struct __user_cap_data_struct: effective, permitted,
    # inheritable for capabilities 0-31, then 32-63.
    data = (ctypes.c_uint32 * 6)(lo, lo, 0, hi, hi, 0)
    if libc.capset(header, data) != 0:
        _fail('capset')


def last_cap(path='/proc/sys/kernel/cap_last_cap'):
    """:returns: the kernel's highest capability number (the guest's own
    /proc: call it outside any container root), else the interface's.
    """
    try:
        with open(path, 'rb') as f:
            value = int(f.read(16))
    except (OSError, ValueError):
        return CAP_LIMIT - 1
    return value if 0 <= value < CAP_LIMIT else CAP_LIMIT - 1


def confine(libc, privileged, extra=(), last=CAP_LIMIT - 1):
    """Apply the container defaults to the calling process.

    Call as root before changing to the container's user (setuid needs
    CAP_SETUID, which the default set keeps; a non-root user then loses
    its permitted and effective capabilities as usual).

    :param libc: a ctypes CDLL of libc (use_errno=True).
    :param privileged: keep every capability, no filter.
    :param extra: capability names kept beyond the default set.
    :param last: the kernel's highest capability (:func:`last_cap`).
    :raises: OSError if the kernel refuses any step: a container never
        starts with less protection than asked for.
    """
    if privileged:
        return
    limit(libc, mask(DEFAULT_CAPS + tuple(extra)), last)
    guestseccomp.install(libc)
