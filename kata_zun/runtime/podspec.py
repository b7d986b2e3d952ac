"""What a pod is made of, checked before anything is made.

Pure functions (no disk, no VM): the pod engine
(:mod:`kata_zun.runtime.pods`) and the Zun capsule driver build a
:class:`ContainerSpec` list with them, size the VM with :func:`vm_size`
and derive a pod's status from its containers' with :func:`phase`.

:func:`from_template` reads Zun's capsule template (``kind: capsule``,
``spec.containers``, ``spec.initContainers``, ``spec.volumes``), the
same YAML ``openstack capsule create -f`` takes, strictly: an unknown
field, a duplicate name or a bad image is an error naming where it is.
"""

import math
import re

from kata_zun import exception

# Kubernetes-like pod phases.
PENDING = 'Pending'        # made, booting, or its init containers run
RUNNING = 'Running'        # its containers started, one at least lives
SUCCEEDED = 'Succeeded'    # every container exited 0, none restarts
FAILED = 'Failed'          # an init container failed, or all ended and
#                            one at least did not exit 0 (or was lost)
UNKNOWN = 'Unknown'        # its record cannot be read
STOPPED = 'Stopped'        # stopped by its user before it ended

RESTART_POLICIES = {'Always': 'always', 'OnFailure': 'on-failure',
                    'Never': 'no', 'always': 'always',
                    'on-failure': 'on-failure', 'no': 'no'}
# Containers (init ones included) in one pod: each is two disks of the
# VM, and a virtio-blk disk takes a PCI slot.
MAX_CONTAINERS = 16
# Memory of a container that sets no limit, for the VM's size.
DEFAULT_CONTAINER_MB = 64
# Characters of a container's environment, or of its command and args,
# and of a pod's labels, in a template (what the runtime accepts of one
# container: see kata_zun.runtime.manager).
MAX_TEXT = 512 * 1024
MAX_LABEL_TEXT = 64 * 1024
_NAME_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,62}\Z')
_IMAGE_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_./:@-]{1,254}\Z')
_ID_RE = re.compile(r'^[0-9a-f]{32,64}\Z')
_ENV_KEY_RE = re.compile(r'^[^=\0]{1,1024}\Z')


def _invalid(reason):
    return exception.InvalidInput(reason=reason)


class ContainerSpec(object):
    """One container of a pod (init or regular).

    :param name: unique in its pod ([a-zA-Z0-9][a-zA-Z0-9_.-]{1,62}).
    :param image: a local image name, id or id prefix.
    :param command: argv replacing the image's Entrypoint (K8s
        ``command``), or None.
    :param args: argv replacing the image's Cmd (K8s ``args``), or None.
    :param env: list of ``KEY=VALUE``.
    :param workdir: absolute working directory, or None (the image's).
    :param cpus: CPU limit (a share of the VM's vCPUs) or None.
    :param memory_mb: memory limit in MiB or None.
    :param ports: published ports ``[HOSTIP:]HOSTPORT:CPORT[/PROTO]``
        (the pod's network carries them: one VM, one address).
    :param volume_mounts: list of ``{'name', 'target', 'readonly'}``
        naming a volume of the pod.
    :param cid: the container's id (32 to 64 lowercase hex, e.g. a Zun
        container's uuid without dashes), or None for a random one.
    """

    FIELDS = ('name', 'image', 'command', 'args', 'env', 'workdir', 'cpus',
              'memory_mb', 'ports', 'volume_mounts', 'tty', 'stdin', 'cid')

    def __init__(self, name, image, command=None, args=None, env=(),
                 workdir=None, cpus=None, memory_mb=None, ports=(),
                 volume_mounts=(), tty=False, stdin=False, cid=None):
        self.cid = cid
        self.name = name
        self.image = image
        self.command = list(command) if command is not None else None
        self.args = list(args) if args is not None else None
        self.env = list(env or ())
        self.workdir = workdir
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.ports = list(ports or ())
        self.volume_mounts = [dict(m) for m in volume_mounts or ()]
        self.tty = bool(tty)
        self.stdin = bool(stdin)

    def to_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_dict(cls, data):
        return cls(**{k: data.get(k) for k in cls.FIELDS
                      if data.get(k) is not None})

    def __repr__(self):
        return 'ContainerSpec(%r, %r)' % (self.name, self.image)


