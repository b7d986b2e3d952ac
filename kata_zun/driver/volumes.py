"""Zun volumes for KataDriver: devices for the VM, never host mounts.

zun-compute hands every volume call to the container driver
(``attach_volume``, ``detach_volume``, ``delete_volume``,
``is_volume_available``, ``is_volume_deleted``); zun's own volume drivers
mount a Cinder volume's file system on the host and bind it into a
Docker container. A file system the guest can write is untrusted data:
the host kernel must never parse it. So here:

``cinder``
    attached through zun's CinderWorkflow (reserve, initialize the
    connection, connect with os-brick, mark it attached): the block
    device stays as it is and goes to the VM as a virtio-blk disk; the
    guest agent makes the file system on a blank volume and mounts it.
    Read-only Cinder attachments (``access_mode`` ``ro``) are read-only
    for QEMU and in the guest.
``local`` (injected files)
    the file is written where zun's Local driver keeps it
    (``<[volume] volume_dir>/<uuid>/<uuid>``, atomically, bounded); the
    sandbox's virtiofsd exports that one file and the guest binds it at
    its destination, so the container's writes reach the host copy.

Detach happens once the VM no longer holds the device: zun deletes the
container (and with it the VM) before it detaches; any other caller
finds the VM stopped first. Each volume's reference is kept in the
container's record so that a start after a reattach (zun-compute or the
host restarted: os-brick may name the device differently) uses the
device zun knows now, and a volume zun has detached is never reused.
"""

import base64
import binascii
import os
import shutil
import stat

from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import uuidutils
from zun.common import exception as zun_exc
from zun.common import mount as zun_mount
from zun import objects

from kata_zun.driver import common
from kata_zun import exception
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils
from kata_zun.runtime import record
from kata_zun.volume import spec as volume_spec

LOG = logging.getLogger(__name__)

#: The file systems the guest agent makes and mounts on a blank volume.
GUEST_FSTYPES = ('ext4',)
#: Largest injected file (zun-api's request body limit is far below).
MAX_INJECTED_BYTES = 1024 * 1024


def _conf():
    import zun.conf
    return zun.conf.CONF


def volume_ref(volmap):
    """:returns: the reference kept in the runtime record for a volume
        mapping (its provider and zun volume id).
    """
    return '%s:%s' % (volmap.volume_provider, volmap.volume_id)


def injected_file(volmap):
    """:returns: the host path where zun keeps an injected file.
    :raises: zun.common.exception.ZunException if the volume's uuid is not
        one (it names a directory that is removed at detach).
    """
    uuid = volmap.volume.uuid
    if not uuidutils.is_uuid_like(uuid):
        raise zun_exc.ZunException('volume uuid %r is not a uuid' % (uuid,))
    return os.path.join(zun_mount.get_mountpoint(uuid), uuid)


def _unsupported(provider):
    return zun_exc.ZunException(
        'volume provider %r is not supported by the kata driver'
        % (provider,))


def _connection(volmap):
    try:
        info = jsonutils.loads(volmap.connection_info)
        path = info['data']['device_path']
    except (TypeError, ValueError, KeyError) as exc:
        raise zun_exc.ZunException(
            'volume %s has no usable connection information (%s): it is '
            'not attached to this host' % (volmap.cinder_volume_id, exc))
    return info, path


def _check_block_device(path, volume_id):
    try:
        st = os.stat(path)
    except OSError as exc:
        raise zun_exc.ZunException(
            'volume %s: device %s: %s' % (volume_id, path, exc.strerror))
    if not stat.S_ISBLK(st.st_mode):
        raise zun_exc.ZunException(
            'volume %s: %s is not a block device' % (volume_id, path))


def requests(volmaps):
    """The runtime's volume requests for a container's volume mappings.

    :param volmaps: the container's attached VolumeMapping objects.
    :returns: a list of :mod:`kata_zun.volume.spec` requests, each with
        ``ref`` (:func:`volume_ref`).
    :raises: zun.common.exception.ZunException, Invalid
    """
    out = []
    for volmap in volmaps:
        target = volmap.container_path
        try:
            if volmap.volume_provider == 'cinder':
                info, path = _connection(volmap)
                _check_block_device(path, volmap.cinder_volume_id)
                readonly = info['data'].get('access_mode') == 'ro'
                req = volume_spec.make('block', path, target, readonly)
            elif volmap.volume_provider == 'local':
                req = volume_spec.make('bind', injected_file(volmap),
                                       target)
            else:
                raise _unsupported(volmap.volume_provider)
        except exception.InvalidInput as exc:
            raise common.zun_error(zun_exc.Invalid, exc)
        req['ref'] = volume_ref(volmap)
        out.append(req)
    return out


