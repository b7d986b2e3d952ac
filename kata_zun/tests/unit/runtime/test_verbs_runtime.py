"""Runtime.rename, Runtime.wait and Runtime.restart on records made by
hand (no VM): names, conflicts, atomic writes, exit codes.
"""

import os
import threading
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.runtime import manager
from kata_zun.runtime import record


class RecordsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(conf.CONF)).config(
            state_path=root + '/state', run_path=root + '/run',
            group='kata')
        self.rt = manager.Runtime()

    def record(self, cid, name, state=None, created=1):
        cdir = os.path.join(self.rt.containers_dir, cid)
        os.makedirs(cdir)
        fileutils.write_json(os.path.join(cdir, 'config.json'), {
            'id': cid, 'name': name, 'created': created, 'extra': [1, 2]})
        fileutils.write_json(os.path.join(cdir, 'state.json'), state or {
            'status': 'exited', 'exit_code': 3})
        return cdir


class RenameTestCase(RecordsTestCase):

    def test_rename(self):
        cdir = self.record('a' * 64, 'web')
        c = self.rt.rename('web', 'front')
        self.assertEqual('front', c.name)
        self.assertEqual('a' * 64, self.rt.get('front').id)
        self.assertRaises(exception.ContainerNotFound, self.rt.get, 'web')
        # The rest of the record is kept, and nothing temporary is left.
        self.assertEqual([1, 2], fileutils.read_json(
            os.path.join(cdir, 'config.json'))['extra'])
        self.assertEqual(['config.json', 'state.json'],
                         sorted(os.listdir(cdir)))
        # Docker's leading slash; the same name again is no change.
        self.assertEqual('back', self.rt.rename('front', '/back').name)
        self.assertEqual('back', self.rt.rename('back', 'back').name)

    def test_name_in_use(self):
        self.record('a' * 64, 'web')
        self.record('b' * 64, 'db', created=2)
        e = self.assertRaises(exception.ContainerNameInUse, self.rt.rename,
                              'web', 'db')
        self.assertTrue(str(e).startswith(
            "Conflict. The container name 'db' is already in use by "
            "container bbbbbbbbbbbb"), e)
        self.assertEqual('web', self.rt.get('a' * 64).name)

    def test_hostile_names(self):
        self.record('a' * 64, 'web')
        for bad in ('', '/', 'a/b', '../x', '.hidden', '-x', 'a b',
                    'x' * 129, 'é', 'a\nb', 'a\n', None, 42):
            self.assertRaises(exception.InvalidInput, self.rt.rename,
                              'web', bad)
        self.assertEqual('web', self.rt.get('a' * 64).name)
        self.assertRaises(exception.ContainerNotFound, self.rt.rename,
                          'nope', 'x')

    def test_damaged_record_is_not_renamed(self):
        cdir = self.record('a' * 64, 'web')
        with open(os.path.join(cdir, 'config.json'), 'w') as f:
            f.write('{"torn')
        self.assertRaises(exception.Conflict, self.rt.rename, 'a' * 64,
                          'x')
        with open(os.path.join(cdir, 'config.json')) as f:
            self.assertEqual('{"torn', f.read())

    def test_concurrent_renames_to_one_name(self):
        # Under the record lock: exactly one wins.
        for i, cid in enumerate(('a' * 64, 'b' * 64, 'c' * 64)):
            self.record(cid, 'n%d' % i, created=i)
        results = []

        def rename(ref):
            try:
                self.rt.rename(ref, 'same')
                results.append('ok')
            except exception.ContainerNameInUse:
                results.append('conflict')
        threads = [threading.Thread(target=rename, args=('n%d' % i,))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(['conflict', 'conflict', 'ok'], sorted(results))
        self.assertEqual(1, [c.name for c in self.rt.list()].count('same'))


class WaitTestCase(RecordsTestCase):

    def test_not_running(self):
        self.record('a' * 64, 'done')
        self.assertEqual(3, self.rt.wait('done'))
        self.record('b' * 64, 'new', state={'status': 'created'})
        self.assertEqual(0, self.rt.wait('new'))
        # Recorded as running, but its shim is gone: lost, 255.
        self.record('c' * 64, 'lost', state={'status': 'running',
                                             'shim_pid': 1})
        self.assertEqual(255, self.rt.wait('lost'))
        self.assertRaises(exception.ContainerNotFound, self.rt.wait, 'nope')

    def test_running_asks_the_shim(self):
        self.record('a' * 64, 'run', state={'status': 'running',
                                            'shim_pid': 1})
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True))
        client = mock.MagicMock()
        client.__enter__.return_value = client
        client.call.return_value = {'exited': True, 'exit_code': 7}
        with mock.patch.object(self.rt, 'connect', return_value=client):
            self.assertEqual(7, self.rt.wait('run'))
        client.call.assert_called_once_with('wait', {}, timeout=None)

    def test_shim_dies_while_waiting(self):
        cdir = self.record('a' * 64, 'run', state={'status': 'running',
                                                   'shim_pid': 1})
        alive = self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True)).mock
        client = mock.MagicMock()
        client.__enter__.return_value = client

        def die(*args, **kwargs):
            alive.return_value = False
            raise exception.ShimError(reason='connection closed')
        client.call.side_effect = die
        with mock.patch.object(self.rt, 'connect', return_value=client):
            self.assertEqual(255, self.rt.wait('run'))
        # Its last word, when it wrote one, wins.
        fileutils.write_json(os.path.join(cdir, 'state.json'),
                             {'status': 'exited', 'exit_code': 4})
        alive.return_value = True
        client.call.side_effect = die
        with mock.patch.object(self.rt, 'connect', return_value=client):
            self.assertEqual(4, self.rt.wait('run'))


class RestartTestCase(RecordsTestCase):

    def test_stopped_container_is_started(self):
        self.record('a' * 64, 'web')
        with mock.patch.object(self.rt, 'stop') as stop, \
                mock.patch.object(self.rt, 'start',
                                  return_value=('c', 'client')) as start:
            self.assertEqual(('c', 'client'), self.rt.restart('web'))
        stop.assert_not_called()
        start.assert_called_once_with('a' * 64)

    def test_running_container_keeps_its_record(self):
        cdir = self.record('a' * 64, 'web', state={'status': 'running',
                                                   'shim_pid': 1})
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True))
        marks = []

        def stop(cid, timeout=None):
            marks.append(os.path.exists(os.path.join(
                cdir, record.RESTART_MARK)))
            self.assertEqual(5, timeout)
        with mock.patch.object(self.rt, 'stop', side_effect=stop), \
                mock.patch.object(self.rt, 'start',
                                  return_value=('c', 'client')) as start:
            self.rt.restart('web', timeout=5)
        self.assertEqual([True], marks)
        self.assertFalse(os.path.exists(os.path.join(
            cdir, record.RESTART_MARK)))
        start.assert_called_once_with('a' * 64)

    def test_failed_stop_removes_the_mark(self):
        cdir = self.record('a' * 64, 'web', state={'status': 'running',
                                                   'shim_pid': 1})
        self.useFixture(fixtures.MockPatch(
            'kata_zun.runtime.liveness.pid_is_shim', return_value=True))
        with mock.patch.object(self.rt, 'stop', side_effect=exception.
                               ShimError(reason='x')), \
                mock.patch.object(self.rt, 'start') as start:
            self.assertRaises(exception.ShimError, self.rt.restart, 'web')
        start.assert_not_called()
        self.assertFalse(os.path.exists(os.path.join(
            cdir, record.RESTART_MARK)))
