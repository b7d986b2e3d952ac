"""Is a sandbox's process still there? Asked of /proc, never of a record.

A record keeps the pids of its shim and QEMU; a pid is reused once its
process is gone, so each check also matches the process's command line
(or cgroup) against the sandbox it should belong to.
"""

import os

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF


def pid_is_shim(pid, cid):
    """:returns: True if ``pid`` is the shim of sandbox ``cid`` (a pid
        may have been reused since it was recorded).
    """
    if not pid:
        return False
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read()
    except OSError:
        return False
    return b'kata_zun.cmd.shim' in cmdline and cid.encode() in cmdline


def pid_is_vm(pid, cid):
    """:returns: True if ``pid`` is the QEMU of sandbox ``cid``, running
        or on its way out.
    """
    if not pid:
        return False
    from kata_zun.hypervisor import base as hv_base
    name = hv_base.vm_name(cid).encode()
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            if name in f.read():
                return True
        # A QEMU that is exiting has no command line any more (its
        # memory is being freed, which takes a while for a VM) but is
        # still in its sandbox's cgroup, which cannot be removed yet.
        with open('/proc/%d/cgroup' % pid, 'rb') as f:
            return b'/' + name in f.read()
    except OSError:
        return False


def vm_cgroup_busy(cid):
    """:returns: True while a process is left in the sandbox's host
        cgroup: a killed QEMU's main thread is a zombie (no command
        line, no cgroup of its own) while its other threads still exit,
        and the cgroup lists it until they have.
    """
    if not CONF.kata_jail.enabled or os.geteuid() != 0:
        return False
    from kata_zun.hypervisor import base as hv_base
    from kata_zun.jail import cgroup
    try:
        files = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                                   hv_base.vm_name(cid)).procs_files('vmm')
    except exception.JailError:
        return False
    for path in files:
        try:
            with open(path) as f:
                if f.read(64).strip():
                    return True
        except OSError:
            continue
    return False
