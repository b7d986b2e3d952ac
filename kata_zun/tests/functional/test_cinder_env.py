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

"""A real Cinder makes, connects, disconnects and deletes volumes.

Real: keystone (:mod:`zun_env` with ``zun=False``), cinder-api,
cinder-scheduler and cinder-volume 29 (:mod:`cinder_env`) on MariaDB and
RabbitMQ, the ``openstack`` client, python-cinderclient making the calls
zun's CinderWorkflow makes, and os-brick (connector properties, the
``local`` connector). The stand-ins: the storage under cinder-volume
(:mod:`cinder_backend`: a sparse file, handed over as a loop device),
because this kernel has no device-mapper or iSCSI; and a Nova that knows
no server (:mod:`fake_nova`), which cinder asks before a detach.

Needs root (loop devices) and a virtualenv with cinder
(``tools/install-cinder.sh``).
"""

import fcntl
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
import time
import uuid

import fixtures
from oslotest import base
from testtools import content

from kata_zun.tests.functional import cinder_env
from kata_zun.tests.functional import zun_env

GiB = 1024 ** 3
BLKGETSIZE64 = 0x80081272
STATUS_TIMEOUT = 120


def cinder_venv():
    """The virtualenv with cinder (see :func:`zun_env.find_venv`)."""
    return zun_env.find_venv('KATA_ZUN_CINDER_VENV', '.venv-cinder',
                             'cinder-volume')


def _block_size(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b'\0' * 8)
    finally:
        os.close(fd)
    return struct.unpack('Q', buf)[0]


