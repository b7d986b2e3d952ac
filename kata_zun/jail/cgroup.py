"""Host cgroups for sandboxes, on cgroup v2 and on v1 (or hybrid) hosts.

Each sandbox gets ``<parent>/<sandbox>`` whose leaf ``vmm`` holds QEMU
(and later its helpers) under the limits; every shim moves itself into
``<parent>/shims`` (:func:`join_shims`). All of it sits at the root of
the hierarchy, outside zun-compute's service cgroup: stopping
zun-compute (systemd kills its whole cgroup by default) never takes a
sandbox with it.

Limits on ``vmm``:

* memory: guest RAM plus QEMU's overhead (``memory.max`` on v2,
  ``memory.limit_in_bytes`` on v1);
* CPU: a quota from the container's ``cpu``, so a fractional CPU is
  enforced by the host and not only by the untrusted guest kernel
  (``cpu.max`` / ``cpu.cfs_quota_us``);
* pids: ``pids.max``;
* dedicated CPUs and NUMA nodes (``cpu_policy=dedicated``,
  ``--cpuset-cpus``): ``cpuset.cpus`` and ``cpuset.mems``, only for a
  sandbox that asks for them (the ``cpuset`` controller is then enabled
  on v2; on v1 the sandbox also gets a group in the cpuset hierarchy,
  whose upper levels copy their parent's CPUs and nodes, as v1 wants
  them set before any task joins).

The version is found from the mounts: a cgroup2 file system at the root
(``/sys/fs/cgroup``) is v2; otherwise the v1 hierarchies of the memory,
cpu and pids controllers are used (a hybrid host's empty unified mount
is ignored).
"""

import abc
import errno
import os
import re

from oslo_log import log as logging

from kata_zun import exception

LOG = logging.getLogger(__name__)

ROOT = '/sys/fs/cgroup'
MOUNTS = '/proc/self/mounts'
PROC_CGROUP = '/proc/self/cgroup'
FALLBACK = '/run/kata-zun-cgroup'
CONTROLLERS = ('memory', 'cpu', 'pids')
CPUSET = 'cpuset'
LEAVES = ('vmm',)
SHIMS = 'shims'
CPU_PERIOD_US = 100000
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')


def _check_name(name, what):
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise exception.JailError(reason='invalid cgroup %s %r'
                                  % (what, name))
    return name


def _write(path, value):
    with open(path, 'w') as f:
        f.write(str(value))


def _read(path):
    with open(path) as f:
        return f.read(4096).strip()


def _mounts(mounts_file):
    """:returns: [(mount point, fs type, options set)] of cgroup mounts."""
    found = []
    try:
        with open(mounts_file) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4 and fields[2] in ('cgroup', 'cgroup2'):
                    found.append((fields[1], fields[2],
                                  set(fields[3].split(','))))
    except OSError:
        pass
    return found


class SandboxCgroup(metaclass=abc.ABCMeta):
    """The cgroup of one sandbox."""

    version = None

    def __init__(self, parent, sandbox):
        self.parent = _check_name(parent, 'parent')
        self.sandbox = _check_name(sandbox, 'name')
        self.pinned = False

    @abc.abstractmethod
    def create(self, memory_bytes, cpu_quota, pids_max, cpuset=None):
        """Make the sandbox cgroup and set the limits of its ``vmm`` leaf.

        :param memory_bytes: memory limit of the leaf (int bytes).
        :param cpu_quota: CPU time per period as a fraction of one CPU
            (e.g. 0.5), or None for no quota.
        :param pids_max: most tasks in the leaf.
        :param cpuset: (CPU ids, NUMA node ids) the leaf is confined to
            (from :func:`kata_zun.jail.cpuset.plan`; no nodes: all), or
            None.
        :returns: None
        :raises: kata_zun.exception.JailError
        """

    def cpuset(self):
        """:returns: (cpuset.cpus, cpuset.mems) of ``vmm`` as the kernel
            has them (kernel list strings), or None if not pinned.
        """
        raise NotImplementedError()

    @abc.abstractmethod
    def procs_files(self, leaf):
        """:returns: the ``cgroup.procs`` files that put a process into
            ``leaf`` (one per hierarchy).
        """

    @abc.abstractmethod
    def directories(self):
        """:returns: the sandbox's directories, one per hierarchy."""

    def add(self, leaf, pid=0):
        """Move a process (0: the caller) into ``leaf``.

        :raises: OSError
        """
        for path in self.procs_files(leaf):
            _write(path, pid)

    def destroy(self):
        """Remove the sandbox's cgroups (they must have no process left).

        :returns: True if nothing is left.
        """
        clean = True
        for directory in self.directories():
            for leaf in LEAVES + ('',):
                path = os.path.join(directory, leaf) if leaf else directory
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        LOG.warning('cgroup %s still has processes', path)
                    clean = False
        return clean

    def limits(self):
        """:returns: {'memory': bytes or None, 'cpu': fraction or None,
            'pids': int or None} as the kernel has them on ``vmm``.
        """
        raise NotImplementedError()


class CgroupV2(SandboxCgroup):
    version = 2

    def __init__(self, parent, sandbox, root=ROOT):
        super().__init__(parent, sandbox)
        self.root = root

    def directories(self):
        return [os.path.join(self.root, self.parent, self.sandbox)]

    def procs_files(self, leaf):
        return [os.path.join(self.directories()[0], leaf, 'cgroup.procs')]

    def _enable(self, directory, controllers=CONTROLLERS):
        available = set(_read(os.path.join(directory,
                                           'cgroup.controllers')).split())
        missing = [c for c in controllers if c not in available]
        if missing:
            raise exception.JailError(
                reason='cgroup v2 controllers %s are not available in %s'
                % (', '.join(missing), directory))
        enabled = set(_read(os.path.join(directory,
                                         'cgroup.subtree_control')).split())
        want = ' '.join('+' + c for c in controllers if c not in enabled)
        if want:
            _write(os.path.join(directory, 'cgroup.subtree_control'), want)

    def create(self, memory_bytes, cpu_quota, pids_max, cpuset=None):
        sandbox = self.directories()[0]
        controllers = CONTROLLERS + ((CPUSET,) if cpuset else ())
        try:
            self._enable(self.root, controllers)
            os.makedirs(os.path.dirname(sandbox), exist_ok=True)
            self._enable(os.path.dirname(sandbox), controllers)
            os.makedirs(sandbox, exist_ok=True)
            self._enable(sandbox, controllers)
            for leaf in LEAVES:
                os.makedirs(os.path.join(sandbox, leaf), exist_ok=True)
            vmm = os.path.join(sandbox, 'vmm')
            _write(os.path.join(vmm, 'memory.max'), int(memory_bytes))
            _write(os.path.join(vmm, 'memory.swap.max'), 0)
            _write(os.path.join(vmm, 'pids.max'), int(pids_max))
            _write(os.path.join(vmm, 'cpu.max'), '%s %d' % (
                _quota_us(cpu_quota), CPU_PERIOD_US))
            if cpuset:
                cpus, mems = cpuset
                _write(os.path.join(vmm, 'cpuset.cpus'), _list(cpus))
                if mems:
                    _write(os.path.join(vmm, 'cpuset.mems'), _list(mems))
                self.pinned = True
        except OSError as exc:
            raise exception.JailError(reason='cgroup v2 %s: %s'
                                      % (sandbox, exc))

    def cpuset(self):
        vmm = os.path.join(self.directories()[0], 'vmm')
        if not os.path.exists(os.path.join(vmm, 'cpuset.cpus')):
            return None
        return (_read(os.path.join(vmm, 'cpuset.cpus')),
                _read(os.path.join(vmm, 'cpuset.mems')))

    def limits(self):
        vmm = os.path.join(self.directories()[0], 'vmm')
        quota, period = _read(os.path.join(vmm, 'cpu.max')).split()
        return {'memory': _int_or_none(_read(os.path.join(vmm,
                                                          'memory.max'))),
                'cpu': (None if quota == 'max'
                        else int(quota) / int(period)),
                'pids': _int_or_none(_read(os.path.join(vmm, 'pids.max')))}


