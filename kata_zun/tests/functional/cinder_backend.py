# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""A Cinder volume driver for the tests: sparse files on loop devices.

This is the storage stand-in of the real-Cinder test environment
(:mod:`cinder_env`): cinder-api, cinder-scheduler, cinder-volume, their
database, RPC, keystone auth, the volume state machine and os-brick's
``local`` connector are all real and unchanged. Only the storage below
cinder-volume is ours, because this test kernel has neither
device-mapper (no LVM) nor an iSCSI initiator. (The environment's one
other stand-in, :mod:`fake_nova`, only tells cinder that Nova knows no
server.)

How it works:

- a volume is a sparse file ``<sparse_volumes_dir>/<volume name>``;
- ``initialize_connection`` attaches it to a loop device and answers
  with ``driver_volume_type`` ``local`` and that device's path, so that
  the host sees a block device as it would with a real backend (os-brick's
  local connector hands ``device_path`` on as it is);
- ``terminate_connection`` and ``delete_volume`` detach every loop
  device of the file, so a deleted volume leaves nothing behind.

Snapshots, clones and images are not supported (Cinder reports them as
not implemented). cinder-volume runs as root here, so ``losetup`` runs
directly, without rootwrap.

cinder-volume loads it with ``volume_driver =
kata_zun.tests.functional.cinder_backend.SparseFileDriver`` (the
repository on its ``PYTHONPATH``); it needs cinder, so only that
process imports it.
"""

import os

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_log import log as logging

from cinder import exception
from cinder.volume import configuration
from cinder.volume import driver

LOG = logging.getLogger(__name__)

sparse_opts = [
    cfg.StrOpt('sparse_volumes_dir',
               help='Directory of the volumes\' sparse files.'),
]
cfg.CONF.register_opts(sparse_opts, group=configuration.SHARED_CONF_GROUP)

GiB = 1024 ** 3


class SparseFileDriver(driver.VolumeDriver):
    """Volumes as sparse files, exported as loop devices (tests only)."""

    VERSION = '1.0.0'
    # Not a vendor driver: no third-party CI.
    CI_WIKI_NAME = 'kata-zun-tests'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(sparse_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'sparse')

    # -- setup

    def do_setup(self, context):
        directory = self.configuration.sparse_volumes_dir
        if not directory:
            raise exception.InvalidConfigurationValue(
                option='sparse_volumes_dir', value=directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def check_for_setup_error(self):
        # Fails early (and clearly) without loop device support.
        processutils.execute('losetup', '--list')

    def _path(self, volume):
        # The name comes from cinder's template ("volume-<uuid>"): never
        # a path, but a bad template must not point outside the directory.
        name = volume.name
        if not name or '/' in name or name in ('.', '..'):
            raise exception.VolumeBackendAPIException(
                data='bad volume name %r' % name)
        return os.path.join(self.configuration.sparse_volumes_dir, name)

    # -- loop devices

    def _loop_devices(self, path):
        """The loop devices backed by ``path`` (none if it is gone)."""
        out, _err = processutils.execute(
            'losetup', '--noheadings', '--output', 'NAME',
            '--associated', path)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _detach_all(self, path):
        for device in self._loop_devices(path):
            LOG.debug('Detaching %s from %s', device, path)
            processutils.execute('losetup', '--detach', device)

    # -- volumes

    def create_volume(self, volume):
        path = self._path(volume)
        # O_EXCL: never take over a file of another volume.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, volume.size * GiB)
        finally:
            os.close(fd)

    def delete_volume(self, volume):
        path = self._path(volume)
        with lockutils.lock(volume.id):
            self._detach_all(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                # Deleting a volume whose create failed is fine.
                pass

    def extend_volume(self, volume, new_size):
        path = self._path(volume)
        with lockutils.lock(volume.id):
            os.truncate(path, new_size * GiB)
            for device in self._loop_devices(path):
                processutils.execute('losetup', '--set-capacity', device)

    # -- exports: a loop device per connection, nothing to export

    def create_export(self, context, volume, connector):
        pass

    def ensure_export(self, context, volume):
        pass

    def remove_export(self, context, volume):
        pass

    def initialize_connection(self, volume, connector):
        path = self._path(volume)
        with lockutils.lock(volume.id):
            # Called again for the same volume (a retried attach): hand
            # out the same device.
            devices = self._loop_devices(path)
            if devices:
                device = devices[0]
            else:
                out, _err = processutils.execute(
                    'losetup', '--find', '--show', path)
                device = out.strip()
        return {'driver_volume_type': 'local',
                'data': {'device_path': device}}

    def terminate_connection(self, volume, connector, **kwargs):
        with lockutils.lock(volume.id):
            self._detach_all(self._path(volume))

    # -- stats for the scheduler

    def _update_volume_stats(self):
        st = os.statvfs(self.configuration.sparse_volumes_dir)
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'kata-zun tests',
            'driver_version': self.VERSION,
            'storage_protocol': 'local',
            'total_capacity_gb': st.f_blocks * st.f_frsize // GiB,
            'free_capacity_gb': st.f_bavail * st.f_frsize // GiB,
            'reserved_percentage': 0,
            # Sparse files: volumes take only what is written.
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'multiattach': False,
        }

    def get_volume_stats(self, refresh=False):
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats
