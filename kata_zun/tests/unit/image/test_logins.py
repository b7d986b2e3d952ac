"""kata-zun login/logout: where and how credentials are kept."""

import os
import stat
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import logins
from kata_zun.image import store

CONF = conf.CONF


class ServerNameTestCase(base.BaseTestCase):

    def test_names(self):
        flags = self.useFixture(config_fixture.Config(CONF)).config
        for given, name in (
                (None, 'docker.io'), ('', 'docker.io'),
                ('docker.io', 'docker.io'),
                ('index.docker.io', 'docker.io'),
                ('https://index.docker.io/v1/', 'docker.io'),
                ('REGISTRY-1.docker.io', 'docker.io'),
                ('reg.example:5000', 'reg.example:5000'),
                ('https://reg.example:5000/v2/', 'reg.example:5000'),
                ('reg.example/some/path', 'reg.example'),
                ('127.0.0.1:5000', '127.0.0.1:5000')):
            self.assertEqual(name, logins.server_name(given), given)
        flags(default_registry='mirror:5000', group='kata_image')
        self.assertEqual('mirror:5000', logins.server_name(None))

    def test_hostile_names(self):
        for bad in ('ftp://x', 'user@host', 'host:port', 'host:99999',
                    'a b', 'a\nb', 'x' * 300, '://', 'file:///etc/passwd',
                    '\x1b[2J'):
            self.assertRaises(exception.InvalidInput, logins.server_name,
                              bad)


class LoginStoreTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.store = store.ImageStore(os.path.join(self.root, 'images'))
        self.path = os.path.join(self.store.root, 'registry', 'auth.json')

    def test_save_lookup_remove(self):
        self.assertIsNone(logins.lookup(self.store, 'reg:5000'))
        logins.save(self.store, 'reg:5000', 'alice', 'pw 1')
        logins.save(self.store, 'docker.io', 'bob', 'pw2')
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))
        self.assertEqual(0o700, stat.S_IMODE(os.stat(
            os.path.dirname(self.path)).st_mode))
        self.assertEqual({'username': 'alice', 'password': 'pw 1'},
                         logins.lookup(self.store, 'reg:5000'))
        # Again: replaced, not added.
        logins.save(self.store, 'reg:5000', 'alice', 'pw 3')
        self.assertEqual('pw 3', logins.lookup(self.store,
                                               'reg:5000')['password'])
        self.assertTrue(logins.remove(self.store, 'reg:5000'))
        self.assertFalse(logins.remove(self.store, 'reg:5000'))
        self.assertIsNone(logins.lookup(self.store, 'reg:5000'))
        self.assertEqual('bob', logins.lookup(self.store,
                                              'docker.io')['username'])
        self.assertEqual(['auth.json', 'auth.json.lock'],
                         sorted(n for n in os.listdir(os.path.dirname(
                             self.path))))

    def test_projects_never_use_them(self):
        logins.save(self.store, 'reg:5000', 'alice', 'pw')
        self.assertIsNone(logins.lookup(self.store.scoped('p1'),
                                        'reg:5000'))

    def test_bad_values(self):
        for user, password in (('', 'pw'), ('u', None), (None, 'pw'),
                               ('u', 'x' * 5000)):
            self.assertRaises(exception.InvalidInput, logins.save,
                              self.store, 'reg', user, password)
        self.assertFalse(os.path.exists(self.path))

    def test_damaged_file_counts_as_none(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for data in (b'\x00garbage', b'[1, 2]', b'{"reg": "x"}',
                     b'{"reg": {"username": 1, "password": "p"}}',
                     b'[' * 100000):
            with open(self.path, 'wb') as f:
                f.write(data)
            self.assertIsNone(logins.lookup(self.store, 'reg'))
        # A login replaces it.
        logins.save(self.store, 'reg', 'u', 'p')
        self.assertEqual('u', logins.lookup(self.store, 'reg')['username'])

    def test_pull_uses_the_login(self):
        from kata_zun.image import registry
        logins.save(self.store, 'reg.example:5000', 'alice', 'pw')
        with mock.patch.object(registry.client, 'Client',
                               side_effect=RuntimeError('stop')) as client:
            self.assertRaises(RuntimeError, self.store.pull,
                              'reg.example:5000/app:1')
            self.assertEqual({'username': 'alice', 'password': 'pw'},
                             client.call_args.args[2])
            # Given credentials win; a project's pull gets none.
            self.assertRaises(RuntimeError, self.store.pull,
                              'reg.example:5000/app:1',
                              credentials={'username': 'x',
                                           'password': 'y'})
            self.assertEqual('x', client.call_args.args[2]['username'])
            self.assertRaises(RuntimeError, self.store.scoped('p').pull,
                              'reg.example:5000/app:1')
            self.assertIsNone(client.call_args.args[2])