class CgroupV1(SandboxCgroup):
    version = 1

    def __init__(self, parent, sandbox, mountpoints):
        """:param mountpoints: {controller: mount point of its hierarchy}.
        """
        super().__init__(parent, sandbox)
        self.mountpoints = mountpoints

    def _dir(self, controller):
        return os.path.join(self.mountpoints[controller], self.parent,
                            self.sandbox)

    def directories(self):
        # One hierarchy may carry several controllers (cpu,cpuacct). The
        # cpuset one is listed when there is one (to remove a pinned
        # sandbox's group; destroying what does not exist is a no-op).
        return sorted({self._dir(c) for c in CONTROLLERS +
                       ((CPUSET,) if CPUSET in self.mountpoints else ())})

    def procs_files(self, leaf):
        dirs = {self._dir(c) for c in CONTROLLERS}
        if self.pinned:
            dirs.add(self._dir(CPUSET))
        return [os.path.join(d, leaf, 'cgroup.procs') for d in sorted(dirs)]

    def _create_cpuset(self, cpus, mems):
        """The sandbox's group in the v1 cpuset hierarchy: every level
        needs CPUs and nodes before a task may join below it; the upper
        ones copy their parent's.
        """
        if CPUSET not in self.mountpoints:
            raise exception.JailError(
                reason='no cgroup v1 cpuset hierarchy is mounted: cannot '
                'pin a sandbox to CPUs')
        upper = self.mountpoints[CPUSET]
        for level in (self.parent, self.sandbox, 'vmm'):
            path = os.path.join(upper, level)
            os.makedirs(path, exist_ok=True)
            for name, value in (('cpuset.cpus', cpus),
                                ('cpuset.mems', mems)):
                if level == 'vmm' and value:
                    _write(os.path.join(path, name), _list(value))
                elif not _read(os.path.join(path, name)):
                    _write(os.path.join(path, name),
                           _read(os.path.join(upper, name)))
            upper = path
        self.pinned = True

    def create(self, memory_bytes, cpu_quota, pids_max, cpuset=None):
        try:
            for directory in sorted({self._dir(c) for c in CONTROLLERS}):
                for leaf in LEAVES:
                    os.makedirs(os.path.join(directory, leaf),
                                exist_ok=True)
            if cpuset:
                self._create_cpuset(*cpuset)
            memory = os.path.join(self._dir('memory'), 'vmm')
            _write(os.path.join(memory, 'memory.limit_in_bytes'),
                   int(memory_bytes))
            try:
                # With swap accounting, swap counts against the limit too.
                _write(os.path.join(memory, 'memory.memsw.limit_in_bytes'),
                       int(memory_bytes))
            except OSError:
                pass
            cpu = os.path.join(self._dir('cpu'), 'vmm')
            _write(os.path.join(cpu, 'cpu.cfs_period_us'), CPU_PERIOD_US)
            quota = _quota_us(cpu_quota)
            _write(os.path.join(cpu, 'cpu.cfs_quota_us'),
                   -1 if quota == 'max' else quota)
            _write(os.path.join(self._dir('pids'), 'vmm', 'pids.max'),
                   int(pids_max))
        except OSError as exc:
            raise exception.JailError(reason='cgroup v1 %s: %s'
                                      % (self.sandbox, exc))

    def cpuset(self):
        if CPUSET not in self.mountpoints:
            return None
        vmm = os.path.join(self._dir(CPUSET), 'vmm')
        if not os.path.exists(vmm):
            return None
        return (_read(os.path.join(vmm, 'cpuset.cpus')),
                _read(os.path.join(vmm, 'cpuset.mems')))

    def limits(self):
        memory = int(_read(os.path.join(self._dir('memory'), 'vmm',
                                        'memory.limit_in_bytes')))
        cpu = os.path.join(self._dir('cpu'), 'vmm')
        quota = int(_read(os.path.join(cpu, 'cpu.cfs_quota_us')))
        period = int(_read(os.path.join(cpu, 'cpu.cfs_period_us')))
        return {'memory': memory if memory < 2 ** 62 else None,
                'cpu': None if quota < 0 else quota / period,
                'pids': _int_or_none(_read(os.path.join(
                    self._dir('pids'), 'vmm', 'pids.max')))}