def check_containers(containers, init_containers, volume_names,
                     need_one=True):
    """Check a pod's containers as a whole.

    :param volume_names: the names of the pod's volumes.
    :param need_one: a pod without a regular container is an error (a
        pod made empty gets its containers later).
    :raises: InvalidInput
    """
    if need_one and not containers:
        raise _invalid('a pod needs one container at least')
    everyone = list(init_containers) + list(containers)
    if len(everyone) > MAX_CONTAINERS:
        raise _invalid('at most %d containers in a pod (init containers '
                       'included)' % MAX_CONTAINERS)
    seen = set()
    for spec in everyone:
        if not isinstance(spec.name, str) or not _NAME_RE.match(spec.name):
            raise _invalid('invalid container name %r' % (spec.name,))
        if spec.name in seen:
            raise _invalid('two containers are named %r' % spec.name)
        seen.add(spec.name)
        if spec.cid is not None and (not isinstance(spec.cid, str) or
                                     not _ID_RE.match(spec.cid)):
            raise _invalid('container %s: its id must be 32 to 64 '
                           'lowercase hex digits' % spec.name)
        if not isinstance(spec.image, str) or \
                not _IMAGE_RE.match(spec.image):
            raise _invalid('container %s: invalid image %r' % (
                spec.name, spec.image))
        if spec.cpus is not None and (isinstance(spec.cpus, bool) or
                                      not isinstance(spec.cpus,
                                                     (int, float)) or
                                      not 0 < spec.cpus <= 64):
            raise _invalid('container %s: cpus must be in (0, 64]' %
                           spec.name)
        if spec.memory_mb is not None and (
                isinstance(spec.memory_mb, bool) or
                not isinstance(spec.memory_mb, int) or
                not 6 <= spec.memory_mb <= 1024 * 1024):
            raise _invalid('container %s: memory must be a whole number '
                           'of MiB, at least 6' % spec.name)
        targets = set()
        for mount in spec.volume_mounts:
            if mount.get('name') not in volume_names:
                raise _invalid('container %s mounts the volume %r the pod '
                               'does not have' % (spec.name,
                                                  mount.get('name')))
            if mount['target'] in targets:
                raise _invalid('container %s: two volumes at %s' % (
                    spec.name, mount['target']))
            targets.add(mount['target'])
    for spec in init_containers:
        if spec.ports:
            raise _invalid('init container %s cannot publish ports' %
                           spec.name)


def vm_size(containers, init_containers, overhead_mb, default_vcpus,
            default_memory_mb, host_cpus):
    """The VM of a pod: what its containers need at the busiest moment.

    Init containers run alone, one after the other, before the regular
    containers, so the pod needs the larger of the biggest init
    container and the sum of the regular ones (Kubernetes' effective
    request), plus the guest's own overhead.

    :returns: (vcpus, memory_mb)
    """
    def need(specs, key, default):
        return [getattr(s, key) if getattr(s, key) else default
                for s in specs]
    mem = max(sum(need(containers, 'memory_mb', DEFAULT_CONTAINER_MB)),
              max(need(init_containers, 'memory_mb',
                       DEFAULT_CONTAINER_MB) or [0]))
    memory_mb = max(default_memory_mb, mem + overhead_mb)
    cpus = max(sum(need(containers, 'cpus', 0)),
               max(need(init_containers, 'cpus', 0) or [0]))
    vcpus = max(1, math.ceil(cpus)) if cpus else default_vcpus
    return min(vcpus, max(1, host_cpus)), memory_mb


def phase(started, init_states, states, stopped=False):
    """A pod's status from its containers', Kubernetes-like.

    :param started: the pod was started (its VM booted) at least once.
    :param init_states: (status, exit_code) of each init container, in
        order; status is a container status (created, running,
        restarting, paused, exited, unknown).
    :param states: (status, exit_code) of each regular container.
    :param stopped: its user stopped it.
    :returns: one of the phases of this module.
    """
    everyone = list(init_states) + list(states)
    if any(s == 'unknown' for s, _ in everyone):
        return UNKNOWN
    for status, code in init_states:
        if status == 'exited' and code not in (0, None):
            return FAILED
    live = ('running', 'restarting', 'paused')
    if any(s in live for s, _ in states):
        return RUNNING
    if states and all(s == 'exited' for s, _ in states):
        if all(c == 0 for _, c in states):
            return SUCCEEDED
        return STOPPED if stopped else FAILED
    if stopped and started:
        return STOPPED
    return PENDING


# ------------------------------------------------------ Zun's templates
_TEMPLATE_KEYS = {'kind', 'capsuleVersion', 'metadata', 'restartPolicy',
                  'spec', 'availabilityZone'}
_METADATA_KEYS = {'name', 'labels', 'annotations'}
_SPEC_KEYS = {'containers', 'initContainers', 'volumes', 'restartPolicy'}
_CONTAINER_KEYS = {'name', 'image', 'command', 'args', 'resources', 'ports',
                   'volumeMounts', 'env', 'workDir', 'imagePullPolicy',
                   'stdin', 'tty'}
