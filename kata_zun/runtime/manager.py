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

This module holds the records lock and the lifecycle (create, start,
stop, rm...); the rest of :class:`Runtime` lives beside it, one seam per
module:

    record       a record read as untrusted data, :class:`Container`
    liveness     is a recorded shim or QEMU still that process?
    validate     what a user may ask of a container, checked up front
    shimlaunch   starting a shim and waiting for its VM
    netops       networks plugged, released, changed live (a mixin)
    archiveops   files into and out of a running container (a mixin)
    volumeops    named volumes and a record's volume devices (a mixin)
    pods         pods: one VM, several containers (a mixin)

This module knows nothing about Zun.
"""

import math
import os
import secrets
import select
import shutil
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import archiveops
from kata_zun.runtime import events
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.runtime import layer
from kata_zun.runtime import liveness
from kata_zun.runtime import netops
from kata_zun.runtime import pods
from kata_zun.runtime import record
from kata_zun.runtime import recordlock
from kata_zun.runtime import shimlaunch
from kata_zun.runtime import validate
from kata_zun.runtime import volumeops
from kata_zun.shim import client as shim_client
from kata_zun.shim import logs

LOG = logging.getLogger(__name__)
CONF = conf.CONF

IMAGE_SERIAL = 'kz-image'
LAYER_SERIAL = 'kz-rw'

# Seconds rm waits for the shim of an exited container to finish its
# teardown (it powers the VM off and frees the sandbox's resources).
SHIM_TEARDOWN_WAIT = 120


class Runtime(pods.PodMixin, netops.NetworkMixin, archiveops.ArchiveMixin,
              volumeops.VolumeMixin):
    """Entry point for everything that manages containers on this host
    (pods, networks, archives and volumes: see the mixins' modules).
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
        try:
            fileutils.poll_flock(fd, first=0.001)
        except BaseException:
            os.close(fd)
            raise
        return fd

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
            return record.Container.unreadable_record(directory, cid, exc)
        problem = record.check_config(config, cid)
        if problem:
            return record.Container.unreadable_record(directory, cid, problem)
        try:
            state = fileutils.read_json(os.path.join(directory,
                                                     'state.json'))
        except (OSError, ValueError) as exc:
            return record.Container.unreadable_record(directory, cid, exc)
        state, problem = record.clean_state(state)
        # A pod's containers share its shim.
        alive = liveness.pid_is_shim(
            state.get('shim_pid'), (config.get('pod') or {}).get('id') or cid)
        return record.Container(directory, config, state, alive,
                                record_error=record.record_error(problem))

    def list(self):
        """:returns: every container record on this host, oldest first
        (damaged ones too, with their error).
        """
        out = []
        for cid in os.listdir(self.containers_dir):
            if cid.startswith('.') or not record.ID_RE.match(cid):
                continue
            try:
                c = self._load(cid)
            except Exception as exc:       # never one record for all
                c = record.Container.unreadable_record(
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
        exact = self._load(ref) if record.ID_RE.match(ref) else None
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

    def _record_exists(self, cid):
        return os.path.exists(os.path.join(self.containers_dir, cid,
                                           'config.json')) or \
            self._pod_exists(cid)

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
        if not record.ID_RE.match(cid):
            raise exception.InvalidInput(reason='container id must be 32 '
                                         'to 64 lowercase hex digits')
        name = name or 'kz-' + cid[:12]
        if not record.NAME_RE.match(name):
            raise exception.InvalidInput(reason='invalid container name '
                                         '%r' % name)
        hostname = hostname or cid[:12]
        if not validate.HOSTNAME_RE.match(hostname):
            raise exception.InvalidInput(reason='invalid hostname %r' %
                                         hostname)
        validate.check_env(env)
        validate.check_limits(memory_mb, cpus)
        pinned = validate.cpuset_plan(cpuset_cpus, cpuset_mems)
        validate.check_sizes('environment', env, validate.MAX_ENV_BYTES)
        validate.check_sizes('command', list(command or ()) +
                             list(entrypoint or ()), validate.MAX_ARGV_BYTES)
        validate.check_sizes('labels', ['%s=%s' % kv for kv in
                                        (labels or {}).items()],
                             validate.MAX_LABEL_BYTES)
        if pids_limit is None:
            pids_limit = CONF.kata.pids_limit
        if not 0 <= pids_limit <= 4194304:
            raise exception.InvalidInput(reason='pids limit must be in '
                                         '[0, 4194304] (0: no limit)')
        disk_mb = layer.check_size(disk_mb, self.containers_dir)
        argv = validate.command_line(image.config or {}, command, entrypoint)
        image_env = list((image.config or {}).get('Env') or [])
        merged = validate.merge_env(image_env, list(env))
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
        host_mb = validate.host_memory_mb()
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
                                     {'status': record.CREATED})
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
            if cid.startswith('.') or not record.ID_RE.match(cid):
                continue
            directory = os.path.join(self.containers_dir, cid)
            if not os.path.exists(os.path.join(directory, 'config.json')):
                LOG.warning('removing the incomplete record %s (its '
                            'creator died)', cid)
                shutil.rmtree(directory, ignore_errors=True)
        self._sweep_pods()

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
        if c.status == record.CREATED and c.shim_alive:
            return self._start_booted(c, before_start)
        if c.status in record.LIVE or c.shim_alive:
            raise exception.Conflict(reason='container %s is already '
                                     'running' % c.id[:12])
        # A start by the user begins a new life: no exit code, no error,
        # and a restart count of its restart policy back at zero.
        fileutils.write_json(os.path.join(c.dir, 'state.json'),
                             {'status': record.CREATED})
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
                    now.status == record.CREATED:
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

    @staticmethod
    def _spawn_shim(c, run_dir, pod=False):
        shimlaunch.spawn(c, run_dir, pod)

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
                if time.monotonic() >= give_up or not liveness.pid_is_shim(
                        c.state.get('shim_pid'), c.id):
                    raise
                LOG.warning('%s; its process lives: asking again', exc)

    def _running_client(self, ref):
        c = self.get(ref)
        if c.status not in record.LIVE + (record.CREATED,) or not c.shim_alive:
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
            while liveness.pid_is_shim(pid, c.id):
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
        finds the :data:`kata_zun.runtime.record.RESTART_MARK` file and
        leaves it.

        :param timeout: seconds between SIGTERM and SIGKILL.
        :returns: (container, connected ShimClient) as :meth:`start`.
        :raises: ContainerNotFound, ShimError
        """
        c = self.get(ref)
        if c.shim_alive:
            mark = os.path.join(c.dir, record.RESTART_MARK)
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
        if not isinstance(name, str) or not record.NAME_RE.match(name):
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
        while ((liveness.pid_is_vm(pid, c.id) or
                liveness.vm_cgroup_busy(c.id)) and
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
        validate.check_env(env)
        c, client = self._running_client(ref)
        if c.status != record.RUNNING:
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
        validate.check_limits(memory_mb, cpus)
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
        if c.status not in (record.RUNNING, record.PAUSED):
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
        if c.shim_alive and not force and \
                c.state.get('status') == record.EXITED:
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
                if liveness.pid_is_shim(pid, c.id):
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
        image = commit_mod.commit(self, ref, repo_tag,
                                  changes=changes, comment=comment,
                                  progress=progress)
        c = self.get(ref)
        self._event('commit', c, comment=comment,
                    imageID=image.id)
        return image

    def image_users(self, image_id):
        return [c.id for c in self.list()
                if c.config['image']['id'] == image_id]
