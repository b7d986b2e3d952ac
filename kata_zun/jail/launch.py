"""Put the jail together for one QEMU: identity, cgroup, root, privileges.

The privileged parent (the sandbox shim) calls :func:`prepare`; it
leases a uid, creates the sandbox's cgroup and plans the jail's root.
The returned :class:`Jail` gives :meth:`Jail.child_setup`, which runs in
the forked child before ``exec`` in this order:

1. join the ``vmm`` cgroup (while still root: the cgroup files are not
   in the jail);
2. enter the new namespaces and the jail's root (:mod:`.rootfs`);
3. drop every capability from the bounding set, set resource limits,
   drop supplementary groups, take the leased gid and uid (the kernel
   then clears all capabilities), set no_new_privs;
4. ask for SIGKILL when the parent dies (after the uid change, which
   clears that setting).

:meth:`Jail.release` undoes what :func:`prepare` made once QEMU is gone.
"""

import ctypes
import dataclasses
import grp
import os
import resource
import signal
import typing

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.jail import cgroup
from kata_zun.jail import identity
from kata_zun.jail import rootfs

CONF = conf.CONF
LOG = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAP_LAST_CAP_FILE = '/proc/sys/kernel/cap_last_cap'
# QEMU opens a handful of fds per disk, NIC and socket; vhost would add
# more. Well above what one VM needs, far below the host's.
NOFILE = 4096


@dataclasses.dataclass
class Jail:
    sandbox: str
    uid: int
    gid: int
    groups: typing.Tuple[int, ...]
    cgroup: cgroup.SandboxCgroup
    root: rootfs.RootPlan
    lease_dir: str
    cap_last: int

    def child_setup(self, parent_pid):
        """Runs in the child between fork and exec; never returns on
        failure (the exception reaches subprocess, exec does not happen).
        """
        lib = ctypes.CDLL(None, use_errno=True)
        for path in self.cgroup.procs_files('vmm'):
            with open(path, 'w') as f:
                f.write('0')
        rootfs.enter(self.root)
        for cap in range(self.cap_last + 1):
            _prctl(lib, PR_CAPBSET_DROP, cap)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        os.setgroups(list(self.groups))
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        _prctl(lib, PR_SET_NO_NEW_PRIVS, 1)
        _prctl(lib, PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    def release(self):
        """Remove the cgroup and give the uid back (QEMU must be gone).

        :returns: None
        """
        self.cgroup.destroy()
        identity.release(self.lease_dir, self.uid, self.sandbox)


def _prctl(lib, option, arg):
    if lib.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'prctl(%d): %s' % (option, os.strerror(err)))


def _cap_last():
    try:
        with open(CAP_LAST_CAP_FILE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 40


def _kvm_group():
    try:
        return (grp.getgrnam('kvm').gr_gid,)
    except KeyError:
        return ()


def prepare(sandbox, mountpoint, kernel, initrd, memory_mb, cpus,
            accel='tcg', lease_dir=None, cpuset=None, own_proc=False):
    """Lease an identity, make the cgroup and plan the root of one QEMU.

    :param sandbox: the sandbox id.
    :param mountpoint: an empty root-owned directory for the jail's root.
    :param kernel: guest kernel path on the host.
    :param initrd: guest initrd path on the host.
    :param memory_mb: guest RAM (MiB).
    :param cpus: the container's CPU limit (float) or None.
    :param accel: 'kvm' (QEMU then gets /dev/kvm and the kvm group) or
        'tcg'.
    :param lease_dir: where uid leases live (default [kata_jail]
        lease_dir).
    :param cpuset: (CPU ids, NUMA node ids) to confine QEMU to, or None.
    :param own_proc: give QEMU a ``/proc`` that shows only its own
        processes (it opens inherited RAM by ``/proc/self/fd/N``).
    :returns: a :class:`Jail`.
    :raises: kata_zun.exception.JailError
    """
    opts = CONF.kata_jail
    lease_dir = lease_dir or opts.lease_dir
    os.makedirs(mountpoint, mode=0o700, exist_ok=True)
    devices = ('/dev/kvm',) if accel == 'kvm' else ()
    root = rootfs.plan(mountpoint, CONF.kata_hypervisor.qemu_path, kernel,
                       initrd, opts.qemu_data_dirs, devices,
                       os.path.join(CONF.kata.run_path, 'jail-libs.json'),
                       own_proc=own_proc)
    uid = identity.lease(lease_dir, sandbox, opts.uid_range_start,
                         opts.uid_range_size)
    try:
        group = cgroup.for_sandbox(opts.cgroup_parent, sandbox)
        group.destroy()             # left over by a crashed shim
        group.create((memory_mb + opts.memory_overhead_mb) * 1024 * 1024,
                     cpus, opts.pids_max, cpuset=cpuset)
    except BaseException:
        identity.release(lease_dir, uid, sandbox)
        raise
    LOG.debug('sandbox %s: QEMU as uid %d in cgroup v%d', sandbox, uid,
              group.version)
    return Jail(sandbox, uid, uid, _kvm_group() if accel == 'kvm' else (),
                group, root, lease_dir, _cap_last())


def cleanup(sandbox):
    """Remove what a sandbox's jail left behind when its shim died with
    it (the kernel killed QEMU, nobody released): its cgroup and uid.

    :returns: None
    """
    if not CONF.kata_jail.enabled or os.geteuid() != 0:
        return
    try:
        cgroup.for_sandbox(CONF.kata_jail.cgroup_parent, sandbox).destroy()
    except exception.JailError as exc:
        LOG.warning('sandbox %s: %s', sandbox, exc)
    identity.release_all(CONF.kata_jail.lease_dir, sandbox)