def _quota_us(fraction):
    if fraction is None or fraction <= 0:
        return 'max'
    return max(1000, int(round(fraction * CPU_PERIOD_US)))


def _list(ids):
    from kata_zun.jail import cpuset
    return cpuset.format_list(ids)


def _int_or_none(text):
    return None if text == 'max' else int(text)


def _detect(mounts_file, root):
    mounts = _mounts(mounts_file)
    for point, fstype, _opts in mounts:
        if fstype == 'cgroup2' and point == root:
            return 'v2', root
    v1 = {}
    for point, fstype, opts in mounts:
        if fstype != 'cgroup':
            continue
        for controller in CONTROLLERS:
            if controller in opts and controller not in v1:
                v1[controller] = point
    missing = [c for c in CONTROLLERS if c not in v1]
    if missing:
        raise exception.JailError(
            reason='no cgroup v2 at %s and no cgroup v1 hierarchy for %s'
            % (root, ', '.join(missing)))
    # Optional: only sandboxes pinned to CPUs need it.
    for point, fstype, opts in mounts:
        if fstype == 'cgroup' and CPUSET in opts and CPUSET not in v1:
            v1[CPUSET] = point
    return 'v1', v1


def _hierarchies(proc_cgroup):
    """:returns: the v1 controller sets this process belongs to (as
        lists), and whether it has a v2 (unified) membership.
    """
    sets, unified = [], False
    with open(proc_cgroup) as f:
        for line in f:
            parts = line.strip().split(':', 2)
            if len(parts) != 3:
                continue
            if parts[0] == '0' and parts[1] == '':
                unified = True
            elif parts[1] and not parts[1].startswith('name='):
                sets.append(parts[1].split(','))
    return sets, unified


def _mount_own(fallback, proc_cgroup):
    """Mount this host's cgroup hierarchies at ``fallback`` (root only).

    A v1 hierarchy mounted again with its exact controller set is the
    same hierarchy, not a new one.
    """
    from kata_zun.jail import rootfs
    sets, unified = _hierarchies(proc_cgroup)
    wanted = [c for c in sets if set(c) & set(CONTROLLERS + (CPUSET,))]
    mounted = {point for point, _t, _o in _mounts(MOUNTS)}
    if not wanted and unified:
        target = os.path.join(fallback, 'unified')
        if target not in mounted:
            os.makedirs(target, mode=0o755, exist_ok=True)
            rootfs.mount('cgroup2', target, 'cgroup2',
                         rootfs.MS_NOSUID | rootfs.MS_NODEV |
                         rootfs.MS_NOEXEC)
        return
    for controllers in wanted:
        target = os.path.join(fallback, ','.join(controllers))
        if target in mounted:
            continue
        os.makedirs(target, mode=0o755, exist_ok=True)
        rootfs.mount('cgroup', target, 'cgroup',
                     rootfs.MS_NOSUID | rootfs.MS_NODEV | rootfs.MS_NOEXEC,
                     ','.join(controllers))


