"""A create cut by a zun-compute stop before zun's claim (issue 14's
Zun fault matrix, ``volume x compute``): zun leaves it Creating with no
host, which zun-compute's start-up never fails and zun-api's delete only
drops from the database.
"""

import types
from unittest import mock

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf


class CutCreatesTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        from kata_zun.driver import orphans
        self.orphans = orphans

    def _c(self, uuid, status='Creating', host=None):
        return types.SimpleNamespace(
            uuid=uuid, status=status, host=host, task_state='container_'
            'creating', status_reason=None, save=mock.Mock())

    def _run(self, containers, volmaps, allocs):
        node = types.SimpleNamespace(rp_uuid='rp-me')
        with mock.patch('zun.objects.Container.list',
                        return_value=containers) as lst, \
                mock.patch('zun.objects.ComputeNode.get_by_name',
                           return_value=node) as get_node, \
                mock.patch('zun.objects.VolumeMapping.list_by_container',
                           side_effect=lambda ctx, uuid: volmaps.get(
                               uuid, [])):
            n = self.orphans.adopt_cut_creates(
                'ctx', 'me', lambda ctx, uuid: allocs.get(uuid, set()))
        lst.assert_called_once_with('ctx', filters={'status': 'Creating'})
        get_node.assert_called_once_with('ctx', 'me')
        return n

    def test_only_hostless_creates_begun_here(self):
        mine = self._c('mine')
        other_host = self._c('other')
        claimed = self._c('claimed', host='me')     # zun's init fails it
        # Its RPC may still wait in the queue: not begun, not ours yet.
        queued = self._c('queued')
        vm = [types.SimpleNamespace(host=None)]
        n = self._run([mine, other_host, claimed, queued], {
            'mine': vm, 'other': vm, 'claimed': vm},
            {'mine': {'rp-me'}, 'other': {'rp-them'}, 'claimed': {'rp-me'},
             'queued': {'rp-me'}})
        self.assertEqual(1, n)
        self.assertEqual(('me', 'Error', None),
                         (mine.host, mine.status, mine.task_state))
        self.assertIn('stopped while it connected the volumes',
                      mine.status_reason)
        mine.save.assert_called_once_with('ctx')
        for c in (other_host, claimed, queued):
            self.assertFalse(c.save.called)
            self.assertEqual('Creating', c.status)

    def test_no_hostless_create_no_query(self):
        with mock.patch('zun.objects.Container.list', return_value=[
                self._c('claimed', host='me')]), \
                mock.patch('zun.objects.ComputeNode.get_by_name') as node:
            self.assertEqual(0, self.orphans.adopt_cut_creates('ctx', 'me'))
        self.assertFalse(node.called)

    def test_a_container_deleted_meanwhile_is_skipped(self):
        from zun.common import exception as zun_exc
        gone = self._c('gone')
        gone.save.side_effect = zun_exc.ContainerNotFound(container='gone')
        n = self._run([gone], {'gone': [types.SimpleNamespace()]},
                      {'gone': {'rp-me'}})
        self.assertEqual(0, n)


class DriverAdoptsOnceTestCase(base.BaseTestCase):
    """The driver adopts at its first list() in zun-compute only: later,
    a hostless create is one in flight, not an orphan.
    """

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        conf.CONF.set_override('host', 'me')
        from kata_zun import driver
        with mock.patch.object(driver.manager, 'Runtime') as rt:
            self.driver = driver.KataDriver()
        rt.return_value.list.return_value = []
        self.mod = driver

    def _list(self):
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[]), \
                mock.patch.object(self.mod.zun_orphans,
                                  'adopt_cut_creates') as adopt:
            self.driver.list('ctx')
        return adopt

    def test_outside_zun_compute_never(self):
        self.assertFalse(self._list().called)

    def test_in_zun_compute_at_the_first_list_only(self):
        self.driver._adopt_pending = True
        self._list().assert_called_once_with('ctx', 'me')
        self.assertFalse(self._list().called)

    def test_a_failure_does_not_fail_the_list(self):
        self.driver._adopt_pending = True
        with mock.patch('zun.objects.Container.list_by_host',
                        return_value=[]), \
                mock.patch.object(self.mod.zun_orphans, 'adopt_cut_creates',
                                  side_effect=RuntimeError('db down')):
            self.assertEqual(([], []), self.driver.list('ctx'))


class LostResultsTestCase(base.BaseTestCase):
    """zun could not save an operation's end (its database restarted):
    the row kept the task state for ever (issue 14's MariaDB restart).
    """

    def setUp(self):
        super().setUp()
        from kata_zun.driver import orphans
        self.orphans = orphans

    def _c(self, uuid='11111111-2222-3333-4444-555555555555',
           task='container_starting', status='Created', host='me'):
        from zun import objects
        c = mock.Mock(spec=objects.Container)
        c.uuid, c.task_state, c.status, c.host = uuid, task, status, host
        c.container_id = None
        c.status_reason = None
        return c

    def _settle(self, stale, fresh, sandbox=None):
        refreshed = []

        def refresh(container, sb):
            refreshed.append(sb)
            container.status = sb.status
        with mock.patch('zun.objects.Container.get_by_uuid',
                        return_value=fresh):
            got = self.orphans.settle_lost_results(
                'ctx', [stale], 'me', lambda cid: sandbox, refresh)
        return got, refreshed

    def test_a_lost_start_is_settled_from_the_sandbox(self):
        stale, fresh = self._c(), self._c()
        sandbox = types.SimpleNamespace(id='1' * 32, status='Running')
        got, refreshed = self._settle(stale, fresh, sandbox)
        self.assertEqual([fresh.uuid], got)
        self.assertEqual([sandbox], refreshed)
        self.assertEqual((None, 'Running', '1' * 32), (
            fresh.task_state, fresh.status, fresh.container_id))
        fresh.save.assert_called_once_with('ctx')
        self.assertFalse(stale.save.called)     # never the sync's copy

    def test_a_lost_create(self):
        sandbox = types.SimpleNamespace(id='1' * 32, status='Created')
        fresh = self._c(task='container_creating', status='Creating')
        self._settle(self._c(task='container_creating'), fresh, sandbox)
        self.assertEqual(('Created', '1' * 32), (fresh.status,
                                                 fresh.container_id))
        self.assertIn('start it', fresh.status_reason)
        fresh = self._c(task='container_creating', status='Creating')
        self._settle(self._c(task='container_creating'), fresh, None)
        self.assertEqual('Error', fresh.status)
        self.assertIn('could not reach its database', fresh.status_reason)

    def test_an_operation_at_work_is_left_alone(self):
        from oslo_concurrency import lockutils
        stale, fresh = self._c(), self._c()
        with lockutils.lock(stale.uuid):        # as zun's synchronized
            got, _r = self._settle(stale, fresh, mock.Mock())
        self.assertEqual([], got)
        self.assertFalse(fresh.save.called)

    def test_an_operation_that_ended_meanwhile_is_left_alone(self):
        stale, fresh = self._c(), self._c(task=None, status='Running')
        got, _r = self._settle(stale, fresh, mock.Mock())
        self.assertEqual([], got)
        self.assertFalse(fresh.save.called)

    def test_only_this_hosts_locked_tasks(self):
        for stale in (self._c(host='other'), self._c(task=None),
                      self._c(task='container_committing'),
                      self._c(task='container_deleting')):
            got, _r = self._settle(stale, self._c(), mock.Mock())
            self.assertEqual([], got)