_PORT_KEYS = {'name', 'containerPort', 'hostPort', 'protocol'}
_MOUNT_KEYS = {'name', 'mountPath', 'readOnly'}
_VOLUME_KEYS = {'name', 'cinder'}
_CINDER_KEYS = {'volumeID', 'size', 'autoRemove'}


class Template(object):
    """A capsule template read by :func:`from_template`.

    :ivar name: the pod's name (``metadata.name``) or None.
    :ivar labels: dict of str.
    :ivar restart_policy: 'always', 'on-failure' or 'no'.
    :ivar containers: list of :class:`ContainerSpec`.
    :ivar init_containers: list of :class:`ContainerSpec`.
    :ivar volumes: list of ``{'name', 'size_gb', 'volume_id',
        'auto_remove'}`` (Zun's Cinder volumes).
    """

    def __init__(self):
        self.name = None
        self.labels = {}
        self.restart_policy = 'always'
        self.containers = []
        self.init_containers = []
        self.volumes = []


def _keys(where, obj, allowed):
    if not isinstance(obj, dict):
        raise _invalid('%s must be a mapping' % where)
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _invalid('%s: unknown field%s %s' % (
            where, 's' if len(unknown) > 1 else '', ', '.join(
                repr(k) for k in unknown)))
    return obj


def _bounded(where, strings, limit):
    """Refuse strings that add up to more than ``limit`` characters.

    YAML aliases let a small template name one long string many times:
    it is measured here, before anything copies it.
    """
    total = 0
    for text in strings:
        total += len(text) + 1
        if total > limit:
            raise _invalid('%s: more than %d characters' % (where, limit))


def _str_list(where, value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str)
                                              for v in value):
        raise _invalid('%s must be a list of strings' % where)
    return value


def _number(where, value, integer=False):
    if isinstance(value, str) and re.match(r'^[0-9]+(\.[0-9]+)?\Z', value):
        value = float(value) if '.' in value else int(value)
    if isinstance(value, bool) or not isinstance(
            value, int if integer else (int, float)):
        raise _invalid('%s must be a %s' % (
            where, 'whole number' if integer else 'number'))
    return value


def _container(where, data):
    name = data.get('name') if isinstance(data, dict) else None
    if name is not None and not isinstance(name, str):
        raise _invalid('%s: the name must be a string' % where)
    where = '%s (%s)' % (where, name) if name else where
    _keys(where, data, _CONTAINER_KEYS)
    if 'image' not in data:
        raise _invalid('%s: the image is needed' % where)
    env = data.get('env') or {}
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and _ENV_KEY_RE.match(k) and
            isinstance(v, str) for k, v in env.items()):
        raise _invalid('%s: env must map names to strings' % where)
    _bounded(where + ': env', (k + v for k, v in env.items()),
             MAX_TEXT)
    requests = _keys(where + ': resources', data.get('resources') or {},
                     {'requests'}).get('requests') or {}
    _keys(where + ': resources.requests', requests, {'cpu', 'memory'})
    cpus = memory = None
    if requests.get('cpu') is not None:
        cpus = _number(where + ': cpu', requests['cpu'])
    if requests.get('memory') is not None:
        memory = _number(where + ': memory (MiB)', requests['memory'],
                         integer=True)
    ports = []
    for i, port in enumerate(data.get('ports') or []):
        pwhere = '%s: ports[%d]' % (where, i)
        _keys(pwhere, port, _PORT_KEYS)
        if 'containerPort' not in port:
            raise _invalid('%s: containerPort is needed' % pwhere)
        cport = _number(pwhere + '.containerPort', port['containerPort'],
                        integer=True)
        hport = _number(pwhere + '.hostPort', port.get('hostPort', cport),
                        integer=True)
        proto = port.get('protocol', 'TCP')
        if proto not in ('TCP', 'UDP') or not 0 < cport < 65536 or \
                not 0 < hport < 65536:
            raise _invalid('%s: a port is in [1, 65535], its protocol '
                           'TCP or UDP' % pwhere)
        ports.append('%d:%d/%s' % (hport, cport, proto.lower()))
    mounts = []
    for i, mount in enumerate(data.get('volumeMounts') or []):
        mwhere = '%s: volumeMounts[%d]' % (where, i)
        _keys(mwhere, mount, _MOUNT_KEYS)
        if not isinstance(mount.get('name'), str) or \
                not isinstance(mount.get('mountPath'), str):
            raise _invalid('%s: name and mountPath are needed' % mwhere)
        mounts.append({'name': mount['name'], 'target': mount['mountPath'],
                       'readonly': bool(mount.get('readOnly', False))})
    workdir = data.get('workDir')
    if workdir is not None and (not isinstance(workdir, str) or
                                not workdir.startswith('/')):
        raise _invalid('%s: workDir must be an absolute path' % where)
    for key in ('stdin', 'tty'):
        if key in data and not isinstance(data[key], bool):
            raise _invalid('%s: %s must be true or false' % (where, key))
    _bounded(where + ': command and args', [
        t for key in ('command', 'args') for t in (
            data.get(key) if isinstance(data.get(key), list) else
            [data.get(key) or ''])
        if isinstance(t, str)], MAX_TEXT)
    return ContainerSpec(
        name=name, image=data['image'],
        command=(_str_list(where + ': command', data['command'])
                 if data.get('command') is not None else None),
        args=(_str_list(where + ': args', data['args'])
              if data.get('args') is not None else None),
        env=['%s=%s' % kv for kv in env.items()], workdir=workdir,
        cpus=cpus, memory_mb=memory, ports=ports, volume_mounts=mounts,
        tty=data.get('tty', False), stdin=data.get('stdin', False))