class CinderEnvironmentTest(base.BaseTestCase):
    """One keystone and Cinder for the whole class: no test restarts a
    service, and each start costs 40-60 s on a busy 2-core host.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        venv = cinder_venv()
        if venv is None:
            raise AssertionError('no virtualenv with cinder: run '
                                 'tools/install-cinder.sh')
        if os.geteuid() != 0:
            raise AssertionError('needs root (loop devices)')
        cls.work = tempfile.mkdtemp(prefix='kzcinder')
        cls.keystone = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(cls.work, 'keystone'), zun=False)
        cls.cinder = cinder_env.CinderEnvironment(
            venv, os.path.join(cls.work, 'cinder'), keystone=cls.keystone)
        cls.overrides = []
        started = time.monotonic()
        try:
            cls.cinder.start_with_keystone()
            # os-brick asks privsep for the connector properties, as in
            # zun-compute: with the configuration zun-compute gets (there
            # is no sudo here).
            import os_brick.privileged  # noqa: F401 (registers the group)
            from oslo_config import cfg
            for section, options in cinder_env.privsep_conf(
                    sys.prefix).items():
                for key, value in options.items():
                    cfg.CONF.set_override(key, value, group=section)
                    cls.overrides.append((key, section))
        except BaseException:
            cls._stop_all()
            raise
        cls.start_seconds = time.monotonic() - started

    @classmethod
    def _stop_all(cls):
        from oslo_config import cfg
        for key, section in cls.overrides:
            cfg.CONF.clear_override(key, group=section)
        # Cinder leaves keystone while keystone still runs.
        try:
            cls.cinder.stop()
        finally:
            cls.keystone.stop()
            shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._stop_all()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(900, gentle=True))
        self.addOnException(self._attach_logs)
        self.addDetail('start-seconds', content.text_content(
            '%.1f' % self.start_seconds))

    def _attach_logs(self, exc_info):
        self.addDetail('cinder-logs', content.text_content(
            self.cinder.logs_tail()))

    # -- clients

    def openstack(self, *args):
        """The real ``openstack`` client as admin; JSON output decoded."""
        code, out, err = self.keystone.openstack(*args)
        self.assertEqual(0, code, 'openstack %s: %s' % (' '.join(args),
                                                        err))
        return json.loads(out) if out.strip() else None

    def cinderclient(self, version='3'):
        """python-cinderclient as zun builds it: a keystone session,
        the ``volumev3`` service from the catalog.
        """
        from cinderclient import client
        from keystoneauth1 import identity
        from keystoneauth1 import session

        zun_env.quiet_keystoneauth()
        auth = identity.Password(
            auth_url=self.keystone.auth_url, username='admin',
            password=self.keystone.admin_password, project_name='admin',
            user_domain_name='Default', project_domain_name='Default')
        return client.Client(version, session=session.Session(auth=auth),
                             region_name=zun_env.REGION,
                             endpoint_type='publicURL')

    def connector_properties(self):
        """What zun-compute sends (zun.volume.cinder_workflow)."""
        from os_brick.initiator import connector
        return connector.get_connector_properties(
            None, zun_env.HOST_IP, False, enforce_multipath=True,
            host=self.cinder.host)

    def wait_status(self, volume_id, status):
        deadline = time.monotonic() + STATUS_TIMEOUT
        while True:
            volume = self.openstack('volume', 'show', '-f', 'json',
                                    volume_id)
            if volume['status'] == status:
                return volume
            self.assertNotIn(volume['status'], ('error', 'error_deleting'),
                             volume)
            self.assertLess(time.monotonic(), deadline,
                            'volume %s still %s, not %s' % (
                                volume_id, volume['status'], status))
            time.sleep(0.5)

    def wait_deleted(self, volume_id):
        deadline = time.monotonic() + STATUS_TIMEOUT
        while True:
            ids = [v['ID'] for v in self.openstack('volume', 'list', '-f',
                                                   'json')]
            if volume_id not in ids:
                return
            self.assertLess(time.monotonic(), deadline,
                            'volume %s not deleted' % volume_id)
            time.sleep(0.5)

    def create_volume(self):
        volume = self.openstack('volume', 'create', '-f', 'json', '--size',
                                '1', 'kzt-%s' % uuid.uuid4().hex[:8])
        self.addCleanup(self.cinder.request, 'DELETE',
                        '/volumes/%s' % volume['id'])
        volume = self.wait_status(volume['id'], 'available')
        self.assertEqual(1, volume['size'])
        self.assertEqual(self.cinder.backend_host + '#kzt',
                         volume['os-vol-host-attr:host'])
        path = os.path.join(self.cinder.volumes_dir,
                            'volume-%s' % volume['id'])
        st = os.stat(path)
        self.assertEqual(GiB, st.st_size)
        # Sparse: nothing written yet.
        self.assertLess(st.st_blocks * 512, 1024 * 1024)
        return volume, path

    def assert_connected(self, conn, path):
        """The connection is a block device on the host backed by the
        volume's file: what is written to it lands in the file.
        """
        from os_brick.initiator import connector
        self.assertEqual('local', conn['driver_volume_type'])
        brick = connector.InitiatorConnector.factory(
            conn['driver_volume_type'], None)
        device = brick.connect_volume(conn['data'])['path']
        self.assertTrue(stat.S_ISBLK(os.stat(device).st_mode), device)
        self.assertEqual(GiB, _block_size(device))
        self.assertIn(device, self.cinder.loop_devices())
        marker = os.urandom(4096)
        fd = os.open(device, os.O_WRONLY)
        try:
            os.pwrite(fd, marker, GiB - 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(path, 'rb') as f:
            f.seek(GiB - 4096)
            self.assertEqual(marker, f.read(4096))
        return brick, device

    def assert_deleted_without_leaks(self, volume_id, path):
        self.openstack('volume', 'delete', volume_id)
        self.wait_deleted(volume_id)
        self.assertFalse(os.path.exists(path))
        self.assertEqual({}, self.cinder.loop_devices())
        self.assertEqual([], os.listdir(self.cinder.volumes_dir))

    # -- tests

    def test_zun_attach_flow(self):
        """reserve, initialize_connection, attach, detach: zun's calls."""
        volume, path = self.create_volume()
        vid = volume['id']
        cinder = self.cinderclient()
        props = self.connector_properties()
        container = str(uuid.uuid4())

        cinder.volumes.reserve(vid)
        self.assertEqual('attaching', cinder.volumes.get(vid).status)
        conn = cinder.volumes.initialize_connection(vid, props)
        brick, device = self.assert_connected(conn, path)
        # A retried initialize_connection gets the same device.
        self.assertEqual(conn, cinder.volumes.initialize_connection(
            vid, props))
        self.assertEqual([device], list(self.cinder.loop_devices()))
        cinder.volumes.attach(vid, instance_uuid=container,
                              mountpoint=device, host_name=self.cinder.host)
        shown = self.wait_status(vid, 'in-use')
        self.assertEqual([container], [a['server_id']
                                       for a in shown['attachments']])

        attachment = cinder.volumes.get(vid).attachments[0]
        cinder.volumes.begin_detaching(vid)
        self.assertEqual('detaching', cinder.volumes.get(vid).status)
        brick.disconnect_volume(conn['data'], None)
        cinder.volumes.terminate_connection(vid, props)
        self.assertEqual({}, self.cinder.loop_devices())
        cinder.volumes.detach(vid, attachment['attachment_id'])
        self.wait_status(vid, 'available')
        # The data stays with the volume.
        self.assertGreater(os.stat(path).st_blocks, 0)

        self.assert_deleted_without_leaks(vid, path)

    def test_attachment_api_flow(self):
        """Attachments (API 3.44+): create with a connector, complete,
        delete.
        """
        volume, path = self.create_volume()
        vid = volume['id']
        cinder = self.cinderclient('3.54')
        props = self.connector_properties()

        attachment = cinder.attachments.create(vid, props,
                                               str(uuid.uuid4()), 'rw')
        info = cinder.attachments.show(attachment['id']).connection_info
        self.assertEqual(attachment['id'], info['attachment_id'])
        # Attachments flatten "data" into connection_info.
        brick, device = self.assert_connected(
            {'driver_volume_type': info['driver_volume_type'],
             'data': info}, path)
        cinder.attachments.complete(attachment['id'])
        self.wait_status(vid, 'in-use')
        brick.disconnect_volume(info, None)
        cinder.attachments.delete(attachment['id'])
        self.wait_status(vid, 'available')
        self.assertEqual({}, self.cinder.loop_devices())

        self.assert_deleted_without_leaks(vid, path)

    def test_delete_while_connected_leaves_nothing(self):
        """A volume deleted while its loop device is still attached (a
        force delete, as after a crashed host) takes the device along.
        """
        volume, path = self.create_volume()
        vid = volume['id']
        cinder = self.cinderclient()
        cinder.volumes.reserve(vid)
        conn = cinder.volumes.initialize_connection(
            vid, self.connector_properties())
        self.assert_connected(conn, path)
        self.openstack('volume', 'delete', '--force', vid)
        self.wait_deleted(vid)
        self.assertFalse(os.path.exists(path))
        self.assertEqual({}, self.cinder.loop_devices())
