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

"""A real Neutron (ML2/OVS) on this machine, for end-to-end tests.

:class:`NeutronEnvironment` runs, all on 127.0.0.1:

- an Open vSwitch of its own: ``ovsdb-server`` and ``ovs-vswitchd`` from
  the Debian package, with their database, sockets, pid files and logs in
  a private run directory (``OVS_RUNDIR``), so that it never touches a
  system OVS and several environments can run side by side. Bridges use
  the userspace ``netdev`` datapath: no openvswitch kernel module needed.
- neutron's API under gunicorn (neutron 29 has no eventlet
  ``neutron-server`` any more: ``neutron.wsgi.api`` is the API and
  ``neutron-rpc-server`` serves the agents), with keystone auth;
- ``neutron-rpc-server`` and ``neutron-openvswitch-agent`` (openvswitch
  firewall, vxlan tenant networks with ``local_ip`` 127.0.0.1: with a
  single host no tunnel port is ever made, traffic stays in br-int);
- a fresh MariaDB database (``neutron-db-manage upgrade heads``) and a
  RabbitMQ virtual host of its own.

Keystone is not started here: :meth:`NeutronEnvironment.start` takes a
keystone URL and the admin password (e.g. of a
:class:`~kata_zun.tests.functional.zun_env.ZunEnvironment`) and registers
a service user and the ``network`` service with its endpoints.
:meth:`NeutronEnvironment.prepare` does everything that needs no keystone
(database migrations, OVS, vhost) and can run while keystone starts.

The services run from ``venv`` (neutron, PyMySQL and gunicorn installed,
see ``tools/install-neutron.sh``); this module itself only needs the
standard library.

Command line (keystone comes from a ZunEnvironment with ``--no-zun``)::

    python -m kata_zun.tests.functional.neutron_env --venv V \\
        --auth-url URL --admin-password PW --workdir W up
    python -m kata_zun.tests.functional.neutron_env --workdir W down
"""

import argparse
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from kata_zun.tests.functional import zun_env
from kata_zun.tests.functional.zun_env import HOST_IP

STATE_FILE = 'neutron-env.json'
START_TIMEOUT = 300
OVS_SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema'
DEFAULT_SCHEMA_CACHE = zun_env.DEFAULT_SCHEMA_CACHE
# neutron-db-manage, the API and the RPC server read both files.
SERVER_CONFS = ('neutron.conf', 'ml2_conf.ini')
AGENT_CONFS = ('neutron.conf', 'openvswitch_agent.ini')
SERVICES = ('ovsdb-server', 'ovs-vswitchd', 'neutron-api',
            'neutron-rpc-server', 'neutron-openvswitch-agent')

_WSGI_APP = """import sys

# neutron parses sys.argv with oslo.config: hide gunicorn's. The files
# come from OS_NEUTRON_CONFIG_DIR and OS_NEUTRON_CONFIG_FILES.
sys.argv = sys.argv[:1]

from neutron.wsgi import api  # noqa: E402

application = api.application
"""


class NeutronEnvironmentError(zun_env.ZunEnvironmentError):
    """The Neutron environment could not be brought up (or down)."""


def _log(msg):
    sys.stderr.write('neutron-env: %s\n' % msg)
    sys.stderr.flush()


