"""Zun capsules as kata-zun pods: one VM for all of a capsule's containers.

Loaded by zun-compute through stevedore (``zun.capsule.driver`` entry
point ``kata``, ``[DEFAULT] capsule_driver = kata``). zun-compute hands
a capsule to :meth:`KataCapsuleDriver.create_capsule` once it attached
the capsule's Cinder volumes (through this driver's
``attach_volume``: devices for the VM, never host mounts) and claimed
the capsule's resources; zun never calls ``start`` for a capsule, so
create runs it: the init containers one after the other to completion,
then the regular containers (:mod:`kata_zun.runtime.pods`).

What zun shows comes from here:

- each container's ``container_id``, ``status``, ``status_reason`` and
  ``status_detail``, as for a single container
  (:func:`kata_zun.driver.status.copy_state`);
- the capsule's ``status`` from the pod's Kubernetes-like phase
  (:data:`PHASES`), kept true by zun-compute's periodic sync, which
  hands capsules to the *container* driver
  (:meth:`kata_zun.driver.KataDriver.update_containers_states` calls
  :func:`sync_capsule`).

A capsule whose init container fails is kept (status Error, the failing
container and its exit code as the reason): its logs stay readable on
the host and ``capsule delete`` removes it. Any other failure of create
raises after removing everything made so far: zun then forgets the
capsule's host, and a later delete never reaches this host.

zun 18's API has no per-container calls for a capsule's containers
(logs, exec: the containers API finds only standalone containers); on
the compute host ``kata-zun --config-file zun.conf logs|exec ID`` reaches
each of them (their ids are the capsule containers' uuids without
dashes, as for a container).
"""

import datetime

from oslo_log import log as logging
from zun.common import consts
from zun.container import driver as zun_driver

from kata_zun import conf
from kata_zun.driver.common import runtime_id
from kata_zun.driver.common import wrap as _wrap
from kata_zun.driver import images as zun_images
from kata_zun.driver import network as zun_network
from kata_zun.driver import status as zun_status
from kata_zun.driver import volumes as zun_volumes
from kata_zun import exception
from kata_zun.runtime import manager
from kata_zun.runtime import podspec
from kata_zun.runtime import record
from kata_zun.shim import guestdata

CONF = conf.CONF
LOG = logging.getLogger(__name__)

#: A pod's phase as a Zun status.
PHASES = {
    podspec.PENDING: consts.CREATING,
    podspec.RUNNING: consts.RUNNING,
    podspec.SUCCEEDED: consts.STOPPED,
    podspec.STOPPED: consts.STOPPED,
    podspec.FAILED: consts.ERROR,
    podspec.UNKNOWN: consts.UNKNOWN,
}


def members(capsule):
    """:returns: the capsule's init containers then its containers,
        each list in the order zun made them.
    """
    return (sorted(capsule.init_containers or [], key=lambda c: c.id),
            sorted(capsule.containers or [], key=lambda c: c.id))


def pod_volumes(containers, requested_volumes):
    """The pod's volumes for the capsule's attached Cinder volumes: a
    volume several containers mount is one disk of the VM.

    :param containers: the capsule's Zun containers.
    :param requested_volumes: ``{container uuid: [VolumeMapping]}`` as
        zun-compute passes it, attached.
    :returns: (pod volumes, ``{container uuid: [mount]}``), see
        :mod:`kata_zun.runtime.pods`.
    :raises: zun ZunException (not attached, not a block device, not a
        Cinder volume)
    """
    volumes, names, mounts = [], {}, {}
    for zc in containers:
        for volmap in requested_volumes.get(zc.uuid) or []:
            if volmap.volume_provider != 'cinder':
                raise zun_volumes._unsupported(volmap.volume_provider)
            key = volmap.cinder_volume_id
            if key not in names:
                info, path = zun_volumes._connection(volmap)
                zun_volumes._check_block_device(path, key)
                names[key] = ('vol%d' % len(volumes),
                              info['data'].get('access_mode') == 'ro')
                volumes.append({'name': names[key][0], 'type': 'block',
                                'source': path,
                                'readonly': names[key][1]})
            name, readonly = names[key]
            mounts.setdefault(zc.uuid, []).append(
                {'name': name, 'target': volmap.container_path,
                 'readonly': readonly})
    return volumes, mounts


def _exposed_ports(containers):
    ports = {}
    for zc in containers:
        ports.update(zc.exposed_ports or {})
    return ports


#: When this process started (UTC, naive as zun's timestamps): a capsule
#: whose create began before was interrupted by a restart of zun-compute.
_STARTED = datetime.datetime.utcnow()


