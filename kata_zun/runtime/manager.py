"""Sandboxes on this host: records on disk, lifecycle, reconciliation.

Each container is one sandbox VM. Its record lives in
``<state_path>/containers/<id>/``::

    config.json     what to run (written atomically at create; rewritten
                    only by rebind_volumes, while no VM runs)
    state.json      status, exit code, pids (the shim updates it)
    rw.img          the container's writable layer (sparse ext4)
    container.log   stdout/stderr records (see kata_zun.shim.logs)
    shim.log        the shim's own log

Sockets live in ``<run_path>/<id[:16]>/``. The shim of a running
container outlives whoever started it; any new process finds it again
through the record and checks it is really alive before trusting
``state.json`` (a shim killed with the host leaves "running" behind: that
is reported as exited with an error, never as running).

This module knows nothing about Zun.
"""

import copy
import fcntl
import math
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import admission
from kata_zun.runtime import events
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.runtime import layer
from kata_zun.runtime import pods
from kata_zun.runtime import recordlock
from kata_zun.shim import client as shim_client
from kata_zun.shim import forkserver
from kata_zun.shim import logs

LOG = logging.getLogger(__name__)
CONF = conf.CONF

# 64 hex digits of our own, or a Zun uuid without its dashes (32).
_ID_RE = re.compile(r'^[0-9a-f]{32,64}\Z')
_NAME_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\Z')
_ENV_RE = re.compile(r'^[^=\0]+=[^\0]*$')
_HOSTNAME_RE = re.compile(r'^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})\Z')
IMAGE_SERIAL = 'kz-image'
LAYER_SERIAL = 'kz-rw'

CREATED = 'created'
RUNNING = 'running'
PAUSED = 'paused'
RESTARTING = 'restarting'      # between two runs of a restart policy
EXITED = 'exited'
# A record that cannot be read (or makes no sense): shown, never hidden.
UNKNOWN = 'unknown'
LIVE = (RUNNING, PAUSED, RESTARTING)
RESTART_POLICIES = ('no', 'on-failure', 'always', 'unless-stopped')
# In a container's directory while ``restart`` stops it: its shim then
# keeps an auto_remove record (see kata_zun.cmd.shim).
RESTART_MARK = 'restarting'
# Seconds rm waits for the shim of an exited container to finish its
# teardown (it powers the VM off and frees the sandbox's resources).
SHIM_TEARDOWN_WAIT = 120


def parse_restart_policy(value):
    """Parse Docker's ``--restart``: no, always, unless-stopped,
    on-failure[:N].

    :returns: {'name': ..., 'max_retries': N}
    :raises: InvalidInput
    """
    name, sep, count = (value or 'no').partition(':')
    if name not in RESTART_POLICIES or (sep and (
            name != 'on-failure' or not count.isdigit())):
        raise exception.InvalidInput(reason='invalid restart policy %r '
                                     '(no, always, unless-stopped, '
                                     'on-failure[:N])' % value)
    return {'name': name, 'max_retries': int(count or 0)}


# What a user may put in one container's record: far above real use,
# far below what would make records, frames or the guest's execve choke
# (Linux allows 2 MiB of argv and environment together).
MAX_ENV_BYTES = 512 * 1024
MAX_ARGV_BYTES = 512 * 1024
MAX_LABEL_BYTES = 64 * 1024


def _cpuset(cpus, mems):
    """The (CPUs, nodes) plan of a pinning request, or None.

    :raises: InvalidInput
    """
    if cpus in (None, '', (), []) and mems in (None, '', (), []):
        return None
    from kata_zun.jail import cpuset
    topology = cpuset.read_topology()
    if cpus in (None, '', (), []):
        cpus = topology.cpus
    return cpuset.plan(cpus, mems or None, topology)


def _check_sizes(what, items, limit):
    total = 0
    for item in items:
        total += len(str(item).encode('utf-8', 'surrogatepass')) + 1
    if total > limit:
        raise exception.InvalidInput(reason='%s too large: %d bytes (at '
                                     'most %d)' % (what, total, limit))


def _host_cpus():
    return os.cpu_count() or 1