def detect(mounts_file=MOUNTS, root=ROOT, fallback=FALLBACK,
           proc_cgroup=PROC_CGROUP):
    """Find how this host's cgroups are laid out.

    A process in a mount namespace with a fresh /sys (``ip netns exec``
    makes one) sees no cgroup file system: as root it then mounts the
    host's hierarchies itself, at ``fallback``.

    :returns: ('v2', root) or ('v1', {controller: mount point}).
    :raises: kata_zun.exception.JailError when neither offers the memory,
        cpu and pids controllers.
    """
    try:
        return _detect(mounts_file, root)
    except exception.JailError:
        if not fallback or os.geteuid() != 0:
            raise
    try:
        _mount_own(fallback, proc_cgroup)
    except OSError as exc:
        raise exception.JailError(reason='no cgroup file system is '
                                  'mounted and mounting one failed: %s'
                                  % exc)
    found = _detect(mounts_file, os.path.join(fallback, 'unified'))
    return found


def _stat_value(path, key):
    """:returns: the value of ``key`` in a memory.stat file (0 if absent)."""
    try:
        with open(path) as f:
            for line in f.read(65536).splitlines():
                name, _, value = line.partition(' ')
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def memory_headroom(parent, layout=None):
    """What the sandboxes' parent cgroup can still take under its memory
    limit, if it has one (an operator may cap all sandboxes together):
    its limit less its working set (usage less the inactive file pages,
    which the kernel reclaims before an allocation fails there).

    :param parent: ``[kata_jail] cgroup_parent``.
    :param layout: the result of :func:`detect` (default: detect now).
    :returns: bytes (0 or more), or None when the parent has no memory
        limit, does not exist yet or cannot be read.
    :raises: kata_zun.exception.JailError on a bad name or no cgroups.
    """
    kind, where = layout or detect()
    parent = _check_name(parent, 'parent')
    if kind == 'v2':
        directory = os.path.join(where, parent)
        files = ('memory.max', 'memory.current', 'inactive_file')
    else:
        directory = os.path.join(where['memory'], parent)
        files = ('memory.limit_in_bytes', 'memory.usage_in_bytes',
                 'total_inactive_file')
    try:
        limit = _int_or_none(_read(os.path.join(directory, files[0])))
        usage = int(_read(os.path.join(directory, files[1])))
    except (OSError, ValueError):
        return None
    if limit is None or limit >= 2 ** 62:      # v2's and v1's "no limit"
        return None
    inactive = _stat_value(os.path.join(directory, 'memory.stat'), files[2])
    return max(0, limit - max(0, usage - inactive))


def join_shims(parent, pid=0, layout=None):
    """Move a shim (0: the caller) into ``<parent>/shims``.

    :raises: kata_zun.exception.JailError
    """
    kind, where = layout or detect()
    parent = _check_name(parent, 'parent')
    roots = [where] if kind == 'v2' else sorted(
        {where[c] for c in CONTROLLERS})
    try:
        for root in roots:
            directory = os.path.join(root, parent, SHIMS)
            os.makedirs(directory, exist_ok=True)
            _write(os.path.join(directory, 'cgroup.procs'), pid)
    except OSError as exc:
        raise exception.JailError(reason='cannot move the shim to %s/%s: '
                                  '%s' % (parent, SHIMS, exc))


def leave_starter(parent, log):
    """Move the calling daemon (a shim, a template builder and the RAM
    holder it starts) into ``<parent>/shims``, out of its starter's
    cgroup: stopping the starter's service (zun-compute's) must not take
    the daemon along. Only root can; a failure is logged, and the daemon
    then only shares its starter's fate.

    :param log: the caller's logger.
    """
    if os.geteuid() != 0:
        return
    try:
        join_shims(parent)
    except exception.JailError as exc:
        log.warning('%s', exc)


def for_sandbox(parent, sandbox, layout=None):
    """:param layout: the result of :func:`detect` (default: detect now).
    :returns: a :class:`SandboxCgroup` (not created yet).
    :raises: kata_zun.exception.JailError
    """
    kind, where = layout or detect()
    if kind == 'v2':
        return CgroupV2(parent, sandbox, where)
    return CgroupV1(parent, sandbox, where)
