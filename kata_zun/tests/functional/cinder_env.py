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

"""A real Cinder on this machine, for end-to-end tests.

:class:`CinderEnvironment` runs, all on 127.0.0.1:

- cinder-api (``cinder.wsgi.api`` under gunicorn) with keystone auth;
- cinder-scheduler and cinder-volume, talking over a RabbitMQ virtual
  host of their own;
- a fresh MariaDB database, its schema from ``cinder-manage db sync`` or
  from the dump cache that :class:`~zun_env.ServiceHarness` keeps.

cinder-volume has one backend, ``kzt``, whose driver is
:class:`~kata_zun.tests.functional.cinder_backend.SparseFileDriver`:
volumes are sparse files under ``<workdir>/volumes``, handed to the host
as loop devices through os-brick's ``local`` connector. That driver is
the only stand-in (this kernel has no device-mapper and no iSCSI
initiator); everything above it is real cinder 29. One more small
stand-in answers for Nova (:mod:`fake_nova`, registered as ``compute``
unless keystone has one): cinder asks Nova whether it still uses an
attachment before it detaches one for a caller without a service token
(zun), and a Nova answers 404 for a container.

Keystone is not started here: it comes from a
:class:`~zun_env.ZunEnvironment` (``keystone``), or its URL and admin
password are passed to :meth:`CinderEnvironment.start`. start()
registers a ``cinder`` user (admin and service roles in project
``service``) and the ``block-storage`` and ``volumev3`` services with
public and internal endpoints; zun's cinderclient (``[cinder_client]``,
API version 3) looks up ``volumev3`` in the catalog.
:meth:`CinderEnvironment.prepare` needs no keystone and can run while
keystone starts.

The services run from ``venv`` (cinder, PyMySQL and gunicorn, see
``tools/install-cinder.sh``); this module itself only needs the standard
library.

Command line (keystone from a ZunEnvironment with ``--no-zun``)::

    python -m kata_zun.tests.functional.cinder_env --venv V \\
        --auth-url URL --admin-password PW --workdir W up
    python -m kata_zun.tests.functional.cinder_env --workdir W down
"""

import argparse
import concurrent.futures
import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time

from kata_zun.tests.functional import zun_env
from kata_zun.tests.functional.zun_env import HOST_IP

STATE_FILE = 'cinder-env.json'
START_TIMEOUT = 300
DEFAULT_SCHEMA_CACHE = zun_env.DEFAULT_SCHEMA_CACHE
SERVICES = ('cinder-api', 'cinder-scheduler', 'cinder-volume', 'fake-nova')
#: The volume backend of cinder-volume (``host@BACKEND``).
BACKEND = 'kzt'
#: The keystone user of the cinder services.
USER = 'cinder'
_DRIVER = 'kata_zun.tests.functional.cinder_backend.SparseFileDriver'
# The directory that holds the "kata_zun" package: cinder-volume imports
# the test driver from it.
_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))

_WSGI_APP = """import sys

# cinder parses sys.argv with oslo.config: give it its configuration
# instead of gunicorn's arguments.
sys.argv = [sys.argv[0], '--config-file', %(conf)r]

from cinder.wsgi import api  # noqa: E402

application = api.application
"""


class CinderEnvironmentError(zun_env.ZunEnvironmentError):
    """The Cinder environment could not be brought up (or down)."""


def _log(msg):
    sys.stderr.write('cinder-env: %s\n' % msg)
    sys.stderr.flush()


def privsep_conf(venv):
    """os-brick's privsep daemon without sudo, for a process that runs
    as root with oslo.privsep and os-brick from ``venv``.

    :returns: ``{section: {key: value}}``.
    """
    return {'privsep_osbrick': {'helper_command': os.path.join(
        os.path.abspath(venv), 'bin', 'privsep-helper')}}


