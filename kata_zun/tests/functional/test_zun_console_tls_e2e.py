"""End to end over TLS: the real zun-wsproxy reaches a TLS console.

As :mod:`test_zun_console_e2e`, with ``[kata_console] tls_cert_file``,
``tls_key_file`` and ``tls_ca_file`` set (a CA made here): zun-wsproxy
opens interactive exec at ``[docker] docker_remote_api_url =
https://...`` with docker-py (trusting the CA through
``REQUESTS_CA_BUNDLE``) and attach at the ``wss://`` URL the driver
returns, with ``[docker] ca_file``, ``cert_file`` and ``key_file`` (a
client certificate the console requires for attach).
"""

import os
from unittest import mock

import fixtures

from kata_zun.tests.functional import registry_fixture
from kata_zun.tests.functional import test_console
from kata_zun.tests.functional import test_zun_console_e2e
from kata_zun.tests.functional import zun_env


class ZunConsoleTlsTest(test_zun_console_e2e.ZunConsoleTest):

    def setUp(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        ca, cert, key = registry_fixture.make_ca(tmp)
        client_cert, client_key = test_console._client_cert(
            tmp, 'wsproxy', ca, os.path.join(tmp, 'ca.key'))
        # zun-wsproxy's docker-py (python-requests) trusts this bundle.
        self.useFixture(fixtures.EnvironmentVariable('REQUESTS_CA_BUNDLE',
                                                     ca))
        real = zun_env.ZunEnvironment

        def environment(*args, **kwargs):
            env = real(*args, **kwargs)
            extra = env.extra_conf
            extra['kata_console'].update({
                'tls_cert_file': cert, 'tls_key_file': key,
                'tls_ca_file': ca})
            extra['docker'].update({
                'docker_remote_api_url': 'https://%s:%s' % (
                    zun_env.HOST_IP, self.console_port),
                'ca_file': ca, 'cert_file': client_cert,
                'key_file': client_key})
            return env
        with mock.patch.object(zun_env, 'ZunEnvironment', environment):
            super().setUp()
        self.assertIn('tls_cert_file', open(self.env.conf_path).read())
