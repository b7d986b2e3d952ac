"""Pods: one VM, several containers (Zun's capsules, podman's pods).

The API the Zun capsule driver and the CLI call, on
:class:`kata_zun.runtime.manager.Runtime` (this module is its mixin)::

    rt.create_pod(name=None, containers=[ContainerSpec...],
                  init_containers=[ContainerSpec...], hostname=None,
                  network=None, ports=(), volumes=(),
                  restart_policy=None, labels=None, pod_id=None) -> Pod
    rt.add_to_pod(ref, ContainerSpec, init=False) -> Pod  (not running)
    rt.start_pod(ref, wait=False) -> Pod
    rt.stop_pod(ref, timeout=None) -> Pod
    rt.remove_pod(ref, force=False) -> Pod
    rt.get_pod(ref) -> Pod          (id, id prefix or name)
    rt.list_pods() -> [Pod]

Specs are :class:`kata_zun.runtime.podspec.ContainerSpec` (Zun's
capsule template reads into them with
:func:`kata_zun.runtime.podspec.from_template`). ``volumes`` are
``{'name', 'type': 'volume'|'block'|'bind', 'source', 'size' (bytes, a
named volume made for the pod), 'owned' (removed with the pod)}``;
containers mount them by name (``volume_mounts``), several containers
the same volume. ``network`` and ``ports`` are those of
:meth:`Runtime.create`: the pod has one network identity.
``restart_policy`` is 'always' (Zun's default for capsules),
'on-failure' or 'no', for each regular container.

Records: the pod in ``<state_path>/pods/<id>/`` (config.json written
last, state.json by its shim, shim.log, console.log, network.json);
each container is an ordinary container record (``containers/<id>/``,
its own writable layer ``rw.img``, ``container.log`` and state.json
written by the pod's shim) whose config names its pod (``pod``). So the
per-container operations are the existing Runtime methods taking the
container's ref: ``logs``, ``exec_client``, ``call(ref, 'ps'|'stats')``,
``get_archive``/``put_archive``, ``kill``, ``wait``; they reach the
pod's shim, which routes them to the container (see
:class:`kata_zun.shim.pod.PodShim`). ``start``, ``stop``, ``remove`` of a
member container are refused (the pod is the unit).

:attr:`Pod.status` follows Kubernetes' phases
(:func:`kata_zun.runtime.podspec.phase`); :meth:`Pod.to_dict` has each
container's status, exit code, error, start and finish time.

Crash safety: create writes every member record, then the pod's
config.json, under the records lock; a pod directory without config.json
(or a member whose pod has none) is swept by the next create or listing.
rm marks the pod ``removing`` first and any later rm or sweep finishes
it. The shim stops its VM when its starter dies during the boot.
"""

import os
import re
import secrets
import shutil
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils
from kata_zun.runtime import layer
from kata_zun.runtime import liveness
from kata_zun.runtime import podrecord
from kata_zun.runtime import podspec
from kata_zun.runtime import record
from kata_zun.runtime import validate
from kata_zun.shim import client as shim_client

LOG = logging.getLogger(__name__)
CONF = conf.CONF

REMOVING_MARK = podrecord.REMOVING_MARK
Pod = podrecord.Pod
PodMemberClient = podrecord.PodMemberClient
# Where a pod volume is "mounted" in its resolved record: each container
# gets its own target; this one only passes the volume checks.
_VOLUME_PLACEHOLDER = '/kz-pod-volume-%d'
_POD_ID_RE = re.compile(r'^[0-9a-f]{32,64}\Z')


