"""The image store records its work in the host's event log."""

import os
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun.image import busybox
from kata_zun.image import registry
from kata_zun.image import store
from kata_zun.runtime import events


class StoreEventsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.store = store.ImageStore(os.path.join(self.tmp, 'images'))
        self.store.events_path = self.tmp

    def actions(self):
        return [(e['Type'], e['Action'], e['Actor']['Attributes'].get(
            'name')) for e in events.read(self.tmp)]

    def test_load_tag_untag_delete_and_pull(self):
        path = os.path.join(self.tmp, 'b.tar')
        busybox.write_docker_archive(path, repo_tags=('busybox:latest',))
        (record,) = self.store.load_archive(path)
        self.store.tag('busybox', 'mine:1')
        self.store.remove('mine:1')
        with mock.patch.object(registry, 'pull',
                               return_value=record) as pull:
            self.store.pull('busybox:latest')       # present: no pull
            self.store.pull('busybox:latest', policy='always')
        self.assertEqual(2, pull.call_count)
        self.store.remove(record.id)
        self.assertEqual([('image', 'load', 'busybox:latest'),
                          ('image', 'tag', 'mine:1'),
                          ('image', 'untag', 'mine:1'),
                          ('image', 'pull', 'busybox:latest'),
                          ('image', 'delete', 'busybox:latest')],
                         self.actions())
        self.assertEqual(record.id, events.read(self.tmp)[0]['Actor']['ID'])

    def test_a_scoped_view_records_too_and_no_path_records_nothing(self):
        path = os.path.join(self.tmp, 'b.tar')
        busybox.write_docker_archive(path, repo_tags=('busybox:latest',))
        self.store.scoped('project').load_archive(path)
        self.assertEqual([('image', 'load', 'busybox:latest')],
                         self.actions())
        plain = store.ImageStore(os.path.join(self.tmp, 'other'))
        plain.load_archive(path)
        self.assertEqual(1, len(events.read(self.tmp)))