def _interrupted(capsule):
    """:returns: True for a capsule whose create a previous zun-compute
        process began and never finished (zun has no recovery for
        capsules: it would show Creating for ever).
    """
    if capsule.task_state != consts.CONTAINER_CREATING:
        return False
    updated = capsule.updated_at
    if updated is None:
        return False
    if updated.tzinfo is not None:
        updated = updated.astimezone(datetime.timezone.utc).replace(
            tzinfo=None)
    return updated < _STARTED


def sync_capsule(rt, context, capsule):
    """Copy the pod's state into the capsule and its containers, saving
    what changed (the periodic sync; never raises).

    A capsule whose create was cut short by a crash of zun-compute follows
    its pod if the create made one (the VM went on without zun-compute,
    as every sandbox does); without a pod, it goes to Error saying why,
    so that its user deletes it.
    """
    try:
        if _interrupted(capsule):
            capsule.task_state = None
            try:
                pod = rt.get_pod(runtime_id(capsule))
            except exception.NotFound:
                pod = None
            LOG.warning('capsule %s: its create was interrupted by a '
                        'restart of zun-compute%s', capsule.uuid,
                        '' if pod is None else '; its VM went on')
            if pod is None:
                capsule.status = consts.ERROR
                capsule.status_reason = (
                    'zun-compute restarted while this capsule was being '
                    'created; delete it')
                capsule.save(context)
                return
            capsule.container_id = pod.id
        if capsule.task_state or not capsule.container_id:
            # An operation of this process owns it, or it never got a
            # pod (its reason, e.g. an image not found, stays).
            return
        _sync(rt, capsule, context)
    except Exception as exc:
        LOG.warning('refreshing capsule %s: %s', capsule.uuid,
                    guestdata.printable(exc))


def _save(context, obj):
    if obj.obj_what_changed():
        obj.save(context)


def _sync(rt, capsule, context=None):
    inits, regulars = members(capsule)
    try:
        pod = rt.get_pod(capsule.container_id)
    except exception.NotFound:
        capsule.status = consts.ERROR
        capsule.status_reason = ('the VM of this capsule is gone from '
                                 'host %s' % CONF.host)
        if context is not None:
            _save(context, capsule)
        return None
    records = {c.id: c for c in pod.init_containers + pod.containers}
    for zc in inits + regulars:
        # A member's id is its Zun container's (even when a crash came
        # before zun saved it).
        c = records.get(zc.container_id or runtime_id(zc))
        if c is None:
            continue
        zc.container_id = c.id
        zun_status.copy_state(zc, c, failed_start_is_error=False)
        if context is not None:
            _save(context, zc)
    phase = pod.status
    if phase == podspec.PENDING and pod.error and not pod.shim_alive:
        # Its start was abandoned (zun-compute died while the VM booted):
        # nothing will take it further.
        phase = podspec.FAILED
    reason = None
    if phase in (podspec.FAILED, podspec.UNKNOWN):
        # A reason said before (e.g. the create was cut short) stays
        # when the pod's records tell no better one.
        reason = _reason(pod, inits + regulars) or (
            capsule.status_reason if capsule.status == consts.ERROR
            else None) or 'the capsule %s' % phase.lower()
    capsule.status = PHASES.get(phase, consts.UNKNOWN)
    capsule.status_detail = phase
    capsule.status_reason = reason
    if context is not None:
        _save(context, capsule)
    return pod


def _reason(pod, zun_containers):
    """Why a pod failed, in the words a user reads in ``capsule show``."""
    names = {zc.container_id: zc.name for zc in zun_containers}
    for c in pod.init_containers + pod.containers:
        code = c.exit_code
        if c.status == record.EXITED and (c.error or
                                          code not in (0, None)):
            kind = 'init container' if c in pod.init_containers \
                else 'container'
            text = '%s %s exited with %s' % (
                kind, names.get(c.id, c.id[:12]), code)
            if c.error:
                text += ': %s' % guestdata.printable(c.error)
            return text
    return guestdata.printable(pod.error) if pod.error else None