class PodMixin(object):
    """Pods on :class:`kata_zun.runtime.manager.Runtime`."""

    @property
    def pods_dir(self):
        path = os.path.join(self.state_path, 'pods')
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _pod_dir(self, pod_id):
        return os.path.join(self.pods_dir, pod_id)

    def _pod_exists(self, pod_id):
        return bool(pod_id) and os.path.exists(
            os.path.join(self._pod_dir(pod_id), 'config.json'))

    # ------------------------------------------------------------ reading
    def _load_pod(self, pod_id):
        directory = self._pod_dir(pod_id)
        try:
            config = fileutils.read_json(os.path.join(directory,
                                                      'config.json'))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            config = {'id': pod_id, 'name': 'broken-' + pod_id[:12],
                      'created': 0.0, 'sandbox': {'hostname': ''},
                      'restart_policy': {'name': 'no'}, 'vm': {},
                      'containers': [], 'init_containers': []}
            return Pod(directory, config, {}, False, [], [],
                       record_error='damaged pod record: %s' % exc)
        try:
            state = fileutils.read_json(os.path.join(directory,
                                                     'state.json'))
        except (OSError, ValueError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        alive = liveness.pid_is_shim(state.get('shim_pid'), pod_id)
        members = {}
        for cid in config.get('init_containers', []) + config.get(
                'containers', []):
            c = self._load(cid) if _POD_ID_RE.match(str(cid)) else None
            if c is None:
                c = record.Container.unreadable_record(
                    os.path.join(self.containers_dir, str(cid)), str(cid),
                    'the record of a container of pod %s is missing' %
                    config['name'])
                c.config['pod_member'] = str(cid)[:12]
            members[cid] = c
        return Pod(directory, config, state, alive,
                   [members[i] for i in config.get('init_containers', [])],
                   [members[i] for i in config.get('containers', [])])

    def list_pods(self):
        """:returns: every pod on this host, oldest first."""
        out = []
        for pod_id in os.listdir(self.pods_dir):
            if not _POD_ID_RE.match(pod_id):
                continue
            pod = self._load_pod(pod_id)
            if pod is not None:
                out.append(pod)
        return sorted(out, key=lambda p: p.config['created'])

    def get_pod(self, ref):
        """Find a pod by id, unique id prefix or name.

        :raises: NotFound, InvalidInput (ambiguous)
        """
        if not ref or '/' in ref or ref.startswith('.'):
            raise exception.NotFound(what='pod %s' % ref)
        if _POD_ID_RE.match(ref):
            pod = self._load_pod(ref)
            if pod is not None:
                return pod
        pods = self.list_pods()
        named = [p for p in pods if p.name == ref]
        if named:
            return named[0]
        matches = [p for p in pods if p.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise exception.InvalidInput(reason='%r matches several pods' %
                                         ref)
        raise exception.NotFound(what='pod %s' % ref)

    # ------------------------------------------------------------- create
    def create_pod(self, containers, init_containers=(), name=None,
                   hostname=None, network=None, ports=(), volumes=(),
                   restart_policy=None, labels=None, pod_id=None):
        """Create a pod: its record and one record per container, each
        with its own writable layer; nothing boots until
        :meth:`start_pod`.

        :param containers: list of
            :class:`kata_zun.runtime.podspec.ContainerSpec`.
        :param init_containers: idem, run in order to completion before
            ``containers`` start.
        :param name: the pod's name (default ``kz-pod-<id>``).
        :param hostname: every container's hostname (default: the name).
        :param network: as :meth:`Runtime.create` ('none', 'bridge'...).
        :param ports: published ports, added to those of the specs.
        :param volumes: the pod's volumes (see the module).
        :param restart_policy: 'always' (default), 'on-failure', 'no'.
        :param pod_id: use this id (32 to 64 hex) instead of a random one.
        :returns: the :class:`Pod`.
        :raises: InvalidInput, ImageNotFound, Conflict (name in use, host
            port taken), NetworkError
        """
        from kata_zun import network as network_mod
        from kata_zun.volume import devices as volume_devices
        from kata_zun.volume import spec as volume_spec
        containers = list(containers)
        init_containers = list(init_containers)
        pod_id = pod_id or secrets.token_hex(32)
        if not _POD_ID_RE.match(pod_id):
            raise exception.InvalidInput(reason='pod id must be 32 to 64 '
                                         'lowercase hex digits')
        name = name or 'kz-pod-' + pod_id[:12]
        if not record.NAME_RE.match(name):
            raise exception.InvalidInput(reason='invalid pod name %r' %
                                         name)
        hostname = hostname or re.sub(r'[^A-Za-z0-9.-]', '-', name[:63])
        if not validate.HOSTNAME_RE.match(hostname):
            raise exception.InvalidInput(reason='invalid hostname %r' %
                                         hostname)
        policy = podspec.RESTART_POLICIES.get(restart_policy or 'always')
        if policy is None:
            raise exception.InvalidInput(reason='invalid restart policy '
                                         '%r (always, on-failure, no)' %
                                         (restart_policy,))
        volumes = [dict(v) for v in volumes or ()]
        names = [v.get('name') for v in volumes]
        if len(set(names)) != len(names):
            raise exception.InvalidInput(reason='two pod volumes have the '
                                         'same name')
        podspec.check_containers(containers, init_containers, set(names),
                                 need_one=False)
        validate.check_sizes('labels', ['%s=%s' % kv for kv in
                                        (labels or {}).items()],
                             validate.MAX_LABEL_BYTES)
        all_ports = list(ports)
        for spec in containers:
            all_ports += spec.ports
        net_request = network_mod.make_request(network or 'none',
                                               all_ports)
        network_mod.validate(self.state_path, net_request,
                             self._record_exists)
        requests = []
        for i, vol in enumerate(volumes):
            kind = vol.get('type', 'volume')
            requests.append(volume_spec.make(kind, vol.get('source'),
                                             _VOLUME_PLACEHOLDER % i,
                                             vol.get('readonly', False)))
        from kata_zun.guest import builder
        builder.find()
        vcpus, vm_memory = podspec.vm_size(
            containers, init_containers,
            CONF.kata_hypervisor.memory_overhead_mb,
            CONF.kata_hypervisor.default_vcpus,
            CONF.kata_hypervisor.default_memory_mb, validate.host_cpus())
        host_mb = validate.host_memory_mb()
        if host_mb and vm_memory > host_mb:
            raise exception.InvalidInput(
                reason='a VM of %d MiB does not fit in this host\'s %d MiB '
                'of memory' % (vm_memory, host_mb))
        # Images and commands are checked before anything is made.
        members = []
        for index, (spec, init) in enumerate(
                [(s, True) for s in init_containers] +
                [(s, False) for s in containers]):
            members.append((spec.cid or secrets.token_hex(32), spec, init,
                            index, self._member_config(spec, hostname)))
        ids = [m[0] for m in members]
        if len(set(ids)) != len(ids) or pod_id in ids:
            raise exception.InvalidInput(reason='two containers of the pod '
                                         'have the same id')
        config = {
            'id': pod_id, 'name': name, 'created': time.time(),
            'labels': labels or {},
            'vm': {'vcpus': vcpus, 'memory_mb': vm_memory},
            'sandbox': {'hostname': hostname}, 'network': net_request,
            'restart_policy': {'name': policy, 'max_retries': 0},
            'init_containers': [m[0] for m in members if m[2]],
            'containers': [m[0] for m in members if not m[2]],
        }
        lock = self._lock()
        made_volumes = []
        written = []
        made_dir = False
        directory = self._pod_dir(pod_id)
        try:
            self._sweep_incomplete()
            self._check_names_free(name, [m[1].name for m in members])
            for vol in volumes:
                if vol.get('type', 'volume') == 'volume':
                    try:
                        self.volumes.get(vol['source'])
                    except exception.NotFound:
                        self.volumes.create(vol['source'], vol.get('size'))
                        made_volumes.append(vol['source'])
            resolved = volume_devices.resolve(requests, self.volumes)
            for vol, entry in zip(volumes, resolved):
                entry['name'] = vol['name']
                # Removed with the pod only if made for it: never a
                # volume that existed before.
                entry['owned'] = bool(vol.get('owned')) and \
                    entry['source'] in made_volumes
            config['volumes'] = resolved
            if os.path.lexists(directory):
                raise exception.Conflict(reason='a pod with id %s exists' %
                                         pod_id[:12])
            os.mkdir(directory, 0o700)
            made_dir = True
            fileutils.write_json(os.path.join(directory, 'state.json'),
                                 {'status': 'created'})
            for cid, *_rest in members:
                if os.path.lexists(os.path.join(self.containers_dir, cid)):
                    raise exception.Conflict(reason='a container with id '
                                             '%s exists' % cid[:12])
            for cid, spec, init, index, member in members:
                # Checked free above, under the lock: ours from here.
                written.append(cid)
                self._write_member(cid, member, config, spec, init, index)
                faultpoint.reached('pod-create')
            # config.json last: without it the pod and its members are
            # swept.
            fileutils.write_json(os.path.join(directory, 'config.json'),
                                 config)
        except BaseException:
            for cid in written:
                shutil.rmtree(os.path.join(self.containers_dir, cid),
                              ignore_errors=True)
            if made_dir:
                shutil.rmtree(directory, ignore_errors=True)
            for vol in made_volumes:
                try:
                    self.volumes.remove(vol, lambda n: [])
                except exception.KataZunException as exc:
                    LOG.warning('removing volume %s: %s', vol, exc)
            raise
        finally:
            os.close(lock)
        return self._load_pod(pod_id)

    def _check_names_free(self, pod_name, member_names):
        for pod in self.list_pods():
            if pod.name == pod_name:
                raise exception.Conflict(reason='the pod name %s is in use '
                                         'by %s' % (pod_name, pod.id[:12]))
        wanted = set('%s-%s' % (pod_name, m) for m in member_names)
        wanted.add(pod_name)
        for c in self.list():
            if c.name in wanted:
                raise exception.ContainerNameInUse(name=c.name,
                                                   id=c.id[:12])

    def _member_config(self, spec, hostname):
        """The container record of one member, without ids, pod, disks
        and volumes (:meth:`_write_member` adds them).

        :raises: InvalidInput, ImageNotFound
        """
        image = self.images.get(spec.image)
        image_config = image.config or {}
        for item in spec.env:
            if not validate.ENV_RE.match(item):
                raise exception.InvalidInput(
                    reason='container %s: invalid environment entry %r' %
                    (spec.name, item))
        validate.check_sizes('environment', spec.env, validate.MAX_ENV_BYTES)
        validate.check_sizes('command', list(spec.command or ()) +
                             list(spec.args or ()), validate.MAX_ARGV_BYTES)
        try:
            argv = validate.command_line(image_config, spec.args,
                                         spec.command)
        except exception.InvalidInput:
            raise exception.InvalidInput(reason='container %s: no command '
                                         'specified' % spec.name)
        workdir = spec.workdir or image_config.get('WorkingDir') or '/'
        if not workdir.startswith('/'):
            raise exception.InvalidInput(reason='container %s: working '
                                         'directory must be absolute' %
                                         spec.name)
        return {
            'created': time.time(),
            'image': {'id': image.id, 'name': spec.image,
                      'block_image': image.block_image,
                      'block_fs': image.block_fs},
            'memory_mb': spec.memory_mb, 'cpus': spec.cpus,
            'disk_mb': layer.check_size(None, self.containers_dir),
            'auto_remove': False, 'labels': {},
            'restart_policy': {'name': 'no', 'max_retries': 0},
            'healthcheck': None,
            'sandbox': {'hostname': hostname},
            'network': None,
            'agent_spec': {
                'argv': argv,
                'env': validate.merge_env(image_config.get('Env') or [],
                                          spec.env),
                'workdir': workdir,
                'user': image_config.get('User') or '',
                'tty': spec.tty, 'stdin': spec.stdin,
                'hostname': hostname, 'dns': [],
                'image_fs': image.block_fs,
                'memory_bytes': (spec.memory_mb * 1024 * 1024
                                 if spec.memory_mb else None),
                'cpus': spec.cpus, 'privileged': False,
                'pids_limit': CONF.kata.pids_limit},
        }

    def _write_member(self, cid, member, pod_config, spec, init, index):
        """Write one member's record (its writable layer, then its
        config.json); call with the records lock held.
        """
        from kata_zun.volume import devices as volume_devices
        by_name = {v['name']: v for v in pod_config['volumes']}
        entries = []
        for mount in spec.volume_mounts:
            entry = dict(by_name[mount['name']], target=mount['target'])
            entry['readonly'] = entry['readonly'] or mount['readonly']
            entries.append(entry)
        config = dict(member)
        config.update({
            'id': cid, 'name': '%s-%s' % (pod_config['name'], spec.name),
            'pod': {'id': pod_config['id'], 'name': pod_config['name'],
                    'init': init, 'index': index},
            'pod_member': spec.name,
            'vm': dict(pod_config['vm']), 'volumes': entries})
        config['agent_spec'] = dict(member['agent_spec'], id=cid,
                                    image_serial='kz-img%d' % index,
                                    layer_serial='kz-rw%d' % index)
        from kata_zun.volume import spec as volume_spec
        for entry in entries:
            volume_spec.check_target(entry['target'])
        config['agent_spec']['volumes'] = volume_devices.agent_specs(
            entries)
        directory = os.path.join(self.containers_dir, cid)
        os.mkdir(directory, 0o700)
        layer.make(os.path.join(directory, 'rw.img'), config['disk_mb'])
        fileutils.write_json(os.path.join(directory, 'state.json'),
                             {'status': 'created'})
        fileutils.write_json(os.path.join(directory, 'config.json'), config)

    def add_to_pod(self, ref, spec, init=False):
        """Add a container to a pod that does not run (``kata-zun run
        --pod``): it starts with the pod.

        :returns: the :class:`Pod`.
        :raises: Conflict (the pod runs), InvalidInput, ImageNotFound
        """
        lock = self._lock()
        try:
            pod = self.get_pod(ref)
            if pod.shim_alive or pod.removing:
                raise exception.Conflict(reason='pod %s is running: stop it '
                                         'to add a container' % pod.name)
            config = pod.config
            names = set(c.config.get('pod_member') for c in
                        pod.init_containers + pod.containers)
            if spec.name is None:
                spec.name = 'c%d' % len(names)
            specs = [podspec.ContainerSpec(name=n, image='kz')
                     for n in names]
            podspec.check_containers(
                specs + ([] if init else [spec]), [spec] if init else [],
                set(v['name'] for v in config.get('volumes') or ()),
                need_one=False)
            if spec.ports:
                raise exception.InvalidInput(reason='a container added to '
                                             'a pod cannot publish ports '
                                             '(the pod\'s network is made)')
            full_name = '%s-%s' % (pod.name, spec.name)
            for c in self.list():
                if c.name == full_name:
                    raise exception.ContainerNameInUse(name=c.name,
                                                       id=c.id[:12])
            member = self._member_config(spec, config['sandbox']['hostname'])
            cid = secrets.token_hex(32)
            # Its disks' serials: one index per member, never reused.
            self._write_member(cid, member, config, spec, init, len(names))
            key = 'init_containers' if init else 'containers'
            config[key] = config[key] + [cid]
            # The VM is sized again for all its containers.

            def specs_of(members):
                return [podspec.ContainerSpec(
                    c.config.get('pod_member'), 'kz',
                    cpus=c.config.get('cpus'),
                    memory_mb=c.config.get('memory_mb')) for c in members]
            regular = specs_of(pod.containers) + ([] if init else [spec])
            inits = specs_of(pod.init_containers) + ([spec] if init else [])
            vcpus, memory_mb = podspec.vm_size(
                regular, inits, CONF.kata_hypervisor.memory_overhead_mb,
                CONF.kata_hypervisor.default_vcpus,
                CONF.kata_hypervisor.default_memory_mb, validate.host_cpus())
            config['vm'] = {'vcpus': vcpus, 'memory_mb': memory_mb}
            try:
                fileutils.write_json(os.path.join(pod.dir, 'config.json'),
                                     config)
            except BaseException:
                shutil.rmtree(os.path.join(self.containers_dir, cid),
                              ignore_errors=True)
                raise
        finally:
            os.close(lock)
        return self._load_pod(pod.id)

    # ------------------------------------------------------------- start
    def start_pod(self, ref, wait=False, timeout=None):
        """Boot the pod's VM and create its containers in it; its shim
        then runs the init containers in order and starts the others.

        :param wait: return once the pod left ``Pending`` and every
            regular container started (init containers done), or the
            pod failed or ended.
        :param timeout: seconds to wait (None: ``[kata]
            shim_start_timeout`` per init container and more).
        :returns: the :class:`Pod`.
        :raises: Conflict if it runs, ShimError if the VM failed.
        """
        pod = self.get_pod(ref)
        if pod.removing:
            raise exception.Conflict(reason='pod %s is being removed' %
                                     pod.name)
        if pod.shim_alive:
            raise exception.Conflict(reason='pod %s is already running' %
                                     pod.name)
        if not pod.containers:
            raise exception.InvalidInput(reason='pod %s has no container '
                                         'to run (add one with run --pod)'
                                         % pod.name)
        fileutils.write_json(os.path.join(pod.dir, 'state.json'),
                             {'status': 'created'})
        for c in pod.init_containers + pod.containers:
            fileutils.write_json(os.path.join(c.dir, 'state.json'),
                                 {'status': 'created'})
        self._cleanup_pod_sandbox(pod)
        run_dir = self._run_dir(pod.id)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        from kata_zun import network
        network.plug(self.state_path, pod.dir, pod.id,
                     pod.config['sandbox']['hostname'],
                     pod.config['network'], self._record_exists)
        try:
            self._spawn_shim(pod, run_dir, pod=True)
        except BaseException:
            now = self._load_pod(pod.id)
            if now is None or not now.shim_alive:
                self._wait_vm_gone(pod)
                self._cleanup_pod_sandbox(pod)
            raise
        faultpoint.reached('pod-start-spawned')
        if wait:
            deadline = time.monotonic() + (
                timeout if timeout is not None else
                CONF.kata.shim_start_timeout * (1 + len(
                    pod.init_containers)))
            while time.monotonic() < deadline:
                pod = self._load_pod(pod.id)
                if not pod.shim_alive or pod.status == podspec.FAILED or (
                        pod.status != podspec.PENDING and all(
                            c.status != 'created' for c in
                            pod.containers)):
                    break
                time.sleep(0.1)
        return self._load_pod(pod.id)

    def _cleanup_pod_sandbox(self, pod):
        from kata_zun.hypervisor import base as hv_base
        from kata_zun.jail import launch
        launch.cleanup(hv_base.vm_name(pod.id))

    # -------------------------------------------------------------- stop
    def stop_pod(self, ref, timeout=None):
        """Stop every container (SIGTERM, SIGKILL after ``timeout``)
        and power the VM off.

        :returns: the :class:`Pod`.
        """
        pod = self.get_pod(ref)
        if not pod.shim_alive:
            return pod
        timeout = CONF.kata.stop_timeout if timeout is None else timeout
        with shim_client.ShimClient(
                os.path.join(self._run_dir(pod.id), 'shim.sock'),
                timeout=10.0) as client:
            client.call('stop', {'timeout': timeout}, timeout=timeout + 30)
        self._wait_shim_gone(pod)
        return self._load_pod(pod.id)

    # ------------------------------------------------------------ remove
    def remove_pod(self, ref, force=False):
        """Delete a pod: its VM, shim, containers' records and layers,
        network, and the volumes made for it.

        :raises: Conflict when it runs and ``force`` is not set.
        """
        pod = self.get_pod(ref)
        if pod.shim_alive and not force:
            raise exception.Conflict(reason='pod %s is %s: stop it first '
                                     'or use force' % (pod.name,
                                                       pod.status))
        fileutils.write_atomic(os.path.join(pod.dir, REMOVING_MARK),
                               '%d\n' % os.getpid(), 0o600)
        self._finish_removal(pod)
        return pod

    def _finish_removal(self, pod):
        """Everything a pod marked ``removing`` still holds, removed in
        an order a crash can resume: the VM, the network, the members,
        the volumes made for it, the record last.
        """
        if pod.shim_alive:
            try:
                self.stop_pod(pod.id, timeout=0)
            except exception.KataZunException as exc:
                LOG.warning('stopping pod %s before removal: %s', pod.id,
                            exc)
            pid = pod.state.get('shim_pid')
            if liveness.pid_is_shim(pid, pod.id):
                os.kill(pid, 9)
            self._wait_shim_gone(pod)
        faultpoint.reached('pod-rm-cleanup')
        self._wait_vm_gone(pod)
        from kata_zun import network
        network.unplug(self.state_path, pod.id)
        self._cleanup_pod_sandbox(pod)
        shutil.rmtree(self._run_dir(pod.id), ignore_errors=True)
        for cid in pod.config.get('init_containers', []) + \
                pod.config.get('containers', []):
            if _POD_ID_RE.match(str(cid)):
                shutil.rmtree(os.path.join(self.containers_dir, cid),
                              ignore_errors=True)
        for vol in pod.config.get('volumes') or ():
            if vol.get('owned') and vol['type'] == 'volume':
                lock = self._lock()
                try:
                    self.volumes.remove(vol['source'], self.volume_users)
                except exception.NotFound:
                    pass
                except exception.KataZunException as exc:
                    LOG.warning('pod %s: volume %s stays: %s', pod.name,
                                vol['source'], exc)
                finally:
                    os.close(lock)
        os.unlink(os.path.join(pod.dir, 'config.json'))
        shutil.rmtree(pod.dir, ignore_errors=True)

    # ------------------------------------------------------------- sweep
    def _sweep_pods(self):
        """Remove what a killed create left (a pod without config.json,
        members of no pod). Call with the records lock held.
        """
        for pod_id in os.listdir(self.pods_dir):
            if not _POD_ID_RE.match(pod_id):
                continue
            directory = self._pod_dir(pod_id)
            if not os.path.exists(os.path.join(directory, 'config.json')):
                LOG.warning('removing the incomplete pod %s', pod_id)
                shutil.rmtree(directory, ignore_errors=True)
        for cid in os.listdir(self.containers_dir):
            if not _POD_ID_RE.match(cid):
                continue
            try:
                config = fileutils.read_json(os.path.join(
                    self.containers_dir, cid, 'config.json'))
            except (OSError, ValueError):
                continue
            pod = config.get('pod') if isinstance(config, dict) else None
            if not isinstance(pod, dict):
                continue
            pod_id = str(pod.get('id'))
            if self._pod_exists(pod_id):
                # Added by a run --pod killed before the pod named it?
                try:
                    pod_config = fileutils.read_json(os.path.join(
                        self._pod_dir(pod_id), 'config.json'))
                except (OSError, ValueError):
                    continue               # shown damaged, never guessed
                if cid in (pod_config.get('init_containers', []) +
                           pod_config.get('containers', [])):
                    continue
            LOG.warning('removing container %s of no pod', cid)
            shutil.rmtree(os.path.join(self.containers_dir, cid),
                          ignore_errors=True)

    def resume_removals(self):
        """Finish the removals a killed ``pod rm`` left.

        :returns: the names of the pods removed.
        """
        done = []
        for pod in self.list_pods():
            if pod.removing:
                self._finish_removal(pod)
                done.append(pod.name)
        return done

    def pod_of(self, c):
        """:returns: the pod id of container record ``c``, or None."""
        pod = c.config.get('pod')
        return pod.get('id') if isinstance(pod, dict) else None

    def _refuse_member(self, c, what):
        """Refuse ``what`` on one container of a pod: the pod is the
        unit that boots, stops and goes away.

        :raises: Conflict
        """
        pod_id = self.pod_of(c)
        if pod_id and self._pod_exists(pod_id):
            raise exception.Conflict(
                reason='container %s belongs to pod %s: %s the pod' % (
                    c.name, c.config['pod'].get('name'), what))

    def _member_client(self, c, timeout=10.0):
        return PodMemberClient(
            os.path.join(self._run_dir(self.pod_of(c)), 'shim.sock'), c.id,
            timeout=timeout)