def _host_memory_mb():
    """:returns: the host's memory in MiB, or None if unknown."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# The types of what state.json holds; anything else is left out (and
# the record's error says so). Written by the shim, which bounds what the
# guest says, but read back from disk: it may have been damaged since.
_NUMBER = (int, float)
_STATE_TYPES = {
    'status': str, 'exit_code': int, 'oom_killed': bool, 'error': str,
    'start_error': str, 'started_at': _NUMBER, 'finished_at': _NUMBER,
    'shim_pid': int, 'vm_pid': int, 'pid': int, 'boot_id': str,
    'restart_count': int, 'health': dict, 'boot_timing': dict,
    'guest_version': str,
}
_STATUSES = (CREATED, RUNNING, PAUSED, RESTARTING, EXITED)
# Characters of a record's error kept (they are shown by ps and Zun).
_RECORD_ERROR_MAX = 1024
# Bytes kept of an archiving process's stderr (for its error message).
_ERR_LIMIT = 4096
# Seconds an archive may take to go in or out of a container.
_ARCHIVE_TIMEOUT = 600.0


def _check_config(config, cid):
    """:returns: why a config.json cannot be used, or None."""
    if not isinstance(config, dict):
        return 'config.json does not hold an object'
    if config.get('id') != cid:
        return 'config.json names another container'
    if not isinstance(config.get('name'), str) or \
            not _NAME_RE.match(config['name']):
        return 'config.json has no valid name'
    created = config.get('created')
    if isinstance(created, bool) or not isinstance(created, _NUMBER):
        return 'config.json has no creation time'
    for key in ('image', 'agent_spec', 'vm', 'sandbox', 'pod'):
        if key in config and not isinstance(config[key], dict):
            return 'config.json has a malformed %s' % key
    return None


def _clean_state(state):
    """:returns: (state with only well-typed fields, problem or None)."""
    if not isinstance(state, dict):
        return {}, 'state.json does not hold an object'
    clean, bad = {}, []
    for key, value in state.items():
        wanted = _STATE_TYPES.get(key)
        if wanted is None or value is None:
            clean[key] = value
        elif isinstance(value, wanted) and not (
                wanted is not bool and isinstance(value, bool)):
            clean[key] = value
        else:
            bad.append(key)
    health_ = clean.get('health')
    if health_ is not None and not (
            isinstance(health_.get('log', []), list) and
            all(isinstance(e, dict) for e in health_.get('log', [])) and
            isinstance(health_.get('status', ''), str)):
        clean.pop('health')
        bad.append('health')
    if clean.get('status', CREATED) not in _STATUSES:
        clean.pop('status')
        bad.append('status')
    return clean, ('state.json has malformed %s' % ', '.join(sorted(bad))
                   if bad else None)


class Container(object):
    """A container record with its live status resolved."""

    def __init__(self, directory, config, state, alive, record_error=None):
        """:param record_error: why the record is (partly) unreadable;
            a container whose config or state could not be read at all
            has status :data:`UNKNOWN`.
        """
        self.dir = directory
        self.config = config
        self.state = state
        self.shim_alive = alive
        self.record_error = record_error
        self.unreadable = False

    @classmethod
    def unreadable_record(cls, directory, cid, reason):
        """A record that cannot be read: listed with its error (never
        hidden: ``ps`` and Zun's sync show it, ``rm`` removes it).
        """
        try:
            created = os.stat(directory).st_mtime
        except OSError:
            created = 0.0
        config = {'id': cid, 'name': 'broken-' + cid[:12],
                  'created': created, 'image': {'name': '', 'id': ''},
                  'agent_spec': {'argv': []}, 'vm': {}}
        c = cls(directory, config, {}, False,
                record_error=_record_error(reason))
        c.unreadable = True
        return c

    @property
    def id(self):
        return self.config['id']

    @property
    def name(self):
        return self.config['name']

    @property
    def status(self):
        """created, running, paused, exited (resolved, not as stored) or
        unknown (an unreadable record).
        """
        if self.unreadable:
            return UNKNOWN
        stored = self.state.get('status', CREATED)
        if stored in LIVE:
            return stored if self.shim_alive else EXITED
        if stored == CREATED and self.shim_alive:
            return CREATED
        return stored

    @property
    def lost(self):
        """Why a live sandbox is gone without having said so, or None:
        ``host-restart`` (it ran under another boot of the host) or
        ``crash`` (its shim died on this boot).
        """
        if self.status != EXITED or self.state.get('status') == EXITED:
            return None
        recorded = self.state.get('boot_id')
        current = fileutils.boot_id()
        if recorded and current and recorded != current:
            return 'host-restart'
        return 'crash'

    @property
    def exit_code(self):
        if self.lost:
            return 255
        return self.state.get('exit_code')

    @property
    def error(self):
        if self.record_error:
            return 'damaged sandbox record: %s' % self.record_error
        lost = self.lost
        if lost == 'host-restart':
            return 'the host restarted while the container ran'
        if lost:
            return 'the sandbox shim died (crash)'
        if (self.state.get('error') is None and self.status == CREATED and
                self.state.get('shim_pid') and not self.shim_alive):
            # Its shim was killed while it booted the VM: nothing else
            # would say why the container is not running.
            return 'the sandbox shim died before the container started'
        return self.state.get('error')

    @property
    def health(self):
        """``starting``, ``healthy`` or ``unhealthy`` while the container
        runs with a health check; None otherwise.
        """
        if not self.config.get('healthcheck') or self.status not in (
                RUNNING, PAUSED):
            return None
        stored = self.state.get('health') or {}
        return stored.get('status', health.STARTING)

    def to_dict(self):
        return {'Id': self.id, 'Name': self.name,
                'Created': self.config['created'],
                'Image': self.config['image']['name'],
                'ImageId': self.config['image']['id'],
                'Config': {k: self.config['agent_spec'].get(k) for k in
                           ('argv', 'env', 'workdir', 'user', 'tty',
                            'stdin', 'hostname', 'privileged')},
                'Limits': {'memory_mb': self.config.get('memory_mb'),
                           'cpus': self.config.get('cpus'),
                           'pids_limit': self.config['agent_spec'].get(
                               'pids_limit'),
                           'disk_mb': layer.size_mb_of(self.config,
                                                       self.dir)},
                'VM': self.config['vm'],
                'NetworkSettings': self._network_settings(),
                'Labels': self.config.get('labels', {}),
                'AutoRemove': self.config.get('auto_remove', False),
                'State': {'Status': self.status,
                          'ExitCode': self.exit_code,
                          'OOMKilled': self.state.get('oom_killed', False),
                          'Error': self.error,
                          'RestartCount': self.state.get('restart_count',
                                                         0),
                          'StartedAt': self.state.get('started_at'),
                          'FinishedAt': self.state.get('finished_at'),
                          'ShimPid': self.state.get('shim_pid'),
                          'VMPid': self.state.get('vm_pid'),
                          'Health': self._health_dict()},
                'Healthcheck': self.config.get('healthcheck'),
                'LogPath': os.path.join(self.dir, 'container.log')}

    def _health_dict(self):
        if not self.config.get('healthcheck'):
            return None
        stored = self.state.get('health') or {}
        return {'Status': self.health or stored.get('status'),
                'FailingStreak': stored.get('failing_streak', 0),
                'Log': [{'Start': e.get('start'), 'End': e.get('end'),
                         'ExitCode': e.get('exit_code'),
                         'Output': e.get('output')}
                        for e in stored.get('log') or []]}

    def _network_settings(self):
        # --- network (issue 5)
        from kata_zun import network
        return network.settings(self.dir, self.config.get('network'))


def _pid_is_shim(pid, cid):
    if not pid:
        return False
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read()
    except OSError:
        return False
    return b'kata_zun.cmd.shim' in cmdline and cid.encode() in cmdline


def _pid_is_vm(pid, cid):
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


def _vm_cgroup_busy(cid):
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


class Runtime(pods.PodMixin):
    """Entry point for everything that manages containers on this host
    (pods: see :mod:`kata_zun.runtime.pods`).
    """

    def __init__(self):
        self.state_path = CONF.kata.state_path
        self.run_path = CONF.kata.run_path
        self.containers_dir = os.path.join(self.state_path, 'containers')
        os.makedirs(self.containers_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.run_path, mode=0o700, exist_ok=True)
        self._images = None

    @property
    def images(self):
        if self._images is None:
            from kata_zun.image import store
            self._images = store.ImageStore(
                os.path.join(self.state_path, 'images'))
            # The store records pulls, tags and deletions in this
            # host's event log.
            self._images.events_path = self.state_path
        return self._images

    # ------------------------------------------------------------- records
    def _lock(self):
        """Take the host-wide lock of container records.

        Polled rather than blocking: in eventlet-patched zun-compute a
        blocking flock() would stop every green thread, including the one
        holding the lock while it waits on a shim or privsep (a deadlock);
        time.sleep() yields to them.

        :returns: the locked fd (close it to release).
        """
        fd = os.open(os.path.join(self.containers_dir, '.lock'),
                     os.O_RDWR | os.O_CREAT, 0o600)
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            except BaseException:
                os.close(fd)
                raise

    def _load(self, cid):
        """Read a container record.

        A record being created (no config.json yet) is None; a damaged
        one (garbage, truncated, oversized, wrong types) is a
        :class:`Container` with its error, never an exception and never
        hidden: one broken record must not hide a container nor stop a
        listing of the others.
        """
        directory = os.path.join(self.containers_dir, cid)
        try:
            config = fileutils.read_json(os.path.join(directory,
                                                      'config.json'))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return Container.unreadable_record(directory, cid, exc)
        problem = _check_config(config, cid)
        if problem:
            return Container.unreadable_record(directory, cid, problem)
        try:
            state = fileutils.read_json(os.path.join(directory,
                                                     'state.json'))
        except (OSError, ValueError) as exc:
            return Container.unreadable_record(directory, cid, exc)
        state, problem = _clean_state(state)
        # A pod's containers share its shim.
        alive = _pid_is_shim(state.get('shim_pid'),
                             (config.get('pod') or {}).get('id') or cid)
        return Container(directory, config, state, alive,
                         record_error=_record_error(problem))

    def list(self):
        """:returns: every container record on this host, oldest first
        (damaged ones too, with their error).
        """
        out = []
        for cid in os.listdir(self.containers_dir):
            if cid.startswith('.') or not _ID_RE.match(cid):
                continue
            try:
                c = self._load(cid)
            except Exception as exc:       # never one record for all
                c = Container.unreadable_record(
                    os.path.join(self.containers_dir, cid), cid, exc)
            # A pod's container shows once its pod is whole.
            pod_id = c is not None and not c.unreadable and self.pod_of(c)
            if c is not None and (not pod_id or self._pod_exists(pod_id)):
                out.append(c)
        return sorted(out, key=lambda c: c.config['created'])

    def get(self, ref):
        """Find a container by id, unique id prefix or name.

        :raises: ContainerNotFound
        """
        if not ref or '/' in ref or ref.startswith('.'):
            raise exception.ContainerNotFound(ref=ref)
        exact = self._load(ref) if _ID_RE.match(ref) else None
        if exact is not None:
            return exact
        matches = [c for c in self.list()
                   if c.name == ref or c.id.startswith(ref)]
        named = [c for c in matches if c.name == ref]
        if named:
            return named[0]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise exception.InvalidInput(
                reason='%r matches several containers' % ref)
        raise exception.ContainerNotFound(ref=ref)

    # -------------------------------------------------------------- create
    def create(self, image_ref, command=None, entrypoint=None, env=(),
               workdir=None, user=None, tty=False, stdin=False,
               memory_mb=None, cpus=None, name=None, hostname=None,
               auto_remove=False, labels=None, dns=(), cid=None,
               restart_policy=None, network=None, ports=(),
               healthcheck=None, volumes=(), privileged=False,
               pids_limit=None, disk_mb=None, cpuset_cpus=None,
               cpuset_mems=None):
        """Create a container record (nothing boots until start).

        :param image_ref: a local image name, id or id prefix.
        :param command: argv replacing the image's Cmd (list or None).
        :param entrypoint: argv replacing the image's Entrypoint; an empty
                           list clears it; None keeps the image's.
        :param env: iterable of ``KEY=VALUE`` added to the image's Env.
        :param memory_mb: memory limit in MiB (the VM gets overhead on top).
        :param cpus: CPU limit (the VM gets ceil(cpus) vCPUs).
        :param cid: use this id (64 hex) instead of a random one.
        :param network: 'bridge' or 'none' (None: 'none'); see
                        :mod:`kata_zun.network`.
        :param ports: published ports, ``[HOSTIP:]HOSTPORT:CPORT[/PROTO]``.
        :param healthcheck: keyword arguments of
            :func:`kata_zun.runtime.health.normalize` (``test``,
            ``interval``...); None: the image's health check, if any.
        :param volumes: volume requests (:mod:`kata_zun.volume.spec`); a
            named volume that does not exist is created.
        :param privileged: all capabilities, no seccomp filter, no masked
            paths inside the guest (never a host device).
        :param pids_limit: processes the container may have (0: no
            limit; None: ``[kata] pids_limit``).
        :param disk_mb: size of the writable layer in MiB, what ``df /``
            shows inside the container (None: ``[kata] writable_layer_mb``);
            see :mod:`kata_zun.runtime.layer`.
        :param cpuset_cpus: host CPUs the VM runs on only (a ``0-3,8``
            list or ints; Zun's dedicated CPUs); without ``cpus`` the VM
            gets one vCPU per CPU. See :mod:`kata_zun.jail.cpuset`.
        :param cpuset_mems: NUMA nodes its memory comes from (None: the
            nodes of ``cpuset_cpus``).
        :returns: the :class:`Container`.
        :raises: InvalidInput, ImageNotFound, ContainerNameInUse, Conflict
                 (host port taken), NetworkError
        """
        image = self.images.get(image_ref)
        cid = cid or secrets.token_hex(32)
        if not _ID_RE.match(cid):
            raise exception.InvalidInput(reason='container id must be 32 '
                                         'to 64 lowercase hex digits')
        name = name or 'kz-' + cid[:12]
        if not _NAME_RE.match(name):
            raise exception.InvalidInput(reason='invalid container name '
                                         '%r' % name)
        hostname = hostname or cid[:12]
        if not _HOSTNAME_RE.match(hostname):
            raise exception.InvalidInput(reason='invalid hostname %r' %
                                         hostname)
        for item in env:
            if not _ENV_RE.match(item):
                raise exception.InvalidInput(reason='invalid environment '
                                             'entry %r (want KEY=VALUE)' %
                                             item)
        if memory_mb is not None and memory_mb < 6:
            raise exception.InvalidInput(reason='memory limit must be at '
                                         'least 6 MiB')
        if cpus is not None and not 0 < cpus <= min(64, _host_cpus()):
            # A VM with more vCPUs than the host has only competes with
            # itself (and under TCG may never boot).
            raise exception.InvalidInput(
                reason='cpus must be in (0, %d]: this host has %d CPUs'
                % (min(64, _host_cpus()), _host_cpus()))
        pinned = _cpuset(cpuset_cpus, cpuset_mems)
        _check_sizes('environment', env, MAX_ENV_BYTES)
        _check_sizes('command', list(command or ()) +
                     list(entrypoint or ()), MAX_ARGV_BYTES)
        _check_sizes('labels', ['%s=%s' % kv for kv in
                                (labels or {}).items()], MAX_LABEL_BYTES)
        if pids_limit is None:
            pids_limit = CONF.kata.pids_limit
        if not 0 <= pids_limit <= 4194304:
            raise exception.InvalidInput(reason='pids limit must be in '
                                         '[0, 4194304] (0: no limit)')
        disk_mb = layer.check_size(disk_mb, self.containers_dir)
        argv = self._argv(image.config or {}, command, entrypoint)
        image_env = list((image.config or {}).get('Env') or [])
        merged = _merge_env(image_env, list(env))
        workdir = workdir or (image.config or {}).get('WorkingDir') or '/'
        if not workdir.startswith('/'):
            raise exception.InvalidInput(reason='working directory must be '
                                         'absolute')
        user = user if user is not None else (
            (image.config or {}).get('User') or '')
        check = (health.normalize(**healthcheck) if healthcheck is not None
                 else health.from_image_config(image.config))
        # --- network (issue 5): checked now, made at start
        from kata_zun import network as network_mod
        net_request = network_mod.make_request(network or 'none', ports)
        network_mod.validate(self.state_path, net_request,
                             self._record_exists)
        # --- end network
        from kata_zun.volume import spec as volume_spec
        volumes = volume_spec.check_all(volumes)
        # Fail now, not at start, when the guest assets are missing. They
        # are looked up again at every boot: a rebuild may replace them.
        from kata_zun.guest import builder
        builder.find()
        vcpus = (max(1, math.ceil(cpus)) if cpus
                 else min(64, len(pinned[0])) if pinned
                 else CONF.kata_hypervisor.default_vcpus)
        vm_memory = (memory_mb + CONF.kata_hypervisor.memory_overhead_mb
                     if memory_mb else
                     CONF.kata_hypervisor.default_memory_mb)
        host_mb = _host_memory_mb()
        if host_mb and vm_memory > host_mb:
            raise exception.InvalidInput(
                reason='a VM of %d MiB does not fit in this host\'s %d MiB '
                'of memory' % (vm_memory, host_mb))
        config = {
            'id': cid, 'name': name, 'created': time.time(),
            'image': {'id': image.id, 'name': image_ref,
                      'block_image': image.block_image,
                      'block_fs': image.block_fs},
            'memory_mb': memory_mb, 'cpus': cpus, 'disk_mb': disk_mb,
            'auto_remove': bool(auto_remove), 'labels': labels or {},
            'restart_policy': restart_policy or {'name': 'no',
                                                 'max_retries': 0},
            'healthcheck': check,
            'vm': dict({'vcpus': vcpus, 'memory_mb': vm_memory},
                       **({'cpuset_cpus': list(pinned[0]),
                           'cpuset_mems': list(pinned[1])}
                          if pinned else {})),
            'sandbox': {'hostname': hostname},
            'network': net_request,
            'agent_spec': {
                'id': cid, 'argv': argv, 'env': merged, 'workdir': workdir,
                'user': user, 'tty': bool(tty), 'stdin': bool(stdin),
                'hostname': hostname, 'dns': list(dns),
                'image_serial': IMAGE_SERIAL, 'layer_serial': LAYER_SERIAL,
                'image_fs': image.block_fs,
                'memory_bytes': memory_mb * 1024 * 1024 if memory_mb
                else None,
                'cpus': cpus, 'privileged': bool(privileged),
                'pids_limit': pids_limit},
        }
        lock = self._lock()
        try:
            self._sweep_incomplete()
            for other in self.list():
                if other.name == name:
                    raise exception.ContainerNameInUse(name=name,
                                                       id=other.id[:12])
            # Under the lock: a named volume cannot be removed between
            # this and the record naming it.
            from kata_zun.volume import devices as volume_devices
            config['volumes'] = volume_devices.resolve(volumes,
                                                       self.volumes)
            config['agent_spec']['volumes'] = volume_devices.agent_specs(
                config['volumes'])
            directory = os.path.join(self.containers_dir, cid)
            os.mkdir(directory, 0o700)
            try:
                layer.make(os.path.join(directory, 'rw.img'), disk_mb)
                faultpoint.reached('create')
                fileutils.write_json(os.path.join(directory, 'state.json'),
                                     {'status': CREATED})
                # config.json last: a record without it is incomplete and
                # is ignored (and can be removed) by every reader.
                fileutils.write_json(os.path.join(directory,
                                                  'config.json'), config)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        finally:
            os.close(lock)
        c = self._load(cid)
        self._event('create', c)
        return c

    def sweep_incomplete(self):
        """Remove the records whose creator died before finishing them
        (:meth:`_sweep_incomplete`), now rather than at the next create:
        zun-compute killed in a create deletes that container without a
        record id.
        """
        lock = self._lock()
        try:
            self._sweep_incomplete()
        finally:
            os.close(lock)

    def _sweep_incomplete(self):
        """Remove the records whose creator died before finishing them.

        A record is made whole under the records lock (config.json last),
        so one without config.json seen under that lock was abandoned (a
        CLI or zun-compute killed in the middle of create): nobody can
        list, start or remove it, and its writable layer would stay for
        ever. Call with the lock held.
        """
        for cid in os.listdir(self.containers_dir):
            if cid.startswith('.') or not _ID_RE.match(cid):
                continue
            directory = os.path.join(self.containers_dir, cid)
            if not os.path.exists(os.path.join(directory, 'config.json')):
                LOG.warning('removing the incomplete record %s (its '
                            'creator died)', cid)
                shutil.rmtree(directory, ignore_errors=True)
        self._sweep_pods()

    @staticmethod
    def _argv(image_config, command, entrypoint):
        if entrypoint is not None:
            ep = list(entrypoint)
            cmd = list(command) if command else []
        else:
            ep = list(image_config.get('Entrypoint') or [])
            cmd = (list(command) if command
                   else list(image_config.get('Cmd') or []))
        argv = ep + cmd
        if not argv:
            raise exception.InvalidInput(reason='no command specified')
        return argv

    # --------------------------------------------------------------- start
    def _run_dir(self, cid):
        return os.path.join(self.run_path, cid[:16])

    def start(self, ref, before_start=None):
        """Boot the container's VM and start its process.

        :param ref: container reference.
        :param before_start: optional callable(client, main_handle) run
                             after the VM is up and before the process
                             starts (``run`` attaches here so no output is
                             missed).
        :returns: (container, connected ShimClient)
        :raises: Conflict if it runs already or another request starts
            or removes it now; ShimError if the VM failed.
        """
        c = self.get(ref)
        self._refuse_member(c, 'start')
        # One start at a time per container, whichever process asks (a
        # CLI, zun-compute): two would both find it stopped and both
        # boot a VM. The second is told at once.
        with recordlock.held(c.dir, c.id, 'started'):
            return self._start_locked(self.get(c.id), before_start)

    def _start_locked(self, c, before_start):
        if c.status == CREATED and c.shim_alive:
            return self._start_booted(c, before_start)
        if c.status in LIVE or c.shim_alive:
            raise exception.Conflict(reason='container %s is already '
                                     'running' % c.id[:12])
        # A start by the user begins a new life: no exit code, no error,
        # and a restart count of its restart policy back at zero.
        fileutils.write_json(os.path.join(c.dir, 'state.json'),
                             {'status': CREATED})
        # What a previous life left when its shim was killed with it
        # (its QEMU's cgroup and uid lease): nobody else releases them.
        self._cleanup_sandbox(c)
        run_dir = self._run_dir(c.id)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self._plug_network(c)
        try:
            self._spawn_shim(c, run_dir)
        except BaseException:
            # The shim died while booting (or is still at it past our
            # deadline: it then stops its VM itself, see cmd/shim.py).
            now = self._load(c.id)
            if now is None or not now.shim_alive:
                self._wait_vm_gone(c)
                self._cleanup_sandbox(c)
            raise
        faultpoint.reached('start-spawned')
        return self._start_booted(c, before_start)

    def _start_booted(self, c, before_start):
        """Start the process of a sandbox whose VM is up (status
        ``created`` with its shim alive): just booted by :meth:`start`,
        or booted by a start whose caller went away before this step.
        """
        sock = os.path.join(self._run_dir(c.id), 'shim.sock')
        # The start is part of the boot: on a host busy with many boots
        # the shim and the guest answer late but do answer (a fixed 10 s
        # connect and 30 s start failed most of 50 concurrent starts that
        # then came up anyway). A dead shim refuses the connection at
        # once; this bound is the last resort, as for the boot.
        patience = max(CONF.kata.shim_start_timeout,
                       CONF.kata_agent.request_timeout)
        try:
            if not os.path.exists(sock):
                raise exception.ShimError(reason='no shim socket')
            client = self.connect(c, timeout=patience)
        except exception.ShimError:
            now = self._load(c.id)
            if now is not None and now.shim_alive and \
                    now.status == CREATED:
                raise exception.Conflict(reason='container %s is being '
                                         'started' % c.id[:12])
            raise exception.ShimError(
                reason='the sandbox of %s died before its container '
                'started: %s' % (c.id[:12], now and now.error))
        try:
            main = client.call('state', timeout=patience).get('main')
            if before_start is not None:
                before_start(client, main)
            result = client.call('start', timeout=patience)
        except BaseException:
            client.close()
            raise
        client.start_error = result.get('error')
        self._event('start', c)
        return self._load(c.id), client

    def _event(self, action, c, **attributes):
        """Record a container's event in the host's log (see
        :mod:`kata_zun.runtime.events`); never raises.
        """
        try:
            image = c.config.get('image') or {}
            attributes.setdefault('name', c.name)
            attributes.setdefault('image', image.get('name') or
                                  image.get('id'))
            cid = c.id
        except Exception as exc:      # a damaged record: still an event
            LOG.debug('event %s of %r: %s', action, c, exc)
            cid = getattr(c, 'id', '?')
        events.emit(self.state_path, 'container', action, cid, attributes)

    # ------------------------------------------- network (issue 5)
    def _record_exists(self, cid):
        return os.path.exists(os.path.join(self.containers_dir, cid,
                                           'config.json')) or \
            self._pod_exists(cid)

    def _plug_network(self, c):
        """Make the network before the VM boots (tap, lease, rules); it
        stays the container's, stopped or not, until rm.
        """
        request = c.config.get('network')
        if request is None:
            return None                # a record from before networking
        from kata_zun import network
        return network.plug(self.state_path, c.dir, c.id,
                            c.config['sandbox']['hostname'], request,
                            self._record_exists)

    def _unplug_network(self, c, force):
        from kata_zun import network
        try:
            network.unplug(self.state_path, c.id)
        except Exception as exc:
            if not force:
                raise
            # The lease stays: the next start's reconciliation retries,
            # or zun-compute's periodic sync (release_orphan_networks).
            LOG.warning('removing the network of %s: %s', c.id, exc)

    def release_orphan_networks(self):
        """Release what networks still hold for removed containers (taps,
        OVS ports, leases, rules whose removal failed and was "kept for a
        retry"). Each start does it before it plugs; zun-compute's
        periodic sync does it too, so that a failed release does not wait
        for the host's next start.

        :returns: the container ids cleaned up.
        """
        from kata_zun import network
        return network.reconcile(self.state_path, self._record_exists)

    def release_network(self, cid):
        """Release the network of a container whose shim removed its
        record (``--rm``): nothing else would before the next start.
        """
        if not self._record_exists(cid):
            from kata_zun import network
            network.unplug(self.state_path, cid)

    def set_network(self, ref, network):
        """Replace the network request of a container (Zun's network
        attach/detach).

        A container that does not run just gets the new request (its NICs
        are made at the next start; what the last start plugged is
        released now). A running one with Neutron networks gets its NICs
        hotplugged and unplugged now (:meth:`_change_network_live`).

        :param network: as :meth:`create` takes it.
        :returns: the :class:`Container`.
        :raises: Conflict (paused, or NICs fixed while it runs);
                 InvalidInput; NetworkError; ShimError
        """
        from kata_zun import network as network_mod
        request = network_mod.make_request(network or 'none', ())
        network_mod.validate(self.state_path, request, self._record_exists)
        lock = self._lock()
        try:
            c = self.get(ref)
            if c.status in LIVE or c.shim_alive:
                self._change_network_live(c, request)
                return self._load(c.id)
            config = c.config
            config['network'] = request
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
        finally:
            os.close(lock)
        network_mod.unplug(self.state_path, c.id)
        try:
            os.unlink(os.path.join(c.dir, network_mod.ATTACHMENT))
        except FileNotFoundError:
            pass
        return self._load(c.id)

    def _change_network_live(self, c, request):
        """Hotplug the NICs ``request`` adds, unplug those it drops.

        Removals go first (a slot freed can take an added NIC). Each step
        is recorded as it completes (config.json and network.json name
        exactly the NICs the VM has), so a failure half-way leaves a
        consistent container: what was done stays done, what failed is
        undone.
        """
        from kata_zun import network as network_mod
        if c.status == PAUSED:
            raise exception.Conflict(
                reason='container %s is paused: unpause it to change its '
                'networks' % c.id[:12])
        config = c.config
        current = config.get('network') or {}
        added, removed = network_mod.plan_change(
            current, request, network_mod.read_attachment(c.dir))
        hostname = config['sandbox']['hostname']
        timeout = CONF.kata_agent.request_timeout
        nics = list(current.get('nics') or [])

        def record():
            config['network'] = dict(request, nics=list(nics))
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
            network_mod.write_attachment(c.dir, hostname, config['network'])

        from kata_zun.network import neutron
        before = {i['mac']: i for i in network_mod.guest_interfaces(
            hostname, current.get('nics') or [])}
        with self.connect(c) as client:
            for nic in removed:
                client.call('nic_remove', {
                    'tap': neutron.tap_name(nic['port_id']),
                    'mac': nic['mac']}, timeout=timeout)
                nics = [n for n in nics if n['port_id'] != nic['port_id']]
                record()
                network_mod.unplug_nic(self.state_path, c.id, nic)
            for nic in added:
                network_mod.plug_nic(self.state_path, c.id, nic)
                tap = neutron.tap_name(nic['port_id'])
                try:
                    client.call('nic_add', {
                        'tap': tap, 'mac': nic['mac'],
                        'checksum_offload': neutron.checksum_offload(nic),
                        'interface': network_mod.guest_interface(
                            hostname, nics + [nic], nic)}, timeout=timeout)
                except BaseException:
                    network_mod.unplug_nic(self.state_path, c.id, nic)
                    raise
                nics.append(nic)
                record()
            # A NIC that kept its place but not its role (it now carries
            # the default route the detached NIC had) is configured again
            # (idempotent in the agent).
            added_macs = {n['mac'].lower() for n in added}
            for iface in network_mod.guest_interfaces(hostname, nics):
                if iface['mac'] not in added_macs and \
                        before.get(iface['mac']) not in (None, iface):
                    client.call('nic_configure', {'interface': iface},
                                timeout=timeout)
        LOG.info('container %s: NICs added %s, removed %s', c.id[:12],
                 [n['port_id'] for n in added],
                 [n['port_id'] for n in removed])

    # ------------------------------------------- end network

    def _launch_shim(self, c, run_dir, pod=False):
        """Start the shim of ``c``.

        :returns: the read end of its ready pipe.
        """
        def argv(ready_fd):
            words = [sys.executable, '-m', 'kata_zun.cmd.shim',
                     '--state-dir', c.dir, '--run-dir', run_dir,
                     '--ready-fd', str(ready_fd)] + (['--pod'] if pod else [])
            for path in CONF.config_file or []:
                words += ['--config-file', path]
            return words

        run_path = CONF.kata.run_path
        if CONF.kata.shim_forkserver:
            read_fd, write_fd = os.pipe()
            if forkserver.spawn(run_path, argv(write_fd), read_fd,
                                write_fd):
                return read_fd
            os.close(read_fd)
        read_fd, write_fd = os.pipe()
        try:
            # The shim daemonizes (double fork): this child exits at once,
            # so neither the CLI nor zun-compute keeps a zombie.
            proc = subprocess.Popen(argv(write_fd), pass_fds=(write_fd,),
                                    stdin=subprocess.DEVNULL,
                                    close_fds=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        proc.wait()
        if CONF.kata.shim_forkserver:
            # For the next start.
            forkserver.ensure(run_path, CONF.kata_jail.cgroup_parent
                              if CONF.kata_jail.enabled else None)
        return read_fd

    def _spawn_shim(self, c, run_dir, pod=False):
        read_fd = self._launch_shim(c, run_dir, pod)
        message = b''
        deadline = time.monotonic() + CONF.kata.shim_start_timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise exception.ShimError(
                        reason='the VM did not come up within %s s' %
                        CONF.kata.shim_start_timeout)
                ready, _, _ = select.select([read_fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                message += chunk
        finally:
            os.close(read_fd)
        text = message.decode('utf-8', 'replace').strip()
        if text.startswith(admission.REFUSED):
            raise exception.InsufficientResources(
                text[len(admission.REFUSED):])
        if text != 'ok':
            raise exception.ShimError(reason=text or 'the shim died while '
                                      'starting; see %s' %
                                      os.path.join(c.dir, 'shim.log'))

    def connect(self, c, timeout=10.0):
        """Connect to the shim of a running container.

        A shim that takes the connection but does not answer within
        ``timeout`` while its process lives is asked again: on a host
        starved of CPU or memory its answer is late, not lost (a fixed
        deadline failed a stop of a healthy container in the soak while
        the host's memory ran out). ``[kata] shim_start_timeout`` bounds
        a shim that lives and never answers.

        :param c: the container.
        :param timeout: seconds for one attempt at the handshake.
        :returns: a connected ShimClient.
        :raises: ShimError when the shim is gone or never answers.
        """
        if self.pod_of(c):
            return self._member_client(c, timeout)
        path = os.path.join(self._run_dir(c.id), 'shim.sock')
        give_up = time.monotonic() + CONF.kata.shim_start_timeout
        while True:
            try:
                return shim_client.ShimClient(path, timeout=timeout)
            except exception.ShimUnresponsive as exc:
                if time.monotonic() >= give_up or not _pid_is_shim(
                        c.state.get('shim_pid'), c.id):
                    raise
                LOG.warning('%s; its process lives: asking again', exc)

    def _running_client(self, ref):
        c = self.get(ref)
        if c.status not in LIVE + (CREATED,) or not c.shim_alive:
            raise exception.Conflict(reason='container %s is not running' %
                                     c.id[:12])
        return c, self.connect(c)

    # ------------------------------------------------------- operations
    def stop(self, ref, timeout=None):
        """Stop: SIGTERM, SIGKILL after ``timeout`` s, VM powered off.

        :returns: the exit information dict.
        """
        c = self.get(ref)
        self._refuse_member(c, 'stop')
        if not c.shim_alive:
            return {'exited': True, 'exit_code': c.exit_code}
        timeout = CONF.kata.stop_timeout if timeout is None else timeout
        with self.connect(c) as client:
            result = client.call('stop', {'timeout': timeout},
                                 timeout=timeout + 30)
        self._wait_shim_gone(c)
        self._event('stop', c)
        return result

    def _wait_shim_gone(self, c, timeout=15.0):
        deadline = time.monotonic() + timeout
        pid = c.state.get('shim_pid')
        # A pidfd wakes us when the shim exits (no poll interval on every
        # stop). Opened before the check below, so it cannot name a
        # process that took a reused pid.
        fd = fileutils.open_pidfd(pid) if pid else None
        try:
            while _pid_is_shim(pid, c.id):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if fd is None:
                    time.sleep(min(0.02, left))
                else:
                    select.select([fd], [], [], min(1.0, left))
        finally:
            if fd is not None:
                os.close(fd)

    def restart(self, ref, timeout=None):
        """Stop a container if it runs, then start it (``docker
        restart``).

        A container created with ``auto_remove`` keeps its record across
        the restart: its shim, which removes the record when it ends,
        finds the :data:`RESTART_MARK` file and leaves it.

        :param timeout: seconds between SIGTERM and SIGKILL.
        :returns: (container, connected ShimClient) as :meth:`start`.
        :raises: ContainerNotFound, ShimError
        """
        c = self.get(ref)
        if c.shim_alive:
            mark = os.path.join(c.dir, RESTART_MARK)
            fileutils.write_atomic(mark, '%d\n' % os.getpid(), 0o600)
            try:
                self.stop(c.id, timeout=timeout)
            finally:
                try:
                    os.unlink(mark)
                except FileNotFoundError:
                    pass
            if not self._record_exists(c.id):
                raise exception.ContainerNotFound(ref=ref)
        container, client = self.start(c.id)
        self._event('restart', c)
        return container, client

    def wait(self, ref):
        """Block until a container stops (``docker wait``).

        A container that does not run has nothing to wait for: its
        last exit code is returned at once (0 when it never ran), as
        Docker's default ``not-running`` condition does.  With a restart
        policy the wait lasts until the shim gives up restarting.

        :returns: the exit code (255 when the sandbox was lost).
        :raises: ContainerNotFound
        """
        c = self.get(ref)
        if c.shim_alive:
            try:
                with self.connect(c) as client:
                    code = client.call('wait', {}, timeout=None).get(
                        'exit_code')
                if code is not None:
                    return int(code)
            except exception.ShimError as exc:
                # The shim went away (it does once the container ended):
                # its record says how it ended.
                LOG.debug('waiting for %s: %s', c.id[:12], exc)
            self._wait_shim_gone(c)
            c = self._load(c.id) or c
            if c.shim_alive:
                c.shim_alive = False      # stopped answering: lost
        code = c.exit_code
        return 0 if code is None else int(code)

    def rename(self, ref, name):
        """Give a container another name (``docker rename``); it may
        run.

        :raises: ContainerNotFound, InvalidInput, ContainerNameInUse
        """
        name = name[1:] if isinstance(name, str) and \
            name.startswith('/') else name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise exception.InvalidInput(reason='invalid container name '
                                         '%r: only [a-zA-Z0-9][a-zA-Z0-9_.-] '
                                         'are allowed' % name)
        lock = self._lock()
        try:
            c = self.get(ref)
            if c.unreadable:
                raise exception.Conflict(reason='container %s has a '
                                         'damaged record' % c.id[:12])
            if c.name == name:
                return c
            for other in self.list():
                if other.name == name:
                    raise exception.ContainerNameInUse(name=name,
                                                       id=other.id[:12])
            old_name = c.name
            config = c.config
            config['name'] = name
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
        finally:
            os.close(lock)
        renamed = self._load(c.id)
        self._event('rename', renamed, oldName=old_name)
        return renamed

    def _wait_vm_gone(self, c, timeout=15.0):
        """Wait for the QEMU of a sandbox whose shim died: the kernel
        kills it then (PR_SET_PDEATHSIG), but not at once, and its cgroup
        cannot be removed while it is in there.
        """
        state = self._load(c.id)
        pid = (state.state if state is not None else c.state).get('vm_pid')
        deadline = time.monotonic() + timeout
        while ((_pid_is_vm(pid, c.id) or _vm_cgroup_busy(c.id)) and
               time.monotonic() < deadline):
            time.sleep(0.02)

    @staticmethod
    def _cleanup_sandbox(c):
        from kata_zun.hypervisor import base as hv_base
        from kata_zun.jail import launch
        launch.cleanup(hv_base.vm_name(c.id))

    def kill(self, ref, sig):
        c, client = self._running_client(ref)
        with client:
            client.call('signal', {'signal': int(sig)})
        self._event('kill', c, signal=int(sig))

    def pause(self, ref):
        c, client = self._running_client(ref)
        with client:
            client.call('pause')
        self._event('pause', c)

    def unpause(self, ref):
        c, client = self._running_client(ref)
        with client:
            client.call('unpause')
        self._event('unpause', c)

    def exec_client(self, ref, argv, env=(), workdir=None, user=None,
                    tty=False, stdin=False):
        """Start an extra process in a running container.

        :returns: (client, handle, exec_error or None); the client receives
                  the process's output and exit event.
        """
        if not argv:
            raise exception.InvalidInput(reason='no command given')
        for item in env:
            if not _ENV_RE.match(item):
                raise exception.InvalidInput(reason='invalid environment '
                                             'entry %r' % item)
        c, client = self._running_client(ref)
        if c.status != RUNNING:
            client.close()
            raise exception.Conflict(reason='container %s is %s' %
                                     (c.id[:12], c.status))
        try:
            result = client.call('exec', {
                'argv': list(argv), 'env': list(env), 'workdir': workdir,
                'user': user, 'tty': tty, 'stdin': stdin},
                timeout=CONF.kata_agent.request_timeout)
        except Exception:
            client.close()
            raise
        return client, result.get('proc'), result.get('error')

    def call(self, ref, op, args=None, timeout=None):
        """Run a shim operation (stats, ps, update) on a running container.
        """
        c, client = self._running_client(ref)
        with client:
            return client.call(op, args or {},
                               timeout or CONF.kata_agent.request_timeout)

    def update(self, ref, memory_mb=None, cpus=None):
        """Change the memory and/or CPU limit of a container.

        The record is updated so the next boot sizes the VM for it; a
        running container gets the new cgroup limit at once when it fits
        in the VM it already has (its RAM and vCPUs cannot grow live).

        :returns: True when applied live, False when it waits for a
                  restart.
        :raises: InvalidInput
        """
        if memory_mb is not None and memory_mb < 6:
            raise exception.InvalidInput(reason='memory limit must be at '
                                         'least 6 MiB')
        if cpus is not None and not 0 < cpus <= min(64, _host_cpus()):
            # A VM with more vCPUs than the host has only competes with
            # itself (and under TCG may never boot).
            raise exception.InvalidInput(
                reason='cpus must be in (0, %d]: this host has %d CPUs'
                % (min(64, _host_cpus()), _host_cpus()))
        lock = self._lock()
        try:
            c = self.get(ref)
            config = c.config
            live_vm = dict(config['vm'])
            spec = config['agent_spec']
            if memory_mb is not None:
                config['memory_mb'] = memory_mb
                spec['memory_bytes'] = memory_mb * 1024 * 1024
                config['vm']['memory_mb'] = (
                    memory_mb + CONF.kata_hypervisor.memory_overhead_mb)
            if cpus is not None:
                config['cpus'] = spec['cpus'] = cpus
                config['vm']['vcpus'] = max(1, math.ceil(cpus))
            fileutils.write_json(os.path.join(c.dir, 'config.json'), config)
        finally:
            os.close(lock)
        if c.status not in (RUNNING, PAUSED):
            return False
        fits = ((memory_mb is None or memory_mb +
                 CONF.kata_hypervisor.memory_overhead_mb <=
                 live_vm['memory_mb']) and
                (cpus is None or math.ceil(cpus) <= live_vm['vcpus']))
        if not fits:
            return False
        args = {}
        if memory_mb is not None:
            args['memory_bytes'] = memory_mb * 1024 * 1024
        if cpus is not None:
            args['cpus'] = cpus
        self.call(c.id, 'update', args)
        return True

    def get_archive(self, ref, path, limit=None):
        """A tar of ``path`` in a running container (like docker cp).

        The caller gets it whole (Zun's RPC returns bytes), so it is read
        up to ``limit`` bytes and no further: past that the archiving
        process is killed and the request refused.

        :param limit: most bytes (default ``[kata] archive_max_bytes``).
        :returns: (tar bytes, stat dict: name, size, mode, mtime,
                  linkTarget)
        :raises: NotFound, Conflict, ImageLimitExceeded (over ``limit``)
        """
        limit = CONF.kata.archive_max_bytes if limit is None else limit
        c, client = self._running_client(ref)
        with client:
            result = self._process_call(client, 'archive_get',
                                        {'path': path})
            handle = result['proc']
            out, err, code = client.exchange(
                handle, None, limit, _ERR_LIMIT, _ARCHIVE_TIMEOUT,
                stop_over=True)
            if code is None:
                try:
                    client.call('signal', {'proc': handle, 'signal': 9})
                except exception.KataZunException:
                    pass       # it may have ended meanwhile
                raise exception.ImageLimitExceeded(
                    reason='the archive of %s is larger than %d bytes '
                    '([kata] archive_max_bytes)' % (path, limit))
        if code != 0:
            raise exception.NotFound(what='%s in %s: %s' % (
                path, c.id[:12], _guest_text(err)))
        return out, _clean_stat(result.get('stat'))

    def put_archive(self, ref, path, data):
        """Extract the tar ``data`` under directory ``path``.

        ``data`` goes to the shim in bounded chunks while the process's
        output is read, so neither side can stall the other.

        :raises: NotFound, Conflict, InvalidInput (bad archive)
        """
        c, client = self._running_client(ref)
        with client:
            result = self._process_call(client, 'archive_put',
                                        {'path': path})
            _out, err, code = client.exchange(
                result['proc'], data, _ERR_LIMIT, _ERR_LIMIT,
                _ARCHIVE_TIMEOUT)
        if code != 0:
            raise exception.InvalidInput(reason='cannot extract into %s: '
                                         '%s' % (path, _guest_text(err)))

    @staticmethod
    def _process_call(client, op, args):
        try:
            return client.call(op, args,
                               timeout=CONF.kata_agent.request_timeout)
        except exception.ShimError as exc:
            if 'no such file' in str(exc) or 'not a directory' in str(exc):
                raise exception.NotFound(what=str(exc))
            raise

    def remove(self, ref, force=False):
        """Delete a container and everything it owns.

        :raises: Conflict when it runs and ``force`` is not set.
        """
        c = self.get(ref)
        self._refuse_member(c, 'remove')
        # A start in flight has a VM booting that no record would own
        # once the record is gone: rm -f waits for it (bounded by the
        # start's own deadline), then stops what it started.
        wait = CONF.kata.shim_start_timeout + 30 if force else 0
        with recordlock.held(c.dir, c.id, 'removed', wait=wait):
            return self._remove_locked(self.get(c.id), force)

    def _remove_locked(self, c, force):
        faultpoint.reached('rm')
        if c.shim_alive and not force and c.state.get('status') == EXITED:
            # It has exited and said so; its shim only tears the sandbox
            # down (the VM powers off: slow on a loaded host, longer than
            # stop waits). rm after stop works, as with Docker: wait for
            # the teardown rather than call an exited container running
            # (the soak met it).
            self._wait_shim_gone(c, timeout=SHIM_TEARDOWN_WAIT)
            c = self.get(c.id)
            if c.shim_alive:
                raise exception.Conflict(
                    reason='container %s has exited but its sandbox is '
                    'still shutting down after %d s: try again or use '
                    'force' % (c.id[:12], SHIM_TEARDOWN_WAIT))
        if c.shim_alive:
            if not force:
                raise exception.Conflict(
                    reason='container %s is %s: stop it first or use '
                    'force' % (c.id[:12], c.status))
            try:
                self.stop(c.id, timeout=0)
            except exception.KataZunException as exc:
                LOG.warning('stopping %s before removal: %s', c.id, exc)
                pid = c.state.get('shim_pid')
                if _pid_is_shim(pid, c.id):
                    os.kill(pid, 9)
            self._wait_shim_gone(c)
        faultpoint.reached('rm-cleanup')
        self._wait_vm_gone(c)
        self._unplug_network(c, force)
        self._cleanup_sandbox(c)
        shutil.rmtree(self._run_dir(c.id), ignore_errors=True)
        shutil.rmtree(c.dir, ignore_errors=True)
        self._event('destroy', c)
        return c

    def logs(self, ref, stdout=True, stderr=True, since=None, tail=None,
             max_bytes=None):
        """:returns: (container, records) from its log file; with
            ``max_bytes``, (container, (records, truncated)) (see
            :func:`kata_zun.shim.logs.read`).
        """
        c = self.get(ref)
        return c, logs.read(os.path.join(c.dir, 'container.log'),
                            stdout=stdout, stderr=stderr, since=since,
                            tail=tail, max_bytes=max_bytes)

    def commit(self, ref, repo_tag=None, changes=None, comment=None,
               progress=None):
        """Commit a container's filesystem as a new image (see
        :mod:`kata_zun.runtime.commit`).

        :returns: the new image's record.
        """
        from kata_zun.runtime import commit as commit_mod
        record = commit_mod.commit(self, ref, repo_tag,
                                   changes=changes, comment=comment,
                                   progress=progress)
        c = self.get(ref)
        self._event('commit', c, comment=comment,
                    imageID=record.id)
        return record

    def image_users(self, image_id):
        return [c.id for c in self.list()
                if c.config['image']['id'] == image_id]

    # ------------------------------------------------ volumes (issue 11)
    @property
    def volumes(self):
        """:returns: the host's
            :class:`kata_zun.volume.store.VolumeStore`.
        """
        from kata_zun.volume import store
        return store.VolumeStore(os.path.join(self.state_path, 'volumes'))

    def volume_users(self, name):
        """:returns: ids of the containers (any state) using volume
            ``name``.
        """
        from kata_zun.volume import devices as volume_devices
        return volume_devices.users(self.list(), name)

    def rebind_volumes(self, ref, current):
        """Point a stopped container's volumes at their devices of now.

        The Zun driver attaches a Cinder volume before create and again
        after zun-compute or the host restarts; the device may get
        another name (``/dev/rbd1`` becomes ``/dev/rbd0``). Volumes the
        record holds with a ``ref`` are matched with ``current``; a live
        VM keeps what it has.

        :param ref: container reference.
        :param current: ``{ref: volume request}`` of the volumes attached
            now (:mod:`kata_zun.volume.spec` requests with ``ref``).
        :returns: the :class:`Container`.
        :raises: ContainerNotFound; Conflict when a volume of the record
            is no longer attached (its device may since belong to
            another volume: never boot with it).
        """
        from kata_zun.volume import devices as volume_devices
        lock = self._lock()
        try:
            c = self.get(ref)
            if c.status in LIVE:
                return c
            config = copy.deepcopy(c.config)
            changed = False
            for entry in config.get('volumes') or ():
                key = entry.get('ref')
                if key is None:
                    continue
                now = current.get(key)
                if now is None or now['target'] != entry['target'] or \
                        now['type'] != entry['type']:
                    raise exception.Conflict(
                        'the volume at %s (%s) is no longer attached to '
                        'this container' % (entry['target'], key))
                if (now['source'], now['readonly']) == (
                        entry['source'], entry['readonly']):
                    continue
                fresh = volume_devices.resolve([now], self.volumes)[0]
                for field in ('source', 'readonly', 'disk', 'dir'):
                    if field in fresh:
                        entry[field] = fresh[field]
                changed = True
            if changed:
                config['agent_spec']['volumes'] = \
                    volume_devices.agent_specs(config['volumes'])
                fileutils.write_json(os.path.join(
                    self.containers_dir, c.id, 'config.json'), config)
                LOG.info('Container %s: volumes now on %s', c.id[:12],
                         [v.get('disk') or v.get('dir')
                          for v in config['volumes']])
        finally:
            os.close(lock)
        return self._load(c.id)

    def remove_volume(self, name):
        """Delete a named volume that no container uses.

        :raises: NotFound, Conflict
        """
        lock = self._lock()
        try:
            self.volumes.remove(name, self.volume_users)
        finally:
            os.close(lock)


def _guest_text(data):
    """Bounded, printable text of what a guest process wrote."""
    from kata_zun.shim import guestdata
    return guestdata.printable(bytes(data).strip(), _ERR_LIMIT)


def _record_error(reason):
    if reason is None:
        return None
    from kata_zun.shim import guestdata
    return guestdata.printable(reason, _RECORD_ERROR_MAX)


def _clean_stat(stat):
    """Type-check and bound the guest's stat of an archived path.

    It goes to Zun's API as it is.
    """
    stat = stat if isinstance(stat, dict) else {}

    def number(key):
        value = stat.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if ok and 0 <= value < 2 ** 63 else 0

    def text(key):
        value = stat.get(key)
        return value[:4096] if isinstance(value, str) else ''
    return {'name': text('name'), 'size': int(number('size')),
            'mode': int(number('mode')), 'mtime': number('mtime'),
            'linkTarget': text('linkTarget')}


def _merge_env(base, extra):
    merged = {}
    order = []
    for item in list(base) + list(extra):
        key = item.partition('=')[0]
        if key not in merged:
            order.append(key)
        merged[key] = item
    return [merged[k] for k in order]