def from_template(data):
    """Read a capsule template (already parsed from YAML or JSON).

    Containers without a name are named ``<image>-<n>`` like Zun does not
    (Zun leaves them unnamed; a pod's containers are found by name).

    :returns: a :class:`Template`.
    :raises: InvalidInput naming the field at fault.
    """
    _keys('template', data, _TEMPLATE_KEYS)
    for required in ('kind', 'metadata', 'spec'):
        if required not in data:
            raise _invalid('template: %s is needed' % required)
    if data['kind'] not in ('capsule', 'Capsule'):
        raise _invalid('template: kind must be capsule, not %r' %
                       (data['kind'],))
    if data.get('capsuleVersion', 'beta') not in ('beta', 'Beta'):
        raise _invalid('template: capsuleVersion must be beta')
    out = Template()
    metadata = _keys('metadata', data['metadata'], _METADATA_KEYS)
    out.name = metadata.get('name')
    if out.name is not None and (not isinstance(out.name, str) or
                                 not _NAME_RE.match(out.name)):
        raise _invalid('metadata: invalid name %r' % (out.name,))
    labels = metadata.get('labels') or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in labels.items()):
        raise _invalid('metadata: labels must map strings to strings')
    _bounded('metadata: labels', (k + v for k, v in labels.items()),
             MAX_LABEL_TEXT)
    out.labels = labels
    spec = _keys('spec', data['spec'], _SPEC_KEYS)
    policy = spec.get('restartPolicy', data.get('restartPolicy', 'Always'))
    if policy not in ('Always', 'OnFailure', 'Never'):
        raise _invalid('restartPolicy must be Always, OnFailure or Never, '
                       'not %r' % (policy,))
    out.restart_policy = RESTART_POLICIES[policy]
    for key, target in (('initContainers', out.init_containers),
                        ('containers', out.containers)):
        items = spec.get(key) or []
        if not isinstance(items, list):
            raise _invalid('spec.%s must be a list' % key)
        for i, item in enumerate(items):
            target.append(_container('spec.%s[%d]' % (key, i), item))
    seen = set(c.name for c in out.init_containers + out.containers
               if c.name)
    for i, spec_ in enumerate(out.init_containers + out.containers):
        if spec_.name is None:
            base = re.sub(r'[^a-zA-Z0-9_.-]', '-',
                          spec_.image.rsplit('/', 1)[-1].split(':')[0])
            name = '%s-%d' % (base or 'container', i)
            while name in seen:
                name += '-'
            spec_.name = name
            seen.add(name)
    names = set()
    for i, vol in enumerate(spec.get('volumes') or []):
        where = 'spec.volumes[%d]' % i
        _keys(where, vol, _VOLUME_KEYS)
        name = vol.get('name')
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _invalid('%s: invalid name %r' % (where, name))
        if name in names:
            raise _invalid('two volumes are named %r' % name)
        names.add(name)
        if 'cinder' not in vol:
            raise _invalid('%s (%s): only cinder volumes are supported '
                           '(as in Zun)' % (where, name))
        cinder = _keys(where + '.cinder', vol['cinder'], _CINDER_KEYS)
        size = cinder.get('size')
        volume_id = cinder.get('volumeID')
        if (size is None) == (volume_id is None):
            raise _invalid('%s (%s): give either cinder.size or '
                           'cinder.volumeID' % (where, name))
        if size is not None:
            size = _number(where + '.cinder.size (GiB)', size, integer=True)
            if not 1 <= size <= 16384:
                raise _invalid('%s: size must be in [1, 16384] GiB' %
                               where)
        out.volumes.append({'name': name, 'size_gb': size,
                            'volume_id': volume_id,
                            'auto_remove': bool(cinder.get('autoRemove',
                                                           False))})
    check_containers(out.containers, out.init_containers, names)
    return out
