"""The driver against damaged records and lying guests.

Real sandbox records on disk (a real Runtime), zun's objects stood in
for: one damaged record must neither hide its container nor stop Zun's
periodic sync of the others, and what the guest says reaches Zun typed
and escaped.
"""

import os
import types
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun.runtime import fileutils
from kata_zun.shim import logs


class FakeContainer(types.SimpleNamespace):
    """Stands in for zun.objects.Container (the sync checks the class)."""

    by_host = []

    @classmethod
    def list_by_host(cls, context, host):
        return cls.by_host


class HostileDriverTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(state_path=root + '/state', run_path=root + '/run',
                        group='kata')
        from kata_zun import driver
        self.mod = driver
        self.driver = driver.KataDriver()
        self.containers_dir = self.driver.rt.containers_dir

    def _record(self, cid, state=None, raw_state=None):
        cdir = os.path.join(self.containers_dir, cid)
        os.makedirs(cdir)
        fileutils.write_json(os.path.join(cdir, 'config.json'), {
            'id': cid, 'name': 'zun-' + cid[:8], 'created': 1})
        if raw_state is not None:
            with open(os.path.join(cdir, 'state.json'), 'wb') as f:
                f.write(raw_state)
        else:
            fileutils.write_json(os.path.join(cdir, 'state.json'),
                                 state or {'status': 'exited',
                                           'exit_code': 0})
        return cdir

    def _zun(self, cid, **kw):
        c = FakeContainer(
            uuid=cid[:8] + '-uuid', container_id=cid, status='Running',
            status_reason=None, status_detail=None, task_state=None,
            auto_remove=False, auto_heal=True, host=conf.CONF.host,
            name='c', save=mock.Mock())
        c.__dict__.update(kw)
        return c

    def _sync(self, containers):
        """Zun's periodic sync: the database's copies are other objects
        than the ones it passes.
        """
        manager_ = mock.Mock()
        FakeContainer.by_host = [FakeContainer(**vars(c))
                                 for c in containers]
        with mock.patch('zun.objects.ContainerAction.action_start'), \
                mock.patch.object(self.mod.objects, 'Container',
                                  FakeContainer):
            self.driver.update_containers_states(
                mock.Mock(project_id=None), containers, manager_)
        return manager_

    def test_damaged_record_is_unknown_not_missing_and_sync_goes_on(self):
        good, nested, garbage = 'a' * 32, 'b' * 32, 'c' * 32
        self._record(good)
        self._record(nested, raw_state=b'[' * 100000)
        self._record(garbage, state={'status': 'running',
                                     'started_at': 'x\n\x1b[2J'})
        zuns = [self._zun(cid) for cid in (nested, garbage, good)]
        # The first save fails: the others are saved all the same.
        zuns[0].save.side_effect = RuntimeError('db gone\nforged')
        manager_ = self._sync(zuns)
        self.assertFalse(manager_.container_rebuild.called)  # no heal
        self.assertEqual('Unknown', zuns[0].status)
        self.assertIn('damaged sandbox record', zuns[0].status_reason)
        self.assertIn('started_at', zuns[1].status_reason)
        self.assertNotIn('\x1b', zuns[1].status_reason)
        self.assertEqual('Stopped', zuns[2].status)
        zuns[2].save.assert_called_once_with(mock.ANY)
        zuns[1].save.assert_called_once_with(mock.ANY)

    def test_lying_top_and_stats_answers(self):
        rt = mock.Mock()
        self.driver.rt = rt
        rt.call.return_value = {'processes': [
            {'pid': 'x', 'start_time': 10 ** 30, 'cpu_time': -1,
             'state': None, 'cmd': 'evil\x1b]0;t\x07\nline'}, 'junk']}
        top = self.driver.top(None, self._zun('a' * 32))
        self.assertEqual(1, len(top['Processes']))
        row = top['Processes'][0]
        self.assertEqual('0', row[1])
        self.assertEqual('evil\\x1b]0;t\\x07\\nline', row[-1])
        rt.call.side_effect = [{'time': 'now'}, {'memory_limit': []}]
        with mock.patch('time.sleep'):
            stats = self.driver.stats(None, self._zun('a' * 32))
        self.assertEqual(0.0, stats['MEM %'])

    def test_show_logs_is_bounded_and_reads_from_the_end(self):
        cid = 'a' * 32
        cdir = self._record(cid, state={'status': 'running'})
        w = logs.LogWriter(os.path.join(cdir, 'container.log'), 1 << 30)
        for i in range(3000):
            w.write(logs.STDOUT, b'%06d %s\n' % (i, b'y' * 1000))
        w.close()
        self.cfg.config(log_read_max_bytes=64 * 1024, group='kata')
        text = self.driver.show_logs(None, self._zun(cid))
        self.assertTrue(text.startswith('[kata-zun: older output left'))
        self.assertLess(len(text), 64 * 1024 + 200)
        self.assertTrue(text.endswith('002999 ' + 'y' * 1000 + '\n'))
        text = self.driver.show_logs(None, self._zun(cid), tail='2')
        self.assertEqual(2, text.count('\n'))
        from zun.common import exception as zun_exc
        self.assertRaises(zun_exc.Invalid, self.driver.show_logs, None,
                          self._zun(cid), tail='many')
