"""Named volumes and a container's volume devices, on its record.

What a volume is (a typed device handed to the VM, see
:mod:`kata_zun.volume`) is not decided here: this mixin of
:class:`kata_zun.runtime.manager.Runtime` keeps records and volumes
consistent under the records lock (a volume in use is never removed; a
stopped container's record follows its Cinder devices' new names).
"""

import copy
import os

from oslo_log import log as logging

from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.runtime import record

LOG = logging.getLogger(__name__)


class VolumeMixin(object):
    """Volume operations of :class:`kata_zun.runtime.manager.Runtime`."""

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
            if c.status in record.LIVE:
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