class NeutronEnvironment(zun_env.ProcessGroupServices,
                         zun_env.ServiceHarness):
    """Open vSwitch, neutron API, RPC server and OVS agent on loopback.

    :param venv: virtualenv with neutron, PyMySQL and gunicorn.
    :param workdir: configuration, state and logs; created if missing.
        One environment per work directory.
    :param host: ``[DEFAULT] host`` of the agent: ports bound to this
        host (``binding:host_id``) are wired by this agent. Use the
        ``host`` of zun-compute. Default: a unique name.
    :param firewall_driver: ``[securitygroup] firewall_driver`` of the
        agent; ``openvswitch`` works with the netdev datapath (userspace
        conntrack), ``noop`` disables security groups.
    :param timeout: seconds start() waits for each service.
    :param extra_conf: ``{file: {section: {key: value}}}`` merged last,
        file one of ``neutron.conf``, ``ml2_conf.ini``,
        ``openvswitch_agent.ini``.
    :param schema_cache: directory keeping a ``mysqldump`` of the schema
        that ``neutron-db-manage upgrade heads`` made, one file per
        neutron version (see :meth:`ServiceHarness._schema`): later
        environments load it (about 1 s) instead of running the
        migrations again (30 s and more). None: always migrate.
    """

    error = NeutronEnvironmentError
    SERVICES = SERVICES
    _say = staticmethod(_log)

    def __init__(self, venv, workdir, host=None,
                 firewall_driver='openvswitch', timeout=START_TIMEOUT,
                 extra_conf=None, schema_cache=DEFAULT_SCHEMA_CACHE):
        self.venv = os.path.abspath(venv)
        self.workdir = os.path.abspath(workdir)
        self.firewall_driver = firewall_driver
        self.timeout = timeout
        self.extra_conf = extra_conf or {}
        self.schema_cache = schema_cache
        self.log_dir = os.path.join(self.workdir, 'logs')
        self.conf_dir = os.path.join(self.workdir, 'etc')
        self.timings = {}
        self._state_path = os.path.join(self.workdir, STATE_FILE)
        os.makedirs(self.workdir, exist_ok=True)
        self._state = self._load_state()
        self._host = host
        self._popens = {}
        self._lock = threading.Lock()
        self._identity = None
        self._prepared = False

    # -- state

    def _set(self, **values):
        with self._lock:
            self._state.update(values)
        self._save_state()

    @property
    def name(self):
        """Prefix of the database, DB user, vhost and keystone user."""
        return self._state.get('name')

    @property
    def host(self):
        """The agent's host: bind ports with ``binding:host_id`` = this."""
        return self._state.get('host')

    @property
    def url(self):
        """The neutron API endpoint (without ``/v2.0``)."""
        return 'http://%s:%s' % (HOST_IP, self._state['ports']['api'])

    @property
    def integration_bridge(self):
        """Name of br-int (unique: kernel names are global)."""
        return self._state.get('bridges', {}).get('int')

    @property
    def tunnel_bridge(self):
        """Name of br-tun."""
        return self._state.get('bridges', {}).get('tun')

    @property
    def ovs_run_dir(self):
        """``OVS_RUNDIR`` of this environment's Open vSwitch."""
        return self._state.get('ovs_run_dir')

    @property
    def ovsdb_connection(self):
        """The OVSDB of this Open vSwitch, e.g. for os-vif or ovsdbapp."""
        return 'unix:%s' % os.path.join(self.ovs_run_dir, 'db.sock')

    # -- helpers

    def _phase(self, name, started):
        elapsed = time.monotonic() - started
        self.timings[name] = elapsed
        _log('%-28s %6.1fs' % (name, elapsed))

    def _bin(self, name):
        return os.path.join(self.venv, 'bin', name)

    def ovs_environ(self):
        """Variables that point the OVS tools at this Open vSwitch.

        :returns: a dict (``OVS_RUNDIR``, ``OVS_DBDIR``, ``OVS_LOGDIR``).
        """
        return {'OVS_RUNDIR': self.ovs_run_dir,
                'OVS_DBDIR': self.ovs_run_dir,
                'OVS_LOGDIR': self.log_dir}

    def _env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        # privsep-helper is found on PATH (root_helper is "env").
        env['PATH'] = os.pathsep.join([os.path.join(self.venv, 'bin'),
                                       env.get('PATH', os.defpath)])
        env['no_proxy'] = env['NO_PROXY'] = '%s,localhost' % HOST_IP
        if self.ovs_run_dir:
            env.update(self.ovs_environ())
        env.update(extra)
        return env

    def _log_path(self, name):
        return os.path.join(self.log_dir, '%s.log' % name)

    def _conf(self, *names):
        args = []
        for name in names:
            args += ['--config-file', os.path.join(self.conf_dir, name)]
        return args

    def _run(self, name, argv, timeout=300, check=True, env=None):
        """A one-shot command, its output appended to logs/<name>.log."""
        log = self._log_path(name)
        with open(log, 'ab') as f:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT,
                                  env=env or self._env(), timeout=timeout)
        if check and proc.returncode:
            raise NeutronEnvironmentError('%s failed (exit %s): %s\n%s' % (
                name, proc.returncode, ' '.join(argv), zun_env._tail(log)))
        return proc.returncode

    def vsctl(self, *args, check=True):
        """``ovs-vsctl`` on this environment's OVSDB.

        :returns: stdout as text.
        """
        argv = ['ovs-vsctl', '--db=' + self.ovsdb_connection,
                '--timeout=30'] + [str(a) for a in args]
        proc = subprocess.run(argv, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60,
                              env=self._env())
        if check and proc.returncode:
            raise NeutronEnvironmentError('%s failed: %s' % (
                ' '.join(argv), proc.stderr))
        return proc.stdout

    def appctl(self, *args):
        """``ovs-appctl`` to this environment's ovs-vswitchd.

        :returns: stdout as text.
        """
        return subprocess.run(['ovs-appctl', '-t', 'ovs-vswitchd'] +
                              [str(a) for a in args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL,
                              timeout=60, env=self._env()).stdout

    # -- configuration

    def _db_url(self):
        return 'mysql+pymysql://%s:%s@%s:%s/%s_neutron?charset=utf8' % (
            self.name, self._state['db_password'], HOST_IP,
            zun_env.MYSQL_PORT, self.name)

    def _write_configs(self, auth_url):
        st = self._state
        for d in ('state', 'lock'):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        paste = os.path.join(self.venv, 'etc', 'neutron', 'api-paste.ini')
        if not os.path.exists(paste):
            raise NeutronEnvironmentError(
                'neutron is not installed in %s (no %s): run '
                'tools/install-neutron.sh' % (self.venv, paste))
        with open(paste) as f:
            text = f.read().replace(
                '/var/lib/neutron/healthcheck_disable',
                os.path.join(self.workdir, 'healthcheck_disable'))
        with open(os.path.join(self.conf_dir, 'api-paste.ini'), 'w') as f:
            f.write(text)
        with open(os.path.join(self.conf_dir, 'wsgi_app.py'), 'w') as f:
            f.write(_WSGI_APP)
        authtoken = {
            'auth_type': 'password', 'auth_url': auth_url,
            'www_authenticate_uri': auth_url, 'username': self.name,
            'password': st['service_password'], 'project_name': 'service',
            'user_domain_name': 'Default', 'project_domain_name': 'Default'}
        files = {
            'neutron.conf': {
                'DEFAULT': {
                    'debug': True,
                    'host': self.host,
                    'state_path': os.path.join(self.workdir, 'state'),
                    'core_plugin': 'ml2',
                    'service_plugins': '',
                    'auth_strategy': 'keystone',
                    'api_paste_config': os.path.join(self.conf_dir,
                                                     'api-paste.ini'),
                    'transport_url': 'rabbit://guest:guest@%s:%s/%s' % (
                        HOST_IP, zun_env.RABBIT_PORT, self.name),
                    # One RPC worker process, which also takes the
                    # agents' state reports.
                    'rpc_workers': 1,
                    'rpc_state_report_workers': 0,
                    'api_workers': 1,
                    # No Nova and no DHCP agent here.
                    'notify_nova_on_port_status_changes': False,
                    'notify_nova_on_port_data_changes': False,
                    'dhcp_agent_notification': False,
                    # The default is 75 s: an agent that died shows down
                    # sooner.
                    'agent_down_time': 20,
                },
                'database': {'connection': self._db_url()},
                'keystone_authtoken': authtoken,
                'oslo_concurrency': {
                    'lock_path': os.path.join(self.workdir, 'lock')},
                'agent': {
                    # Everything runs as root: no sudo, no rootwrap. The
                    # root helper also prefixes privsep-helper, and an
                    # empty one would mean "sudo": "env" runs the command
                    # as it is.
                    'root_helper': 'env',
                    'report_interval': 5,
                },
            },
            'ml2_conf.ini': {
                'ml2': {
                    'type_drivers': 'flat,vlan,vxlan',
                    'tenant_network_types': 'vxlan',
                    'mechanism_drivers': 'openvswitch',
                    'extension_drivers': 'port_security',
                },
                'ml2_type_vxlan': {'vni_ranges': '1001:2000'},
                'ml2_type_flat': {'flat_networks': '*'},
                'securitygroup': {
                    'enable_security_group':
                        self.firewall_driver != 'noop'},
            },
            'openvswitch_agent.ini': {
                'ovs': {
                    'integration_bridge': self.integration_bridge,
                    'tunnel_bridge': self.tunnel_bridge,
                    'datapath_type': 'netdev',
                    'local_ip': HOST_IP,
                    'ovsdb_connection': self.ovsdb_connection,
                    # The agent is the OpenFlow controller of its bridges.
                    'of_listen_address': HOST_IP,
                    'of_listen_port': st['ports']['openflow'],
                },
                'agent': {'tunnel_types': 'vxlan', 'l2_population': False},
                'securitygroup': {
                    'firewall_driver': self.firewall_driver,
                    'enable_security_group':
                        self.firewall_driver != 'noop'},
            },
        }
        for name, sections in files.items():
            zun_env._write_ini(os.path.join(self.conf_dir, name),
                               zun_env._merge(sections,
                                              self.extra_conf.get(name)))

    # -- bring-up steps

    def _new_state(self):
        suffix = secrets.token_hex(3)
        # Unix socket paths must stay short: not under a deep workdir.
        run_dir = tempfile.mkdtemp(prefix='kzovs', dir='/tmp')
        self._state = {
            'name': 'kzn_%s' % suffix,
            'host': self._host or 'kzn-%s' % suffix,
            'venv': self.venv,
            'db_password': secrets.token_hex(12),
            'service_password': secrets.token_hex(12),
            'ports': {name: zun_env._free_port()
                      for name in ('api', 'openflow')},
            # Kernel interface names (internal ports) are global and at
            # most 15 characters.
            'bridges': {'int': 'bi-%s' % suffix, 'tun': 'bt-%s' % suffix},
            'ovs_run_dir': run_dir,
            'procs': {},
        }
        self._save_state()

    def _prepare_database(self):
        t = time.monotonic()
        zun_env.ensure_mariadb()
        name, pw = self.name, self._state['db_password']
        statements = ['CREATE DATABASE `%s_neutron` CHARACTER SET utf8' %
                      name]
        for host in (HOST_IP, 'localhost'):
            statements += [
                "CREATE USER '%s'@'%s' IDENTIFIED BY '%s'" % (name, host, pw),
                "GRANT ALL ON `%s_neutron`.* TO '%s'@'%s'" % (
                    name, name, host)]
        self._set(db_created=True)
        self._sql(*statements)
        self._phase('neutron database', t)
        # neutron-lib holds column sizes and constants of the models.
        self._schema('neutron', 'neutron', lambda: self._run(
            'neutron-db-manage', [self._bin('neutron-db-manage')] +
            self._conf(*SERVER_CONFS) + ['upgrade', 'heads'],
            timeout=self.timeout), 'neutron-db-manage upgrade',
            depends=('neutron-lib',))

    def _prepare_rabbitmq(self):
        t = time.monotonic()
        zun_env.ensure_rabbitmq()
        self._set(vhost_created=True)
        self._rabbitmqctl('add_vhost', self.name)
        self._rabbitmqctl('set_permissions', '-p', self.name, 'guest',
                          '.*', '.*', '.*')
        self._phase('neutron rabbitmq vhost', t)

    def _start_ovs(self):
        t = time.monotonic()
        if not shutil.which('ovs-vswitchd', path='/usr/sbin:/usr/bin'):
            raise NeutronEnvironmentError(
                'Open vSwitch is not installed: run tools/install-neutron.sh')
        run_dir = self.ovs_run_dir
        db = os.path.join(run_dir, 'conf.db')
        self._run('ovsdb-tool', ['ovsdb-tool', 'create', db, OVS_SCHEMA])
        # Default pid and control socket names under OVS_RUNDIR, so that
        # "ovs-appctl -t ovs-vswitchd" (also run by the agent) finds them.
        self._spawn('ovsdb-server', [
            'ovsdb-server', db, '--remote=punix:%s' % os.path.join(
                run_dir, 'db.sock'), '--pidfile', '-vconsole:warn',
            '--log-file=%s' % self._log_path('ovsdb-server-detail')])
        self._wait('ovsdb-server', lambda: os.path.exists(
            os.path.join(run_dir, 'db.sock')), 30, ('ovsdb-server',))
        self.vsctl('--no-wait', 'init')
        self._spawn('ovs-vswitchd', [
            'ovs-vswitchd', self.ovsdb_connection, '--pidfile',
            '-vconsole:warn',
            '--log-file=%s' % self._log_path('ovs-vswitchd-detail')])
        # Without --no-wait, ovs-vsctl waits until ovs-vswitchd has made
        # the bridges: the switch works when this returns.
        with self._lock:
            self._state['ovs_bridges_made'] = True
        self._save_state()
        args = []
        for bridge in (self.integration_bridge, self.tunnel_bridge):
            args += ['--', '--may-exist', 'add-br', bridge,
                     '--', 'set', 'Bridge', bridge, 'datapath_type=netdev']
        self.vsctl(*args)
        self._phase('open vswitch (netdev)', t)

    def prepare(self):
        """Database and migrations, RabbitMQ vhost, Open vSwitch.

        Needs no keystone: may run while keystone starts. Leftovers of an
        earlier environment in the same work directory are removed first.
        :meth:`start` calls it when it has not run yet.
        """
        if self._prepared:
            return
        t = time.monotonic()
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.conf_dir, exist_ok=True)
        if self._state:
            _log('cleaning up the previous environment in %s' %
                 self.workdir)
            self.stop()
        self._new_state()
        try:
            # neutron-db-manage only reads [database] (and the plugin).
            self._write_configs('http://%s:5000/v3' % HOST_IP)
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(self._prepare_database),
                           pool.submit(self._prepare_rabbitmq),
                           pool.submit(self._start_ovs)]
                for future in futures:
                    future.result()
        except BaseException:
            self._stop_after_failure()
            raise
        self._prepared = True
        self._phase('neutron prepare', t)

    def _stop_after_failure(self):
        _log('start failed: stopping what was started')
        try:
            self.stop()
        except zun_env.ZunEnvironmentError as e:
            _log(str(e))

    def _identity_client(self):
        if self._identity is None:
            if not self._state.get('auth_url'):
                raise NeutronEnvironmentError('not started')
            self._identity = zun_env._Identity(
                self._state['auth_url'], self._state['admin_password'])
        return self._identity

    def request(self, method, path, body=None):
        """An admin request to the neutron API.

        :param path: e.g. ``/v2.0/ports``.
        :returns: ``(status, body)``.
        """
        status, _, resp = self._identity_client().request(
            method, self.url + path, body)
        return status, resp

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        """Like :meth:`request`; raises unless the status is in ``ok``.

        :returns: the decoded body.
        """
        status, resp = self.request(method, path, body)
        return zun_env._check(status, resp, '%s %s' % (method, path), ok)

    def _register(self, register_endpoint):
        """The service user (admin in project service) and endpoints."""
        idc = self._identity_client()

        def call(method, path, body, what):
            status, _, resp = idc.request(method, path, body)
            return zun_env._check(status, resp, what)

        projects = call('GET', '/projects?name=service', None,
                        'find project service')['projects']
        if projects:
            project_id = projects[0]['id']
        else:
            project_id = call('POST', '/projects', {'project': {
                'name': 'service', 'domain_id': 'default'}},
                'create project')['project']['id']
        role_id = call('GET', '/roles?name=admin', None,
                       'find admin role')['roles'][0]['id']
        user_id = call('POST', '/users', {'user': {
            'name': self.name, 'domain_id': 'default',
            'password': self._state['service_password']}},
            'create user %s' % self.name)['user']['id']
        self._set(keystone_user=user_id)
        call('PUT', '/projects/%s/users/%s/roles/%s' % (
            project_id, user_id, role_id), None, 'grant admin')
        if not register_endpoint:
            return
        existing = call('GET', '/services?type=network', None,
                        'find network services')['services']
        if existing:
            raise NeutronEnvironmentError(
                'keystone already has a network service (%s): do not '
                'start a fake Neutron next to this one' % existing)
        service_id = call('POST', '/services', {'service': {
            'type': 'network', 'name': 'neutron', 'enabled': True}},
            'create network service')['service']['id']
        self._set(keystone_service=service_id)
        for interface in ('public', 'internal'):
            call('POST', '/endpoints', {'endpoint': {
                'service_id': service_id, 'url': self.url,
                'interface': interface, 'region_id': zun_env.REGION}},
                'create network endpoint')

    def _start_services(self):
        env = self._env(OS_NEUTRON_CONFIG_DIR=self.conf_dir,
                        OS_NEUTRON_CONFIG_FILES=';'.join(SERVER_CONFS))
        self._spawn('neutron-api', [
            self._bin('gunicorn'), '--no-control-socket',
            '--bind', '%s:%s' % (HOST_IP, self._state['ports']['api']),
            '--workers', '1', '--worker-class', 'gthread', '--threads', '4',
            '--timeout', '120', '--chdir', self.conf_dir,
            '--pythonpath', self.conf_dir,
            '--name', 'neutron-api-%s' % self.name,
            'wsgi_app:application'], env=env)
        self._spawn('neutron-rpc-server', [self._bin('neutron-rpc-server')] +
                    self._conf(*SERVER_CONFS))
        self._spawn('neutron-openvswitch-agent', [
            self._bin('neutron-openvswitch-agent')] +
            self._conf(*AGENT_CONFS))

    def agents(self):
        """The agents neutron knows, from ``GET /v2.0/agents``."""
        return self.call('GET', '/v2.0/agents')['agents']

    def agent(self):
        """This host's Open vSwitch agent record, or None."""
        for agent in self.agents():
            if (agent['binary'] == 'neutron-openvswitch-agent' and
                    agent['host'] == self.host):
                return agent
        return None

    def _agent_ready(self):
        agent = self.agent()
        # The agent reports "started" only after its first full loop
        # (bridges set up, flows installed).
        return bool(agent and agent['alive'] and
                    agent.get('configurations', {}).get(
                        'integration_bridge'))

    def start(self, auth_url, admin_password, register_endpoint=True,
              keystone_ready=None):
        """Bring the environment up; wait until the agent is alive.

        The neutron services boot without keystone (it is only asked when
        a request comes in), so keystone may still be starting: pass
        ``keystone_ready``, called (in this thread) before the first
        request to keystone, to block until it is up.

        When start() fails, it calls :meth:`stop` before raising.

        :param auth_url: keystone v3 URL, e.g. ``http://127.0.0.1:5000/v3``.
        :param admin_password: password of ``admin`` (project ``admin``).
        :param register_endpoint: register the ``network`` service and
            its endpoints (public, internal) in keystone.
        :param keystone_ready: None, or a callable that returns when
            keystone answers (e.g. ``future.result``) and raises if it
            never will.
        :raises NeutronEnvironmentError: with the tail of the logs.
        """
        started = time.monotonic()
        self.prepare()
        try:
            self._identity = None
            self._set(auth_url=auth_url, admin_password=admin_password)
            self._write_configs(auth_url)
            t = time.monotonic()
            self._start_services()
            if keystone_ready is not None:
                keystone_ready()
            self._register(register_endpoint)
            self._phase('neutron keystone registration', t)
            self._wait('neutron-api', lambda: zun_env._http(
                'GET', self.url + '/', timeout=5)[0] < 500, self.timeout,
                ('neutron-api',))
            self._phase('neutron-api up', t)
            self._wait('neutron-openvswitch-agent', self._agent_ready,
                       self.timeout)
            self._phase('neutron ovs agent alive', t)
        except BaseException:
            self._stop_after_failure()
            raise
        self._phase('neutron start total', started)

    def stop(self):
        """Kill everything, remove the bridges, database, vhost, user.

        Safe to call more than once and after a failed start; also works
        from another process (it reads ``<workdir>/neutron-env.json``).
        """
        if not self._state:
            self._state = self._load_state()
        if not self._state:
            return
        t = time.monotonic()
        errors = []

        def attempt(what, func, *args):
            try:
                func(*args)
            except Exception as e:
                errors.append('%s: %s' % (what, e))

        # Nothing of neutron's needs a clean shutdown here: the bridges
        # and their flows go away with del-br below.
        for name in ('neutron-openvswitch-agent', 'neutron-rpc-server',
                     'neutron-api'):
            attempt('kill %s' % name, self._kill, name)
        if self._state.get('ovs_bridges_made'):
            attempt('remove bridges', self._remove_bridges)
        for name in ('ovs-vswitchd', 'ovsdb-server'):
            attempt('kill %s' % name, self._kill, name, signal.SIGTERM)
        for name in list(self._state.get('procs', {})):
            attempt('kill %s' % name, self._kill, name)
        # An internal port whose switch died stays as a kernel device.
        for bridge in self._state.get('bridges', {}).values():
            if os.path.exists('/sys/class/net/%s' % bridge):
                subprocess.run(['ip', 'link', 'del', bridge],
                               capture_output=True)
        name = self.name
        jobs = [(self._unregister, attempt)]
        if self._state.get('db_created') and zun_env._port_open(
                zun_env.MYSQL_PORT):
            jobs.append((attempt, 'drop database', self._sql,
                         'DROP DATABASE IF EXISTS `%s_neutron`' % name,
                         *["DROP USER IF EXISTS '%s'@'%s'" % (name, host)
                           for host in (HOST_IP, 'localhost')]))
        if self._state.get('vhost_created') and zun_env._port_open(
                zun_env.RABBIT_PORT):
            jobs.append((attempt, 'delete vhost', self._rabbitmqctl,
                         'delete_vhost', name))
        # attempt() catches and collects: these never raise.
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            for job in jobs:
                pool.submit(*job)
        run_dir = self._state.get('ovs_run_dir')
        if run_dir and os.path.basename(run_dir).startswith('kzovs'):
            shutil.rmtree(run_dir, ignore_errors=True)
        self._state = {}
        self._identity = None
        self._prepared = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path)
        self._phase('neutron stop', t)
        if errors:
            raise NeutronEnvironmentError('stop: ' + '; '.join(errors))

    def _remove_bridges(self):
        if not (self.alive('ovsdb-server') and self.alive('ovs-vswitchd')):
            return
        # Ports the tests plugged go with their bridge; ovs-vswitchd
        # deletes the internal ports' kernel devices.
        args = []
        for bridge in self._state.get('bridges', {}).values():
            args += ['--', '--if-exists', 'del-br', bridge]
        self.vsctl(*args)

    def _unregister(self, attempt):
        user = self._state.get('keystone_user')
        service = self._state.get('keystone_service')
        if not (user or service) or not self._state.get('auth_url'):
            return
        idc = self._identity_client()
        try:
            idc.token()
        except (OSError, zun_env.ZunEnvironmentError):
            return  # keystone is gone already, and its database with it

        def delete(path):
            status, _, body = idc.request('DELETE', path)
            zun_env._check(status, body, 'DELETE %s' % path, ok=(204, 404))

        # Deleting a service deletes its endpoints.
        if service:
            attempt('delete network service', delete,
                    '/services/%s' % service)
        if user:
            attempt('delete user', delete, '/users/%s' % user)

    # -- ports, as os-vif plugs them

    def plug_vif(self, port, ifname, vm_uuid):
        """Add a device to br-int the way os-vif's OVS plugin does.

        :param port: the Neutron port dict (``id``, ``mac_address``).
        :param ifname: an existing kernel device (tap, veth end).
        :param vm_uuid: ``external_ids:vm-uuid`` (the container).
        """
        self.vsctl(
            '--', '--may-exist', 'add-port', self.integration_bridge, ifname,
            '--', 'set', 'Interface', ifname,
            'external_ids:iface-id=%s' % port['id'],
            'external_ids:iface-status=active',
            'external_ids:attached-mac=%s' % port['mac_address'],
            'external_ids:vm-uuid=%s' % vm_uuid)

    def unplug_vif(self, ifname):
        """Remove a device from br-int (it may be gone already)."""
        self.vsctl('--', '--if-exists', 'del-port', self.integration_bridge,
                   ifname)

    def wait_port(self, port_id, status='ACTIVE', timeout=60):
        """Wait until a port has ``status``.

        :returns: the port dict.
        """
        found = {}

        def check():
            found['port'] = self.call('GET', '/v2.0/ports/%s' %
                                      port_id)['port']
            return found['port']['status'] == status

        try:
            self._wait('port %s %s' % (port_id, status), check, timeout,
                       SERVICES)
        except NeutronEnvironmentError as e:
            raise NeutronEnvironmentError('%s\nlast port: %s' % (
                e, found.get('port')))
        return found['port']

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    """``up`` or ``down`` an environment from the command line.

    :param argv: arguments without the program name.
    :returns: exit code.
    """
    parser = argparse.ArgumentParser(
        prog='python -m kata_zun.tests.functional.neutron_env',
        description='Bring a real Neutron (ML2/OVS) up on 127.0.0.1 '
                    '(or down again).')
    parser.add_argument('--venv', default=os.path.dirname(
        os.path.dirname(os.path.abspath(sys.executable))))
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--auth-url')
    parser.add_argument('--admin-password')
    parser.add_argument('--host', help='the agent host (zun-compute host)')
    parser.add_argument('--firewall-driver', default='openvswitch')
    parser.add_argument('action', choices=('up', 'down'))
    args = parser.parse_args(argv)
    env = NeutronEnvironment(args.venv, args.workdir, host=args.host,
                             firewall_driver=args.firewall_driver)
    try:
        if args.action == 'down':
            env.stop()
            return 0
        if not (args.auth_url and args.admin_password):
            parser.error('up needs --auth-url and --admin-password')
        env.start(args.auth_url, args.admin_password)
    except zun_env.ZunEnvironmentError as e:
        _log(str(e))
        return 1
    print('Neutron is up at %s: agent host %s, br-int %s, OVSDB %s, logs '
          'in %s' % (env.url, env.host, env.integration_bridge,
                     env.ovsdb_connection, env.log_dir))
    return 0


if __name__ == '__main__':
    sys.exit(main())
