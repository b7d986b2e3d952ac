"""``kata-zun check`` for the jail: can QEMU be confined on this host?

Each result says ok or not and why. With ``[kata_jail] enabled`` the
checks are required (a sandbox would fail to start); with it off they
only inform, and say what is given up.
"""

import ctypes
import os

from kata_zun import conf
from kata_zun import exception
from kata_zun.jail import cgroup
from kata_zun.jail import identity
from kata_zun.jail import rootfs

CONF = conf.CONF
SECCOMP_ACTIONS = '/proc/sys/kernel/seccomp/actions_avail'


def _user(result):
    opts = CONF.kata_jail
    if os.geteuid() != 0:
        return result('jail-user', False, 'the shim runs as uid %d: only '
                      'root can give QEMU a uid of its own'
                      % os.geteuid())
    first, last = opts.uid_range_start, \
        opts.uid_range_start + opts.uid_range_size - 1
    try:
        leased = len([n for n in os.listdir(opts.lease_dir)
                      if n.isdigit()])
    except OSError:
        leased = 0
    clash = sorted(u for u in identity.uids_in_use()
                   if first <= u <= last and
                   not os.path.exists(os.path.join(opts.lease_dir, str(u))))
    if clash:
        return result('jail-user', False,
                      'uids %s of the range %d-%d are used by processes '
                      'that are not sandboxes: move [kata_jail] '
                      'uid_range_start' % (clash[:5], first, last))
    return result('jail-user', True, 'QEMU runs as a uid of its own from '
                  '%d-%d (%d leased), without capabilities'
                  % (first, last, leased))


def _namespaces(result):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            code = 0 if libc.unshare(
                rootfs.CLONE_NEWNS | rootfs.CLONE_NEWNET |
                rootfs.CLONE_NEWIPC | rootfs.CLONE_NEWUTS) == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    ok = os.waitstatus_to_exitcode(status) == 0
    return result('jail-namespaces', ok, 'mount, network, IPC and UTS '
                  'namespaces %s' % ('can be made' if ok else
                                     'cannot be made (unshare failed)'))


def _seccomp(result):
    enabled = CONF.kata_hypervisor.seccomp_sandbox
    ok = os.path.exists(SECCOMP_ACTIONS)
    if not enabled:
        return result('jail-seccomp', False, '[kata_hypervisor] '
                      'seccomp_sandbox is off: QEMU may make any system '
                      'call', required=False)
    return result('jail-seccomp', ok, 'QEMU runs with -sandbox on' if ok
                  else 'the kernel has no seccomp filters: QEMU\'s '
                  '-sandbox cannot work')


def _cgroups(result):
    try:
        kind, where = cgroup.detect()
    except exception.JailError as exc:
        return result('jail-cgroup', False, str(exc))
    if kind == 'v2':
        detail = 'cgroup v2 at %s' % where
    else:
        detail = 'cgroup v1 (%s)' % ', '.join(
            '%s at %s' % (c, where[c]) for c in cgroup.CONTROLLERS)
    probe = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                               'kz-check-%d' % os.getpid(), (kind, where))
    try:
        probe.create(64 << 20, 0.5, 16)
    except exception.JailError as exc:
        return result('jail-cgroup', False, '%s: cannot limit a sandbox: %s'
                      % (detail, exc))
    finally:
        probe.destroy()
    return result('jail-cgroup', True, '%s: memory, cpu and pids limits per '
                  'sandbox under %s/' % (detail,
                                         CONF.kata_jail.cgroup_parent))


def run_checks(result_class):
    """:param result_class: the check result type (name, ok, detail,
        required).
    :returns: list of results.
    """
    enabled = CONF.kata_jail.enabled

    def result(name, ok, detail, required=True):
        if not enabled:
            detail += ' ([kata_jail] enabled = false: QEMU runs with the ' \
                'shim\'s privileges)'
        return result_class(name, ok, detail, required and enabled)
    return [_user(result), _namespaces(result), _seccomp(result),
            _cgroups(result)]