class CinderEnvironment(zun_env.ProcessGroupServices,
                        zun_env.ServiceHarness):
    """cinder-api, cinder-scheduler and cinder-volume on loopback.

    :param venv: virtualenv with cinder, PyMySQL and gunicorn.
    :param workdir: configuration, state, volumes and logs; created if
        missing. One environment per work directory.
    :param keystone: a started (or starting)
        :class:`~zun_env.ZunEnvironment` whose keystone to use, or None
        (then pass ``auth_url`` and ``admin_password`` to start()).
    :param timeout: seconds start() waits for each service.
    :param extra_conf: ``{section: {key: value}}`` merged into
        cinder.conf last.
    :param schema_cache: directory keeping a ``mysqldump`` of the schema
        that ``cinder-manage db sync`` made, one file per cinder version
        (see :meth:`~zun_env.ServiceHarness._schema`). None: always
        migrate.
    """

    error = CinderEnvironmentError
    SERVICES = SERVICES
    _say = staticmethod(_log)

    def __init__(self, venv, workdir, keystone=None, timeout=START_TIMEOUT,
                 extra_conf=None, schema_cache=DEFAULT_SCHEMA_CACHE):
        self.venv = os.path.abspath(venv)
        self.workdir = os.path.abspath(workdir)
        self.keystone = keystone
        self.timeout = timeout
        self.extra_conf = extra_conf or {}
        self.schema_cache = schema_cache
        self.log_dir = os.path.join(self.workdir, 'logs')
        self.conf_dir = os.path.join(self.workdir, 'etc')
        #: cinder.conf of all three services.
        self.conf_path = os.path.join(self.conf_dir, 'cinder.conf')
        #: Where the test backend keeps the volumes' sparse files.
        self.volumes_dir = os.path.join(self.workdir, 'volumes')
        self.timings = {}
        self._state_path = os.path.join(self.workdir, STATE_FILE)
        os.makedirs(self.workdir, exist_ok=True)
        self._state = self._load_state()
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
        """Prefix of the database, DB user and vhost."""
        return self._state.get('name')

    @property
    def host(self):
        """``[DEFAULT] host`` of the cinder services."""
        return self._state.get('host')

    @property
    def backend_host(self):
        """The volume service's host, ``host@kzt``."""
        return '%s@%s' % (self.host, BACKEND)

    @property
    def url(self):
        """The cinder API root (``/v3`` and a project id follow)."""
        return 'http://%s:%s' % (HOST_IP, self._state['ports']['api'])

    @property
    def service_password(self):
        """Password of the ``cinder`` keystone user."""
        return self._state.get('service_password')

    # -- helpers

    def _phase(self, name, started):
        elapsed = time.monotonic() - started
        self.timings[name] = elapsed
        _log('%-28s %6.1fs' % (name, elapsed))

    def _bin(self, name):
        return os.path.join(self.venv, 'bin', name)

    def _env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        env['PATH'] = os.pathsep.join([os.path.join(self.venv, 'bin'),
                                       env.get('PATH', os.defpath)])
        env['no_proxy'] = env['NO_PROXY'] = '%s,localhost' % HOST_IP
        env.update(extra)
        return env

    def _log_path(self, name):
        return os.path.join(self.log_dir, '%s.log' % name)

    def _run(self, name, argv, timeout=300, check=True, env=None):
        """A one-shot command, its output appended to logs/<name>.log."""
        log = self._log_path(name)
        with open(log, 'ab') as f:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT,
                                  env=env or self._env(), timeout=timeout)
        if check and proc.returncode:
            raise CinderEnvironmentError('%s failed (exit %s): %s\n%s' % (
                name, proc.returncode, ' '.join(argv), zun_env._tail(log)))
        return proc.returncode

    # -- configuration

    def _db_url(self):
        return 'mysql+pymysql://%s:%s@%s:%s/%s_cinder?charset=utf8' % (
            self.name, self._state['db_password'], HOST_IP,
            zun_env.MYSQL_PORT, self.name)

    def _write_configs(self, auth_url):
        st = self._state
        for d in ('state', 'lock', 'volumes'):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        etc = os.path.join(self.venv, 'etc', 'cinder')
        paste = os.path.join(etc, 'api-paste.ini')
        if not os.path.exists(paste):
            raise CinderEnvironmentError(
                'cinder is not installed in %s (no %s): run '
                'tools/install-cinder.sh' % (self.venv, paste))
        with open(paste) as f:
            text = f.read().replace(
                '/etc/cinder/healthcheck_disable',
                os.path.join(self.workdir, 'healthcheck_disable'))
        with open(os.path.join(self.conf_dir, 'api-paste.ini'), 'w') as f:
            f.write(text)
        with open(os.path.join(self.conf_dir, 'wsgi_app.py'), 'w') as f:
            f.write(_WSGI_APP % {'conf': self.conf_path})
        authtoken = {
            'auth_type': 'password', 'auth_url': auth_url,
            'www_authenticate_uri': auth_url, 'username': USER,
            'password': st['service_password'], 'project_name': 'service',
            'user_domain_name': 'Default', 'project_domain_name': 'Default'}
        conf = {
            'DEFAULT': {
                'debug': True,
                'host': self.host,
                'my_ip': HOST_IP,
                'state_path': os.path.join(self.workdir, 'state'),
                'auth_strategy': 'keystone',
                'api_paste_config': os.path.join(self.conf_dir,
                                                 'api-paste.ini'),
                'resource_query_filters_file': os.path.join(
                    etc, 'resource_filters.json'),
                'rootwrap_config': os.path.join(etc, 'rootwrap.conf'),
                'transport_url': 'rabbit://guest:guest@%s:%s/%s' % (
                    HOST_IP, zun_env.RABBIT_PORT, self.name),
                'enabled_backends': BACKEND,
                'osapi_volume_workers': 1,
                # The services report every 2 s and count as down after
                # 20 s: a dead cinder-volume shows soon.
                'report_interval': 2,
                'service_down_time': 20,
            },
            'database': {'connection': self._db_url()},
            'keystone_authtoken': authtoken,
            'oslo_concurrency': {
                'lock_path': os.path.join(self.workdir, 'lock')},
            'coordination': {
                'backend_url': 'file://%s' % os.path.join(self.workdir,
                                                          'lock')},
            BACKEND: {
                'volume_driver': _DRIVER,
                'volume_backend_name': BACKEND,
                'sparse_volumes_dir': self.volumes_dir,
            },
        }
        zun_env._write_ini(self.conf_path,
                           zun_env._merge(conf, self.extra_conf))

    # -- bring-up steps

    def _new_state(self):
        suffix = secrets.token_hex(3)
        self._state = {
            'name': 'kzc_%s' % suffix,
            'host': 'kzc-%s' % suffix,
            'venv': self.venv,
            'db_password': secrets.token_hex(12),
            'service_password': secrets.token_hex(12),
            'ports': {'api': zun_env._free_port(),
                      'nova': zun_env._free_port()},
            'procs': {},
        }
        self._save_state()

    def _prepare_database(self):
        t = time.monotonic()
        zun_env.ensure_mariadb()
        name, pw = self.name, self._state['db_password']
        statements = ['CREATE DATABASE `%s_cinder` CHARACTER SET utf8' %
                      name]
        for host in (HOST_IP, 'localhost'):
            statements += [
                "CREATE USER '%s'@'%s' IDENTIFIED BY '%s'" % (name, host, pw),
                "GRANT ALL ON `%s_cinder`.* TO '%s'@'%s'" % (
                    name, name, host)]
        self._set(db_created=True)
        self._sql(*statements)
        self._phase('cinder database', t)
        self._schema('cinder', 'cinder', lambda: self._run(
            'cinder-manage', [self._bin('cinder-manage'), '--config-file',
                              self.conf_path, 'db', 'sync'],
            timeout=self.timeout), 'cinder-manage db sync')

    def _prepare_rabbitmq(self):
        t = time.monotonic()
        zun_env.ensure_rabbitmq()
        self._set(vhost_created=True)
        self._rabbitmqctl('add_vhost', self.name)
        self._rabbitmqctl('set_permissions', '-p', self.name, 'guest',
                          '.*', '.*', '.*')
        self._phase('cinder rabbitmq vhost', t)

    def prepare(self):
        """Database and schema, RabbitMQ vhost, configuration.

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
            # cinder-manage only reads [database].
            self._write_configs('http://%s:5000/v3' % HOST_IP)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(self._prepare_database),
                           pool.submit(self._prepare_rabbitmq)]
                for future in futures:
                    future.result()
        except BaseException:
            self._stop_after_failure()
            raise
        self._prepared = True
        self._phase('cinder prepare', t)

    def _stop_after_failure(self):
        _log('start failed: stopping what was started')
        try:
            self.stop()
        except zun_env.ZunEnvironmentError as e:
            _log(str(e))

    def _identity_client(self):
        if self._identity is None:
            if not self._state.get('auth_url'):
                raise CinderEnvironmentError('not started')
            self._identity = zun_env._Identity(
                self._state['auth_url'], self._state['admin_password'])
        return self._identity

    def request(self, method, path, body=None, headers=None):
        """An admin request to the cinder API, in project ``admin``.

        :param path: relative to the project's endpoint, e.g.
            ``/volumes/detail``.
        :returns: ``(status, body)``.
        """
        idc = self._identity_client()
        status, _, resp = idc.request(
            method, idc.endpoint('volumev3') + path, body, headers)
        return status, resp

    def call(self, method, path, body=None, ok=(200, 201, 202, 204),
             headers=None):
        """Like :meth:`request`; raises unless the status is in ``ok``.

        :returns: the decoded body.
        """
        status, resp = self.request(method, path, body, headers)
        return zun_env._check(status, resp, '%s %s' % (method, path), ok)

    def volume(self, volume_id):
        """:returns: a volume as the cinder API shows it (for polls:
            no client process per look).
        """
        return self.call('GET', '/volumes/%s' % volume_id)['volume']

    def _register(self):
        """The ``cinder`` user, the services and their endpoints.

        Keystone is slow on a loaded machine: independent calls run in
        parallel.
        """
        idc = self._identity_client()
        idc.token()

        def call(method, path, body, what):
            status, _, resp = idc.request(method, path, body)
            return zun_env._check(status, resp, what)

        def project():
            projects = call('GET', '/projects?name=service', None,
                            'find project service')['projects']
            if projects:
                return projects[0]['id']
            return call('POST', '/projects', {'project': {
                'name': 'service', 'domain_id': 'default'}},
                'create project')['project']['id']

        def user():
            user_id = call('POST', '/users', {'user': {
                'name': USER, 'domain_id': 'default',
                'password': self._state['service_password']}},
                'create user %s' % USER)['user']['id']
            self._set(keystone_user=user_id)
            return user_id

        def service(stype, name, url):
            service_id = call('POST', '/services', {'service': {
                'type': stype, 'name': name, 'enabled': True}},
                'create %s service' % stype)['service']['id']
            with self._lock:
                self._state.setdefault('keystone_services', []).append(
                    service_id)
            self._save_state()
            return service_id

        def endpoint(service_id, stype, url, interface):
            call('POST', '/endpoints', {'endpoint': {
                'service_id': service_id.result(), 'url': url,
                'interface': interface, 'region_id': zun_env.REGION}},
                'create %s endpoint' % stype)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            existing = pool.submit(call, 'GET', '/services', None,
                                   'list services')
            project_id = pool.submit(project)
            # Like DevStack: admin, and the "service" role that cinder's
            # policies ask of services (e.g. for attachments).
            roles = [pool.submit(zun_env.ZunEnvironment._ensure_role, call,
                                 role) for role in ('admin', 'service')]
            types = {s['type'] for s in existing.result()['services']}
            for stype in ('block-storage', 'volumev3'):
                if stype in types:
                    raise CinderEnvironmentError(
                        'keystone already has a %s service: one Cinder per '
                        'keystone' % stype)
            user_id = pool.submit(user)
            url = self.url + '/v3/%(project_id)s'
            endpoints = [('block-storage', 'cinder', url),
                         ('volumev3', 'cinderv3', url)]
            if 'compute' not in types:
                # See fake_nova: cinder asks Nova before it detaches.
                endpoints.append(('compute', 'nova', 'http://%s:%s/v2.1' % (
                    HOST_IP, self._state['ports']['nova'])))
            futures = []
            for stype, name, url in endpoints:
                service_id = pool.submit(service, stype, name, url)
                futures += [pool.submit(endpoint, service_id, stype, url,
                                        interface)
                            for interface in ('public', 'internal')]
            futures += [pool.submit(call, 'PUT',
                                    '/projects/%s/users/%s/roles/%s' % (
                                        project_id.result(),
                                        user_id.result(), role.result()),
                                    None, 'grant role')
                        for role in roles]
            for future in futures:
                future.result()

    def _start_services(self):
        env = self._env(PYTHONPATH=_REPO)
        self._spawn('cinder-api', [
            self._bin('gunicorn'), '--no-control-socket',
            '--bind', '%s:%s' % (HOST_IP, self._state['ports']['api']),
            '--workers', '1', '--worker-class', 'gthread', '--threads', '4',
            '--timeout', '120', '--chdir', self.conf_dir,
            '--pythonpath', self.conf_dir,
            '--name', 'cinder-api-%s' % self.name,
            'wsgi_app:application'], env=env)
        conf = ['--config-file', self.conf_path]
        self._spawn('fake-nova', [
            self._bin('python'), os.path.join(_HERE, 'fake_nova.py'),
            '--host', HOST_IP, '--port', str(self._state['ports']['nova'])])
        self._spawn('cinder-scheduler',
                    [self._bin('cinder-scheduler')] + conf, env=env)
        self._spawn('cinder-volume', [self._bin('cinder-volume')] + conf,
                    env=env)

    def services(self):
        """The cinder services as ``GET /os-services`` shows them."""
        return self.call('GET', '/os-services')['services']

    def _services_up(self):
        up = {(s['binary'], s['host']) for s in self.services()
              if s['state'] == 'up' and s['status'] == 'enabled'}
        return {('cinder-scheduler', self.host),
                ('cinder-volume', self.backend_host)} <= up

    def _backend_reported(self):
        # The scheduler places volumes only on pools it has capacities
        # of: wait for the first report of cinder-volume.
        pools = self.call('GET', '/scheduler-stats/get_pools')['pools']
        return any(p['name'].startswith(self.backend_host) for p in pools)

    def start(self, auth_url=None, admin_password=None, keystone_ready=None):
        """Bring the environment up; wait until a volume can be made.

        The cinder services boot without keystone (it is only asked when
        a request comes in), so keystone may still be starting: pass
        ``keystone_ready``, called (in this thread) before the first
        request to keystone, to block until it is up.

        When start() fails, it calls :meth:`stop` before raising.

        :param auth_url: keystone v3 URL; default: the ``keystone``
            environment's.
        :param admin_password: password of ``admin`` (project ``admin``);
            default: the ``keystone`` environment's.
        :param keystone_ready: None, or a callable that returns when
            keystone answers (e.g. ``future.result``) and raises if it
            never will.
        :raises CinderEnvironmentError: with the tail of the logs.
        """
        started = time.monotonic()
        if auth_url is None or admin_password is None:
            if self.keystone is None:
                raise CinderEnvironmentError(
                    'start() needs auth_url and admin_password, or a '
                    'keystone environment')
            auth_url = auth_url or self.keystone.auth_url
            admin_password = admin_password or self.keystone.admin_password
        self.prepare()
        try:
            self._identity = None
            self._set(auth_url=auth_url, admin_password=admin_password)
            self._write_configs(auth_url)
            t = time.monotonic()
            self._start_services()
            if keystone_ready is not None:
                keystone_ready()
            self._register()
            self._phase('cinder keystone registration', t)
            self._wait('cinder-api', lambda: zun_env._http(
                'GET', self.url + '/', timeout=5)[0] < 500, self.timeout,
                ('cinder-api',))
            self._phase('cinder-api up', t)
            self._wait('cinder services up', self._services_up,
                       self.timeout)
            self._wait('cinder-volume capacity report',
                       self._backend_reported, self.timeout)
            self._phase('cinder-volume up', t)
        except BaseException:
            self._stop_after_failure()
            raise
        self._phase('cinder start total', started)

    def start_with_keystone(self):
        """Start the ``keystone`` environment and this one side by side.

        Cinder boots without keystone (only requests need it): it is
        prepared while keystone starts, and started once keystone has its
        admin password (:meth:`start` then waits for keystone itself).

        :raises: what either start raises.
        """
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            keystone = pool.submit(self.keystone.start)
            self.prepare()
            while not (self.keystone.admin_password or keystone.done()):
                time.sleep(0.05)
            self.start(keystone_ready=keystone.result)

    def stop(self):
        """Kill the services; remove volumes, database, vhost, keystone
        user and services.

        Loop devices of the volumes are detached. Safe to call more than
        once and after a failed start; also works from another process
        (it reads ``<workdir>/cinder-env.json``).
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

        for name in list(SERVICES) + list(self._state.get('procs', {})):
            attempt('kill %s' % name, self._kill, name)
        # Volumes still connected when the services died keep their loop
        # devices: the files go, so must the devices.
        attempt('detach loop devices', self._detach_loops)
        name = self.name
        jobs = [(self._unregister, attempt)]
        if self._state.get('db_created') and zun_env._port_open(
                zun_env.MYSQL_PORT):
            jobs.append((attempt, 'drop database', self._sql,
                         'DROP DATABASE IF EXISTS `%s_cinder`' % name,
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
        shutil.rmtree(self.volumes_dir, ignore_errors=True)
        self._state = {}
        self._identity = None
        self._prepared = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path)
        self._phase('cinder stop', t)
        if errors:
            raise CinderEnvironmentError('stop: ' + '; '.join(errors))

    def loop_devices(self):
        """Loop devices backed by a file of this environment's volumes.

        :returns: ``{device: backing file}``.
        """
        found = {}
        for path in glob.glob('/sys/block/loop*/loop/backing_file'):
            with contextlib.suppress(OSError):
                with open(path) as f:
                    backing = f.read().strip()
                # A deleted backing file reads "<path> (deleted)".
                if backing.startswith(self.volumes_dir + os.sep):
                    found['/dev/' + path.split('/')[3]] = backing
        return found

    def _detach_loops(self):
        for device in self.loop_devices():
            subprocess.run(['losetup', '--detach', device],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)

    def _unregister(self, attempt):
        user = self._state.get('keystone_user')
        services = self._state.get('keystone_services', [])
        if not (user or services) or not self._state.get('auth_url'):
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
        for service in services:
            attempt('delete service', delete, '/services/%s' % service)
        if user:
            attempt('delete user', delete, '/users/%s' % user)

    @staticmethod
    def zun_conf(zun_venv):
        """What zun.conf needs to use this Cinder.

        zun's cinderclient finds ``volumev3`` in the catalog with the
        credentials of ``[keystone_auth]``; the ``cinder`` volume driver
        must be enabled. zun-compute asks os-brick for its connector
        properties, which starts a privsep daemon with ``sudo
        zun-rootwrap``; there is no sudo here and zun-compute runs as
        root, so ``[privsep_osbrick] helper_command`` starts
        ``privsep-helper`` directly (test_cinder_env does the same).

        :param zun_venv: the virtualenv of zun-compute.
        :returns: ``{section: {key: value}}`` for ``extra_conf``.
        """
        return dict({'cinder_client': {'region_name': zun_env.REGION,
                                       'endpoint_type': 'publicURL',
                                       'api_version': '3'},
                     'volume': {'driver_list': 'cinder,local'}},
                    **privsep_conf(zun_venv))

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
        prog='python -m kata_zun.tests.functional.cinder_env',
        description='Bring a real Cinder up on 127.0.0.1 (or down again).')
    parser.add_argument('--venv', default=os.path.dirname(
        os.path.dirname(os.path.abspath(sys.executable))))
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--auth-url')
    parser.add_argument('--admin-password')
    parser.add_argument('action', choices=('up', 'down'))
    args = parser.parse_args(argv)
    env = CinderEnvironment(args.venv, args.workdir)
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
    print('Cinder is up at %s: volume service %s, volumes in %s, logs in '
          '%s' % (env.url, env.backend_host, env.volumes_dir, env.log_dir))
    return 0


if __name__ == '__main__':
    sys.exit(main())