class VolumeDriverMixin(object):
    """KataDriver's volume calls (see the module's docstring)."""

    def attach_volume(self, context, volume_mapping):
        """Make a volume ready for the container's VM.

        :raises: zun.common.exception.ZunException, Invalid
        """
        provider = volume_mapping.volume_provider
        if provider == 'cinder':
            self._attach_cinder(context, volume_mapping)
        elif provider == 'local':
            self._attach_local(volume_mapping)
        else:
            raise _unsupported(provider)

    def _attach_cinder(self, context, volmap):
        from zun.volume import cinder_workflow
        fstype = _conf().volume.fstype
        if fstype not in GUEST_FSTYPES:
            # The guest formats blank volumes: say so rather than make a
            # file system the operator did not ask for.
            raise zun_exc.Invalid(
                '[volume] fstype = %s: the kata driver formats blank '
                'volumes inside the VM as %s only'
                % (fstype, ', '.join(GUEST_FSTYPES)))
        cinder = cinder_workflow.CinderWorkflow(context)
        if volmap.connection_info:
            # zun-compute restarted (remount_container_volume): connect
            # again; the device may have a new name.
            info, _path = _connection(volmap)
            device = cinder._connect_volume(info)
            info['data']['device_path'] = device['path']
            volmap.connection_info = jsonutils.dumps(info)
            volmap.save(context)
            path = device['path']
        else:
            path = cinder.attach_volume(volmap)
        # The fault matrix kills here: connected on this host (os-brick's
        # privsep daemon up), not yet in any VM.
        faultpoint.reached('zun-volume-attached')
        try:
            _check_block_device(path, volmap.cinder_volume_id)
        except zun_exc.ZunException:
            LOG.error('Cinder volume %s connected as %s, which the VM '
                      'cannot use: detaching it', volmap.cinder_volume_id,
                      path)
            cinder.detach_volume(context, volmap)
            raise
        LOG.info('Cinder volume %s is %s on this host, for the VM of '
                 'container %s (never mounted here)',
                 volmap.cinder_volume_id, path, volmap.container_uuid)

    def _attach_local(self, volmap):
        path = injected_file(volmap)
        if os.path.exists(path):
            # zun-compute restarted: the container may have changed the
            # file since; keep it.
            return
        try:
            # As zun's own Local driver, but garbage is an error, not an
            # empty file.
            content = base64.b64decode(
                ''.join((volmap.contents or '').split()), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise zun_exc.Invalid('injected file for %s is not valid '
                                  'base64' % volmap.container_path)
        if len(content) > MAX_INJECTED_BYTES:
            raise zun_exc.Invalid(
                'injected file for %s is %d bytes, more than %d'
                % (volmap.container_path, len(content),
                   MAX_INJECTED_BYTES))
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        # Whole or absent (the test above takes an existing file as
        # injected already), and its name made durable with it.
        fileutils.write_atomic(path, content, mode=0o644)

    def detach_volume(self, context, volume_mapping):
        """Release a volume once no VM holds it.

        :raises: zun.common.exception.ZunException, Invalid
        """
        self._release_from_vm(volume_mapping)
        provider = volume_mapping.volume_provider
        if provider == 'cinder':
            from zun.volume import cinder_workflow
            cinder_workflow.CinderWorkflow(context).detach_volume(
                context, volume_mapping)
        elif provider == 'local':
            shutil.rmtree(os.path.dirname(injected_file(volume_mapping)),
                          ignore_errors=True)
        else:
            raise _unsupported(provider)

    def _release_from_vm(self, volmap):
        """Stop the container's VM if it still runs: the guest syncs and
        unmounts, QEMU closes the device, before the host lets go of it.
        """
        cid = common.runtime_id_of(volmap.container_uuid or '')
        try:
            c = self.rt.get(cid)
        except exception.KataZunException:
            return
        if c.status in record.LIVE:
            LOG.warning('Volume %s is detached from container %s while '
                        'its VM runs: stopping the VM first',
                        volmap.volume_id, volmap.container_uuid)
            self.rt.stop(cid)

    def _bind_volumes(self, context, container):
        """Point the record's volumes at the devices zun knows now.

        :raises: zun.common.exception.Conflict when a volume of the
            record is no longer attached.
        """
        volmaps = objects.VolumeMapping.list_by_container(context,
                                                          container.uuid)
        current = {r['ref']: r for r in requests(volmaps)}
        try:
            self.rt.rebind_volumes(container.container_id, current)
        except exception.Conflict as exc:
            raise common.zun_error(zun_exc.Conflict, exc)
