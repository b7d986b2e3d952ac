"""Two zun-compute hosts (kata driver) on one machine under one zun-api.

Each host has its own name, zun state, kata state and run paths and
console port (see ``extra_computes`` of
:class:`~kata_zun.tests.functional.zun_env.ZunEnvironment`). Each host's
placement memory is made room for one default-sized container (512 MiB):
placement spreads two containers over both hosts and refuses a third;
``--host`` puts a container on the host asked for; each host's runtime
knows only its own containers, zun-wsproxy reaches each container's
interactive exec through its own host's console, and one host's console
refuses another host's exec ids and attach tokens.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from unittest import mock
import urllib.error
import urllib.request

import fixtures
import websocket

from kata_zun.tests.functional import base as kz_base
from kata_zun.tests.functional import test_zun_console_e2e
from kata_zun.tests.functional import test_zun_e2e
from kata_zun.tests.functional import zun_env

# Placement memory of each host: one 512 MiB container fits, two do not.
HOST_ROOM_MB = 700


def _host_memory_mb():
    """MemTotal as zun-compute reports it (MiB)."""
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemTotal:'):
                return int(line.split()[1]) // 1024
    raise AssertionError('no MemTotal in /proc/meminfo')


class ZunTwoHostsTest(test_zun_e2e.ZunEndToEndBase):

    def setUp(self):
        work = self.useFixture(fixtures.TempDir()).path
        self.state_path2 = os.path.join(work, 'kata2')
        os.makedirs(self.state_path2)
        os.symlink(os.environ.get('KATA_ZUN_GUEST_DIR',
                                  kz_base.DEFAULT_GUEST_DIR),
                   os.path.join(self.state_path2, 'guest'))
        self.run_path2 = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        self.addCleanup(shutil.rmtree, self.run_path2, True)
        self.console_ports = [zun_env._free_port(), zun_env._free_port()]
        room = {'reserved_host_memory_mb': _host_memory_mb() - HOST_ROOM_MB,
                'ram_allocation_ratio': '1.0'}
        second = {
            'kata': {'state_path': self.state_path2,
                     'run_path': self.run_path2,
                     'writable_layer_mb': '256'},
            'kata_console': {'listen_host': zun_env.HOST_IP,
                             'listen_port': self.console_ports[1]},
            # zun-compute gives zun-wsproxy this URL for interactive exec.
            'docker': {'docker_remote_api_port': self.console_ports[1]},
            'compute': room}
        real = zun_env.ZunEnvironment

        def environment(*args, **kwargs):
            extra = kwargs.setdefault('extra_conf', {})
            extra['kata_console'] = {'listen_host': zun_env.HOST_IP,
                                     'listen_port': self.console_ports[0]}
            extra['docker'] = {
                'docker_remote_api_port': self.console_ports[0]}
            extra['compute'] = dict(room)
            return real(*args, extra_computes=[second], wsproxy=True,
                        **kwargs)
        with mock.patch.object(zun_env, 'ZunEnvironment', environment):
            super().setUp()
        self.host1, self.host2 = self.env.hosts
        # The image, as an operator loads it on every host.
        from kata_zun.image import busybox
        archive = os.path.join(work, 'busybox.tar')
        busybox.write_docker_archive(archive)
        self.kz(self.host2, 'load', '-i', archive)
        self.addCleanup(self._remove_host2_sandboxes)

    def kz(self, host, *args, check=True):
        proc = subprocess.run(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.env.compute_conf_path(host)] + list(args),
            capture_output=True, timeout=kz_base.CLI_TIMEOUT)
        if check:
            self.assertEqual(0, proc.returncode, proc)
        return proc

    def _remove_host2_sandboxes(self):
        ids = self.kz(self.host2, 'ps', '-a', '-q', check=False).stdout
        if ids.split():
            self.kz(self.host2, 'rm', '-f',
                    *[i.decode() for i in ids.split()], check=False)
        out = subprocess.run(['pgrep', '-f', 'kata_zun.cmd.shim.*%s' %
                              self.state_path2], capture_output=True)
        self.assertEqual(b'', out.stdout)

    def _attach_logs(self, exc_info):
        super()._attach_logs(exc_info)
        from testtools import content
        log = os.path.join(self.env.log_dir, 'zun-compute-2.log')
        if os.path.exists(log):
            self.addDetail('zun-compute-2.log', content.text_content(
                kz_base.tail_file(log, 20000)))

    def wait_settled(self, name, timeout=180):
        """The status once it is no longer Creating."""
        deadline = time.time() + timeout
        while True:
            info = self.show(name)
            if info['status'] not in ('Creating', 'Created'):
                return info
            self.assertLess(time.time(), deadline, info)
            time.sleep(1)

    def runs_on(self, host, uuid):
        """Whether ``host``'s own runtime has the container's VM."""
        return self.kz(host, 'inspect', 'zun-' + uuid,
                       check=False).returncode == 0

    def test_spread_host_choice_and_isolation(self):
        # Both hosts report, each as its own resource provider.
        for host in self.env.hosts:
            self.assertEqual('up', self.env.compute_service(host)['state'])
        rps = [self.env.resource_provider(h) for h in self.env.hosts]
        self.assertNotEqual(rps[0]['uuid'], rps[1]['uuid'])

        # Placement: one container per host fits, so two land on both
        # hosts, and a third finds no host.
        for name in ('s1', 's2'):
            self.os('appcontainer', 'run', '--name', name,
                    '--image-pull-policy', 'ifnotpresent', 'busybox',
                    'sleep', '100000')
            self.wait_status(name, ('Running',), timeout=240)
        placed = {self.show(n)['host']: self.show(n)['uuid']
                  for n in ('s1', 's2')}
        self.assertEqual({self.host1, self.host2}, set(placed))
        for host, uuid in placed.items():
            self.assertTrue(self.runs_on(host, uuid))
            other = ({self.host1, self.host2} - {host}).pop()
            self.assertFalse(self.runs_on(other, uuid))
        self.os('appcontainer', 'run', '--name', 's3',
                '--image-pull-policy', 'ifnotpresent', 'busybox', 'true')
        info = self.wait_settled('s3')
        self.assertEqual('Error', info['status'], info)
        self.assertIn('host', (info['status_reason'] or '').lower())
        for name in ('s1', 's2', 's3'):
            self.os('appcontainer', 'delete', '--stop', name)
        self._wait_gone(('s1', 's2', 's3'))

        # --host: each container on the host asked for, and its exec is
        # served there.
        for name, host in (('h1', self.host1), ('h2', self.host2)):
            # --interactive (zun attaches only to such containers) makes
            # ``run`` attach at once: create, then start.
            self.os('appcontainer', 'create', '--name', name, '--host',
                    host, '--interactive',
                    '--image-pull-policy', 'ifnotpresent', 'busybox',
                    'sleep', '100000')
        for name in ('h1', 'h2'):
            self.wait_status(name, ('Created',), timeout=240)
            self.os('appcontainer', 'start', name)
        for name, host in (('h1', self.host1), ('h2', self.host2)):
            info = self.wait_status(name, ('Running',), timeout=240)
            self.assertEqual(host, info['host'])
            self.assertTrue(self.runs_on(host, info['uuid']))
            out = self.os('appcontainer', 'exec', name, 'hostname')[1]
            self.assertIn(info['uuid'][:8].replace('-', ''),
                          out.replace('-', ''))

        # Each host's console listens on a port of its own (one fixed
        # port for both would leave the second without a console), and
        # zun-wsproxy reaches each container's interactive exec there.
        for port in self.console_ports:
            with urllib.request.urlopen('http://%s:%d/version' % (
                    zun_env.HOST_IP, port), timeout=30) as resp:
                self.assertEqual(200, resp.status)
        for name in ('h1', 'h2'):
            term = self.terminal('appcontainer', 'exec', '--interactive',
                                 name, 'sh')
            term.expect(test_zun_console_e2e.PROMPT)
            term.wait_raw()
            term.type(b'echo ex$((6*7))ec; hostname; exit 3\r')
            term.expect(b'ex42ec')
            self.assertEqual(0, term.wait())
            uuid = self.show(name)['uuid'].replace('-', '')
            self.assertIn(uuid[:12].encode(), term.output)

        # Each console serves only its own host's containers: an exec id
        # and an attach token that zun-compute of one host made are
        # refused by the other host's console, and the same secrets
        # then work on their own host (so they were valid, not refused
        # for some other reason).
        for name, own, other in (('h1', 0, 1), ('h2', 1, 0)):
            uuid = self.show(name)['uuid']
            exec_id = self.interactive_exec_id(uuid)
            self.assertEqual(404, self.console_get(
                self.console_ports[other], '/exec/%s/json' % exec_id))
            self.assertEqual(200, self.console_get(
                self.console_ports[own], '/exec/%s/json' % exec_id))
            url = self.attach_url(uuid)
            self.assertIn(':%d/attach/' % self.console_ports[own], url)
            stolen = url.replace(':%d/' % self.console_ports[own],
                                 ':%d/' % self.console_ports[other])
            self.assertRaisesRegex(
                websocket.WebSocketBadStatusException, '403',
                websocket.create_connection, stolen, timeout=30)
            ws = websocket.create_connection(url, timeout=30)
            ws.close()

    def zun_api(self, method, path):
        idc = self.env._identity_client()
        status, _, body = idc.request(
            method, idc.endpoint('container') + path,
            body={'command': 'sh'} if method == 'POST' else None,
            headers={'OpenStack-API-Version': 'container %s' %
                     zun_env.CONTAINER_API_VERSION})
        self.assertEqual(200, status, body)
        return body

    def interactive_exec_id(self, uuid):
        """The driver's exec id of an interactive exec zun-api made."""
        reply = self.zun_api(
            'POST', '/containers/%s/execute?run=false&interactive=true'
            % uuid)
        self.assertTrue(reply.get('exec_id'), reply)
        return reply['exec_id']

    def attach_url(self, uuid):
        """The console URL with the attach token zun-compute stored.

        zun-api hands users only zun-wsproxy's own token; the console's
        token is in zun's database, where zun-wsproxy reads it.
        """
        self.zun_api('GET', '/containers/%s/attach' % uuid)
        proc = subprocess.run(
            zun_env._mysql_argv('mysql') + [
                '-N', '-B', '-e',
                "SELECT websocket_url FROM container WHERE uuid = '%s'"
                % uuid, '%s_zun' % self.env.name],
            capture_output=True, timeout=60, check=True)
        url = proc.stdout.decode().strip()
        self.assertTrue(url.startswith('ws'), proc)
        return url

    @staticmethod
    def console_get(port, path):
        try:
            with urllib.request.urlopen('http://%s:%d%s' % (
                    zun_env.HOST_IP, port, path), timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    def terminal(self, *args):
        argv = [self.env._bin('openstack'), '--os-container-api-version',
                zun_env.CONTAINER_API_VERSION] + list(args)
        term = test_zun_console_e2e.Terminal(
            argv, self.env._env(**self.env.os_environ()))
        self.addCleanup(term.close)
        return term

    def _wait_gone(self, names, timeout=180):
        deadline = time.time() + timeout
        while not self.gone(*names):
            self.assertLess(time.time(), deadline, names)
            time.sleep(1)