class KataCapsuleDriver(zun_images.ImageDriverMixin,
                        zun_network.NetworkDriverMixin,
                        zun_volumes.VolumeDriverMixin,
                        zun_driver.BaseDriver, zun_driver.CapsuleDriver):
    """Runs every Zun capsule in one QEMU micro-VM."""

    capabilities = {}

    def __init__(self):
        super().__init__()
        self.rt = manager.Runtime()

    def _member_image(self, context, zc):
        """Pull (as zun-compute does for a container) the image of one
        capsule container.

        :returns: the image record.
        """
        from zun.common import utils as zun_utils
        import zun.conf
        driver_name = zc.image_driver or zun.conf.CONF.default_image_driver
        registry = getattr(zc, 'registry', None)
        repo, tag = zun_utils.parse_image_name(zc.image, driver_name,
                                               registry=registry)
        policy = zun_utils.get_image_pull_policy(zc.image_pull_policy, tag)
        image, loaded = self.pull_image(context, repo, tag, policy,
                                        driver_name, registry=registry)
        if not loaded:
            self.load_image(image['path'])
        return self.rt.images.get(image['id'])

    def _spec(self, context, zc, mounts, index, init):
        image_rec = self._member_image(context, zc)
        zun_status.fill_from_image(zc, image_rec.config)
        return podspec.ContainerSpec(
            name=('init%d' if init else 'c%d') % index, image=image_rec.id,
            # The member's id is the Zun container's, as for a container.
            cid=runtime_id(zc),
            # zun's command is Docker's Cmd (zun-api joined the
            # template's command and args into it), as for a container.
            command=list(zc.entrypoint) if zc.entrypoint else None,
            args=list(zc.command) if zc.command else None,
            env=['%s=%s' % (k, v) for k, v in
                 (zc.environment or {}).items()],
            workdir=zc.workdir or None,
            cpus=float(zc.cpu) if zc.cpu else None,
            memory_mb=int(zc.memory) if zc.memory else None,
            volume_mounts=mounts.get(zc.uuid) or (),
            tty=bool(zc.tty), stdin=bool(zc.interactive))

    @_wrap
    def create_capsule(self, context, capsule, image, requested_networks,
                       requested_volumes):
        """Make the capsule's pod and run it (zun never starts a
        capsule): init containers to completion, then the others.

        :param image: zun's sandbox image (``[DEFAULT] sandbox_image``):
            unused, the VM is the sandbox.
        :returns: the capsule, Running, or Error when an init container
            failed.
        :raises: zun exceptions; everything made is removed first.
        """
        inits, regulars = members(capsule)
        volumes, mounts = pod_volumes(inits + regulars,
                                      requested_volumes or {})
        init_specs = [self._spec(context, zc, mounts, i, True)
                      for i, zc in enumerate(inits)]
        specs = [self._spec(context, zc, mounts, i, False)
                 for i, zc in enumerate(regulars)]
        policy = (capsule.restart_policy or {}).get('Name') or 'always'
        # One network identity for the pod: the capsule's ports open
        # what any of its containers exposes.
        capsule.exposed_ports = _exposed_ports(inits + regulars) or None
        addresses, net_request = self._setup_network(
            context, capsule, requested_networks)
        pod = None
        try:
            pod = self.rt.create_pod(
                specs, init_containers=init_specs,
                name='zun-' + capsule.uuid,
                hostname=capsule.hostname or runtime_id(capsule)[:12],
                network=net_request, volumes=volumes,
                restart_policy=policy,
                labels=dict(capsule.labels or {}),
                pod_id=runtime_id(capsule))
            capsule.container_id = pod.id
            capsule.addresses = addresses
            capsule.runtime = 'kata'
            capsule.save(context)
            for zc, c in zip(inits + regulars,
                             pod.init_containers + pod.containers):
                zc.container_id = c.id
                zc.host = capsule.host
                zc.addresses = addresses
                zc.status = consts.CREATED
                zc.save(context)
            self.rt.start_pod(pod.id, wait=True)
            pod = _sync(self.rt, capsule)
        except BaseException:
            if pod is not None:
                self._remove_pod(pod.id)
            self._release_network(context, capsule, addresses)
            raise
        for zc in inits + regulars:
            _save(context, zc)
        if capsule.status == consts.CREATING:
            # Left Pending only when start_pod's wait ended first.
            capsule.status = consts.RUNNING
        capsule.save(context)
        return capsule

    def _remove_pod(self, pod_id):
        try:
            self.rt.remove_pod(pod_id, force=True)
        except exception.NotFound:
            LOG.info('capsule %s has no pod on this host', pod_id)

    @_wrap
    def delete_capsule(self, context, capsule, force=False):
        """Remove the capsule's VM, disks, taps and the ports made for it
        (zun-compute then detaches its volumes and deletes those it made).
        """
        # The pod's id is the capsule's: a create cut short before zun
        # saved it leaves no pod behind either.
        self._remove_pod(capsule.container_id or runtime_id(capsule))
        self._release_network(context, capsule, capsule.addresses)
        capsule.status = consts.DELETED
        return capsule
