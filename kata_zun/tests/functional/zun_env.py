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

"""A real OpenStack Zun on this machine, for end-to-end tests.

:class:`ZunEnvironment` brings up keystone and placement (under gunicorn),
a Neutron stand-in (:mod:`fake_neutron`), zun-api and zun-compute, all on
127.0.0.1 with ports picked at run time, fresh MariaDB databases, and a
RabbitMQ virtual host of their own, so that several environments can run
side by side. zun-compute loads the container driver named by ``driver``
from the ``zun.container.driver`` entry points.

The OpenStack services run from ``venv`` (zun, keystone,
openstack-placement, python-openstackclient, python-zunclient, gunicorn
and pymysql installed); this module itself only needs the standard
library (``zun_client()`` also needs keystoneauth1 and python-zunclient
where it is called). RabbitMQ and MariaDB are installed from Debian
packages and started when they are not listening yet. Each database
gets its schema from a ``mysqldump`` that the first environment made
after running the migrations, kept per service version in
``~/.cache/kata-zun`` (see :meth:`ServiceHarness._schema`).

Command line, to leave an environment running for a human (``openrc``
is written in the work directory)::

    python -m kata_zun.tests.functional.zun_env --venv V --workdir W up
    python -m kata_zun.tests.functional.zun_env --workdir W down
"""

import argparse
import base64
import collections
import concurrent.futures
import configparser
import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HOST_IP = '127.0.0.1'
REGION = 'RegionOne'
# zun 18.0.0 (and python-zunclient 5.5) support container API 1.1-1.40.
CONTAINER_API_VERSION = '1.40'
RABBIT_PORT = 5672
MYSQL_PORT = 3306
MYSQL_SOCKET = '/run/mysqld/mysqld.sock'
STATE_FILE = 'zun-env.json'
START_TIMEOUT = 300
LOG_TAIL_LINES = 40
_INFRA_LOCK = '/tmp/kata-zun-env-infra.lock'
_HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the schema dumps of :meth:`ServiceHarness._schema` are kept.
DEFAULT_SCHEMA_CACHE = os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
    'kata-zun')
# What renders every service's migrations into DDL, next to the service.
_SCHEMA_TOOLS = ('SQLAlchemy', 'alembic', 'oslo.db', 'sqlalchemy-migrate')
# Part of every cache key: bump it when the dumps change (mysqldump
# options, what is kept).
_SCHEMA_CACHE_FORMAT = 1
# The last statement of a mysqldump: a dump without it is cut short.
_DUMP_END = b'SET SQL_NOTES=@OLD_SQL_NOTES */;'

# Upstream zun's etc/zun/api-paste.ini: not every installation ships it.
_API_PASTE = """[composite:main]
use = egg:Paste#urlmap
/: zun_api_pipeline
/healthcheck: healthcheck

[pipeline:zun_api_pipeline]
pipeline = cors request_id osprofiler authtoken api_v1

[app:api_v1]
paste.app_factory = zun.api.app:app_factory

[filter:authtoken]
acl_public_routes = /, /v1
paste.filter_factory = %(authtoken)s

[filter:osprofiler]
paste.filter_factory = zun.common.profiler:WsgiMiddleware.factory

[filter:request_id]
paste.filter_factory = oslo_middleware:RequestId.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = zun

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = %(workdir)s/healthcheck_disable
"""

# keystone and placement parse sys.argv with oslo.config: hide gunicorn's.
_WSGI_SHIM = """import sys

sys.argv = sys.argv[:1]

from %(module)s import %(name)s  # noqa: E402

application = %(call)s
"""

# Runs in the venv's Python, which has pymysql: one statement per argument.
_SQL_SCRIPT = """import sys
import pymysql
kw = dict(user='root', autocommit=True, connect_timeout=10)
try:
    conn = pymysql.connect(unix_socket=%(socket)r, **kw)
except Exception:
    conn = pymysql.connect(host=%(host)r, port=%(port)d, **kw)
with conn.cursor() as cur:
    for statement in sys.argv[1:]:
        cur.execute(statement)
"""


class ZunEnvironmentError(Exception):
    """The environment could not be brought up (or down)."""


def _log(msg):
    sys.stderr.write('zun-env: %s\n' % msg)
    sys.stderr.flush()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST_IP, 0))
        return s.getsockname()[1]


def _port_open(port, host=HOST_IP):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def _wait_port(port, timeout, what):
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise ZunEnvironmentError('%s is not listening on %s:%s after '
                                      '%ss' % (what, HOST_IP, port, timeout))
        time.sleep(0.3)


def _tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            data = f.read().decode('utf-8', 'replace')
    except OSError as e:
        return '(no log: %s)' % e
    return '\n'.join(line[:500] for line in data.splitlines()[-lines:])


def _proc_start_time(pid):
    """The start time of a process in clock ticks, or None if it is gone.

    Used with the pid to make sure a recorded process is still the same.
    A zombie counts as gone.
    """
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(')', 1)[1].split()
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


def _http(method, url, body=None, headers=None, timeout=30):
    """One JSON HTTP request, never through a proxy.

    :returns: ``(status, headers, decoded JSON body or None)``.
    """
    data = None if body is None else json.dumps(body).encode('utf-8')
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header('Accept', 'application/json')
    if data is not None:
        req.add_header('Content-Type', 'application/json')
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, resp_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, resp_headers, raw = e.code, e.headers, e.read()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode('utf-8', 'replace')
    return status, resp_headers, decoded


def _check(status, body, what, ok=(200, 201, 204)):
    if status not in ok:
        raise ZunEnvironmentError('%s failed: HTTP %s %s' % (
            what, status, body))
    return body


def _write_ini(path, sections):
    parser = configparser.RawConfigParser()
    parser.optionxform = str
    for section, options in sections.items():
        if section != 'DEFAULT' and not parser.has_section(section):
            parser.add_section(section)
        for key, value in options.items():
            if isinstance(value, (list, tuple)):
                value = ','.join(str(v) for v in value)
            parser.set(section, key, str(value))
    with open(path, 'w') as f:
        parser.write(f)


def _merge(base, extra):
    """Merge ``{section: {key: value}}`` dicts, ``extra`` winning."""
    merged = {section: dict(options) for section, options in base.items()}
    for section, options in (extra or {}).items():
        merged.setdefault(section, {}).update(options)
    return merged


def _apt_install(packages):
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    argv = ['apt-get', 'install', '-y', '-q', '--no-install-recommends']
    _log('installing %s' % ' '.join(packages))
    if subprocess.run(argv + packages, env=env, stdin=subprocess.DEVNULL,
                      capture_output=True).returncode == 0:
        return
    subprocess.run(['apt-get', 'update', '-q'], env=env, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    proc = subprocess.run(argv + packages, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True)
    if proc.returncode:
        raise ZunEnvironmentError('apt-get install %s failed: %s' % (
            ' '.join(packages), proc.stderr.decode('utf-8', 'replace')))


@contextlib.contextmanager
def _infra_lock():
    # Several test processes may bring environments up at the same time.
    with open(_INFRA_LOCK, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_rabbitmq(timeout=120):
    """Make sure RabbitMQ listens on 127.0.0.1:5672; install/start it.

    :param timeout: seconds to wait for the broker to come up.
    """
    with _infra_lock():
        if _port_open(RABBIT_PORT):
            return
        if not shutil.which('rabbitmq-server'):
            _apt_install(['rabbitmq-server'])
        if not _port_open(RABBIT_PORT):
            _log('starting rabbitmq-server')
            subprocess.run(['rabbitmq-server', '-detached'], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
        _wait_port(RABBIT_PORT, timeout, 'RabbitMQ')


def ensure_mariadb(timeout=120):
    """Make sure MariaDB listens on 127.0.0.1:3306; install/start it.

    :param timeout: seconds to wait for the server to come up.
    """
    with _infra_lock():
        if _port_open(MYSQL_PORT):
            return
        if not os.path.exists('/usr/sbin/mariadbd'):
            _apt_install(['mariadb-server'])
        if not _port_open(MYSQL_PORT):
            _log('starting mariadbd')
            os.makedirs('/run/mysqld', exist_ok=True)
            shutil.chown('/run/mysqld', 'mysql', 'mysql')
            subprocess.run(['start-stop-daemon', '--start', '--oknodo',
                            '--background', '--exec', '/usr/sbin/mariadbd',
                            '--', '--user=mysql'],
                           check=True, stdin=subprocess.DEVNULL,
                           capture_output=True)
        _wait_port(MYSQL_PORT, timeout, 'MariaDB')


class MariaDBServer(object):
    """Where an environment's databases live: the host's shared MariaDB
    (the default), or a private one (``infra_servers.PrivateMariaDB``).

    :param port: TCP port on 127.0.0.1.
    :param socket: unix socket of root's connections (tried first).
    """

    def __init__(self, port=MYSQL_PORT, socket=MYSQL_SOCKET):
        self.port = port
        self.socket = socket

    def ensure(self):
        """Make sure the server answers (install and start the host's)."""
        ensure_mariadb()

    def mysql_argv(self, program):
        """``mysql`` or ``mysqldump`` as root, socket or TCP.

        :returns: an argv list.
        """
        if os.path.exists(self.socket):
            conn = ['--socket=%s' % self.socket]
        else:
            conn = ['--host=%s' % HOST_IP, '--port=%s' % self.port]
        return [program, '--user=root'] + conn


class RabbitMQServer(object):
    """The broker of an environment: the host's shared RabbitMQ (the
    default), or a private one (``infra_servers.PrivateRabbitMQ``).

    :param port: AMQP port on 127.0.0.1.
    """

    def __init__(self, port=RABBIT_PORT):
        self.port = port

    def ensure(self):
        """Make sure the broker answers (install and start the host's)."""
        ensure_rabbitmq()

    def ctl(self, *args):
        """``rabbitmqctl`` on this broker.

        :returns: ``(argv, env)`` for subprocess.
        """
        return ['rabbitmqctl'] + list(args), None


def _mysql_argv(program, server=None):
    """``mysql`` or ``mysqldump`` as root on ``server`` (default: the
    host's shared MariaDB).
    """
    return (server or MariaDBServer()).mysql_argv(program)


@functools.lru_cache(maxsize=None)
def _mariadb_version(server=None):
    """``SELECT VERSION()`` of the server (it sets defaults in the DDL)."""
    proc = subprocess.run(_mysql_argv('mysql', server) + [
        '--batch', '--skip-column-names', '--execute=SELECT VERSION()'],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if proc.returncode:
        raise ZunEnvironmentError('mysql SELECT VERSION() failed: %s' %
                                  proc.stderr.decode('utf-8', 'replace'))
    return proc.stdout.decode('utf-8', 'replace').strip()


def _dist_version(venv, name):
    """Version of distribution ``name`` installed in ``venv``, or None.

    None also when several versions seem installed (stale metadata).
    """
    path = glob.glob(os.path.join(venv, 'lib', 'python*', 'site-packages'))
    versions = {dist.version for dist in
                importlib.metadata.distributions(name=name, path=path)}
    return versions.pop() if len(versions) == 1 else None


def ensure_lspci():
    """zun-compute never registers its compute node without lspci."""
    with _infra_lock():
        if not shutil.which('lspci'):
            _apt_install(['pciutils'])


class _Identity(object):
    """A keystone v3 password session of the admin, with urllib.

    :param auth_url: e.g. ``http://127.0.0.1:5000/v3``.
    :param password: the admin password.
    """

    TOKEN_LIFETIME = 1800

    def __init__(self, auth_url, password):
        self.auth_url = auth_url
        self.password = password
        self._token = None
        self._catalog = None
        self._issued = 0

    def _authenticate(self):
        body = {'auth': {
            'identity': {'methods': ['password'], 'password': {'user': {
                'name': 'admin', 'domain': {'name': 'Default'},
                'password': self.password}}},
            'scope': {'project': {'name': 'admin',
                                  'domain': {'name': 'Default'}}}}}
        status, headers, resp = _http('POST', self.auth_url + '/auth/tokens',
                                      body)
        _check(status, resp, 'keystone authentication')
        self._token = headers['X-Subject-Token']
        self._catalog = resp['token'].get('catalog', [])
        self._issued = time.monotonic()

    def token(self, refresh=False):
        """A valid admin token, issued again when old or on request."""
        if (refresh or self._token is None or
                time.monotonic() - self._issued > self.TOKEN_LIFETIME):
            self._authenticate()
        return self._token

    def endpoint(self, service_type, refresh=False):
        """The public endpoint URL of a service type from the catalog."""
        self.token(refresh=refresh)
        for service in self._catalog:
            if service['type'] == service_type:
                for ep in service['endpoints']:
                    if ep['interface'] == 'public':
                        return ep['url'].rstrip('/')
        if not refresh:
            return self.endpoint(service_type, refresh=True)
        raise ZunEnvironmentError('no %s endpoint in the catalog' %
                                  service_type)

    def request(self, method, url, body=None, headers=None):
        """An authenticated request; ``url`` may be relative to auth_url.

        :returns: ``(status, headers, body)`` as :func:`_http`.
        """
        if not url.startswith('http'):
            url = self.auth_url + url
        all_headers = dict(headers or {}, **{'X-Auth-Token': self.token()})
        result = _http(method, url, body, all_headers)
        if result[0] == 401:
            all_headers['X-Auth-Token'] = self.token(refresh=True)
            result = _http(method, url, body, all_headers)
        return result


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def find_venv(env_var, name, program):
    """The virtualenv of another OpenStack service: ``$env_var``, ``name``
    (e.g. ``.venv-neutron``) in this repository, or the running one.

    :param program: a console script the virtualenv must have.
    :returns: its path, or None if there is none.
    """
    for venv in (os.environ.get(env_var), os.path.join(_REPO, name),
                 sys.prefix):
        if venv and os.path.exists(os.path.join(venv, 'bin', program)):
            return venv
    return None


class ProcessGroupServices(object):
    """Long-running services, each in its own process group, tracked in
    the harness's state file (``_state``, ``_lock``, ``_save_state``):
    what neutron_env and cinder_env share. Needs ``_popens`` (a dict),
    ``workdir``, ``_env()``, ``_log_path()``, ``error`` and ``SERVICES``.
    """

    #: Every service this harness may run, in start order.
    SERVICES = ()

    def _spawn(self, name, argv, env=None):
        """Start a long-running service in its own process group."""
        log = self._log_path(name)
        with open(log, 'ab') as f:
            f.write(('==== %s starting: %s\n' % (
                time.strftime('%Y-%m-%d %H:%M:%S'),
                ' '.join(argv))).encode('utf-8'))
            f.flush()
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=f, stderr=subprocess.STDOUT,
                                     env=env or self._env(),
                                     cwd=self.workdir,
                                     start_new_session=True, close_fds=True)
        self._popens[name] = popen
        with self._lock:
            self._state.setdefault('procs', {})[name] = {
                'pid': popen.pid,
                'start': _proc_start_time(popen.pid)}
        self._save_state()

    def alive(self, name):
        """Whether a service of this environment still runs.

        :param name: one of :attr:`SERVICES`.
        """
        info = self._state.get('procs', {}).get(name)
        if not info:
            return False
        popen = self._popens.get(name)
        if popen is not None:
            return popen.poll() is None
        return _proc_start_time(info['pid']) == info['start']

    def _kill(self, name, sig=signal.SIGKILL, timeout=20):
        """Signal a service's process group; wait until it is gone."""
        info = self._state.get('procs', {}).get(name)
        if not info:
            return
        if self.alive(name):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(info['pid'], sig)
            deadline = time.monotonic() + timeout
            while self.alive(name) and time.monotonic() < deadline:
                time.sleep(0.05)
        # SIGKILL the whole group: gunicorn workers, service children...
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info['pid'], signal.SIGKILL)
        popen = self._popens.pop(name, None)
        if popen is not None:
            popen.wait(10)
        with self._lock:
            self._state.get('procs', {}).pop(name, None)
        self._save_state()

    def _check_alive(self, *names):
        for name in names or self.SERVICES:
            if name in self._state.get('procs', {}) and not self.alive(name):
                raise self.error('%s exited:\n%s' % (
                    name, _tail(self._log_path(name))))

    def _wait(self, what, predicate, timeout, services=()):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            self._check_alive(*services)
            try:
                if predicate():
                    return
            except (OSError, ZunEnvironmentError) as e:
                last = e
            if time.monotonic() > deadline:
                raise self.error(
                    '%s: not ready after %ss (last error: %s)\n%s' % (
                        what, timeout, last, self.logs_tail()))
            time.sleep(0.2)

    def logs_tail(self):
        """The last lines of every service log, for error messages."""
        return '\n'.join(
            '---- %s (%s)\n%s' % (name, self._log_path(name),
                                  _tail(self._log_path(name)))
            for name in self.SERVICES if os.path.exists(self._log_path(name)))


class ServiceHarness(object):
    """What ZunEnvironment and neutron_env.NeutronEnvironment share: the
    state file (``_state_path``, ``_state``, ``_lock``), SQL through the
    venv's PyMySQL (``_run``, ``_bin``), rabbitmqctl, and database
    schemas from a cache (``name``, ``venv``, ``timeout``,
    ``schema_cache``, ``_phase``).
    """

    #: The error raised for a failed command.
    error = None
    #: Directory of the schema dumps; None: always run the migrations.
    schema_cache = None
    #: Logs a line (with the harness's prefix).
    _say = staticmethod(_log)

    def _load_state(self):
        try:
            with open(self._state_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save_state(self):
        with self._lock:
            tmp = self._state_path + '.tmp'
            with open(tmp, 'w') as f:
                json.dump(self._state, f, indent=1, sort_keys=True)
            os.replace(tmp, self._state_path)

    #: The MariaDBServer and RabbitMQServer in use (the host's shared
    #: ones unless a harness is given others).
    mariadb = MariaDBServer()
    rabbitmq = RabbitMQServer()

    def _sql(self, *statements):
        script = _SQL_SCRIPT % {'socket': self.mariadb.socket,
                                'host': HOST_IP, 'port': self.mariadb.port}
        self._run('mysql', [self._bin('python'), '-c', script] +
                  list(statements), timeout=120)

    def _rabbitmqctl(self, *args, check=True):
        argv, env = self.rabbitmq.ctl(*args)
        proc = subprocess.run(argv, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=120)
        if check and proc.returncode:
            raise self.error('rabbitmqctl %s failed: %s' % (
                ' '.join(args), proc.stderr.decode('utf-8', 'replace')))
        return proc.returncode

    # -- database schemas, migrated once per version

    def _schema(self, service, dist, migrate, phase, depends=()):
        """Give the empty database ``<name>_<service>`` its schema.

        ``migrate()`` runs the service's migration tool; the first time,
        a ``mysqldump`` of the whole database it made (tables, and rows
        such as alembic's version table or keystone's root domain) is
        kept in :attr:`schema_cache`, and later environments load that
        dump instead, which takes a fraction of the time. A missing or
        unusable dump means migrating (and writing the dump again).

        :param service: the database suffix, also in the timing lines.
        :param dist: the service's distribution, e.g. ``keystone``.
        :param migrate: runs the migrations; raises when they fail.
        :param phase: the timing line of a real migration.
        :param depends: more distributions the schema depends on.
        :returns: True when the schema came from the cache.
        """
        t = time.monotonic()
        database = '%s_%s' % (self.name, service)
        cache = self._schema_cache_path(dist, depends)
        if cache and self._load_schema(cache, database):
            self._phase('%s schema from cache' % service, t)
            return True
        migrate()
        self._phase(phase, t)
        if cache:
            self._dump_schema(cache, database)
        return False

    def _schema_cache_path(self, dist, depends=()):
        """The dump file for ``dist`` as installed here, or None.

        Its name holds the version of ``dist`` and a digest of what else
        shapes the schema: the migration machinery (SQLAlchemy, alembic,
        oslo.db), ``depends``, the MariaDB version and the dump format.
        """
        if not self.schema_cache:
            return None
        version = _dist_version(self.venv, dist)
        if not version:
            return None
        try:
            key = ['%s=%s' % (name, _dist_version(self.venv, name))
                   for name in _SCHEMA_TOOLS + tuple(depends)]
            key += ['%s=%s' % (dist, version),
                    'mariadb=%s' % _mariadb_version(self.mariadb),
                    'format=%s' % _SCHEMA_CACHE_FORMAT]
        except (OSError, subprocess.SubprocessError, ZunEnvironmentError) as e:
            self._say('no schema cache for %s: %s' % (dist, e))
            return None
        digest = hashlib.sha256('\n'.join(key).encode('utf-8')).hexdigest()
        return os.path.join(self.schema_cache, '%s-%s-%s-schema.sql' % (
            dist, version, digest[:12]))

    def _mysql(self, program, database, args=(), input=b'', stdout=None):
        """``mysql`` or ``mysqldump`` as root on ``database``."""
        argv = _mysql_argv(program, self.mariadb) + list(args) + [database]
        proc = subprocess.run(argv, input=input,
                              stdout=stdout or subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=self.timeout)
        if proc.returncode:
            raise self.error('%s failed (exit %s): %s' % (
                ' '.join(argv), proc.returncode,
                proc.stderr.decode('utf-8', 'replace')))

    def _load_schema(self, cache, database):
        """Load a dump; False when there is none or it does not load."""
        try:
            with open(cache, 'rb') as f:
                dump = f.read()
        except FileNotFoundError:
            return False
        except OSError as e:
            self._say('schema cache %s unreadable: %s' % (cache, e))
            return False
        if not dump.rstrip().endswith(_DUMP_END):
            self._say('schema cache %s is cut short, migrating' % cache)
            return False
        try:
            self._mysql('mysql', database, input=dump)
            return True
        except (OSError, subprocess.SubprocessError, self.error) as e:
            self._say('schema cache %s does not load, migrating: %s' % (
                cache, e))
        # Start again from an empty database (grants stay).
        self._sql('DROP DATABASE IF EXISTS `%s`' % database,
                  'CREATE DATABASE `%s` CHARACTER SET utf8' % database)
        return False

    def _dump_schema(self, cache, database):
        """Write the dump of ``database``: atomically, never failing.

        Several environments may write the same file at the same time:
        each renames a complete dump of its own over it, readers see one
        or the other.
        """
        tmp = None
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(cache) + '.',
                                       suffix='.tmp',
                                       dir=os.path.dirname(cache))
            with os.fdopen(fd, 'w+b') as f:
                self._mysql('mysqldump', database, [
                    '--single-transaction', '--skip-comments',
                    '--skip-dump-date', '--routines', '--events'], stdout=f)
                f.seek(0)
                if b'DEFINER=' in f.read():
                    # Triggers, views or routines run as their definer, a
                    # user of this environment only: not reusable.
                    self._say('%s: not caching a schema with definers' %
                              database)
                    return
                # Renamed, it must have its data even after a crash.
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache)
            tmp = None
        except (OSError, subprocess.SubprocessError, self.error) as e:
            self._say('could not write the schema cache %s: %s' % (cache, e))
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def quiet_keystoneauth():
    """keystoneauth1 logs every request and answer body at DEBUG: the
    tests' API polls doubled the log a CI run prints. Its warnings and
    errors still show.
    """
    logging.getLogger('keystoneauth').setLevel(logging.INFO)


class ZunEnvironment(ServiceHarness):
    """Keystone, placement, a fake Neutron, zun-api and zun-compute.

    :param venv: path of the virtualenv holding the OpenStack services.
    :param workdir: directory for configuration, state, logs and openrc;
        created if missing. One environment per work directory.
    :param driver: ``[DEFAULT] container_driver`` of zun-compute.
    :param extra_conf: ``{section: {key: value}}`` merged into zun.conf
        last (e.g. the driver's ``[kata]`` options).
    :param timeout: seconds start() and restart_compute() wait.
    :param glance: also start glance-api (a file store, keystone auth,
        under gunicorn) and register its ``image`` endpoint; needs glance
        installed in ``venv``.
    :param zun: start placement, the fake Neutron, zun-api and
        zun-compute; False brings up keystone (and glance) only.
    :param wsproxy: also start zun-wsproxy (interactive exec, attach) on
        a free port; ``[websocket_proxy] base_url`` points at it.
    :param neutron: a real Neutron (ML2/OVS, netdev datapath; see
        :mod:`neutron_env`) instead of the fake one; its agent's host is
        zun-compute's. :attr:`neutron` is then its
        :class:`~neutron_env.NeutronEnvironment`.
    :param neutron_venv: the virtualenv with neutron (default: ``venv``;
        ``tools/install-neutron.sh`` makes ``.venv-neutron``).
    :param extra_computes: more zun-compute hosts on this machine, under
        the same zun-api: one ``{section: {key: value}}`` each, merged
        into its own copy of zun.conf (give each its own ``[kata]``
        state_path and run_path and ``[kata_console]`` listen_port). Host
        ``i`` (from 2) is ``<host>-<i>``, with zun state and locks of its
        own; see :attr:`hosts` and :meth:`compute_conf_path`.
    :param schema_cache: directory keeping a ``mysqldump`` of each
        database right after its migrations (keystone, placement, zun,
        glance; neutron's too), one file per service version: later
        environments load it (about a second) instead of migrating again
        (10 to 30 s each). None: always migrate.
    :param mariadb: the :class:`MariaDBServer` of every database
        (default: the host's shared MariaDB on 127.0.0.1:3306).
    :param rabbitmq: the :class:`RabbitMQServer` of zun's transport URL
        (default: the host's shared RabbitMQ on 127.0.0.1:5672).
    :param process_env: more environment variables of every process the
        environment starts (services, the shims zun-compute spawns, and
        :meth:`openstack`), e.g. ``LD_PRELOAD`` of a fake clock for the
        whole "host".
    """

    error = ZunEnvironmentError
    SERVICES = ('fake-neutron', 'keystone', 'placement', 'zun-api',
                'zun-compute')

    def __init__(self, venv, workdir, driver='kata', extra_conf=None,
                 timeout=START_TIMEOUT, glance=False, zun=True,
                 wsproxy=False, neutron=False, neutron_venv=None,
                 schema_cache=DEFAULT_SCHEMA_CACHE, extra_computes=(),
                 mariadb=None, rabbitmq=None, process_env=None):
        self.venv = os.path.abspath(venv)
        self.mariadb = mariadb or MariaDBServer()
        self.rabbitmq = rabbitmq or RabbitMQServer()
        self.process_env = dict(process_env or {})
        self.workdir = os.path.abspath(workdir)
        self.driver = driver
        self.glance = glance
        self.zun = zun
        #: The services this environment runs, in start order.
        self.neutron_venv = os.path.abspath(neutron_venv or venv)
        #: The NeutronEnvironment (with neutron=True, once started).
        self.neutron = None
        self._with_neutron = neutron
        self.services = tuple(
            name for name in self.SERVICES
            if (zun or name == 'keystone') and not (
                neutron and name == 'fake-neutron'))
        self.services += ('glance-api',) if glance else ()
        self.services += ('zun-wsproxy',) if wsproxy and zun else ()
        self.extra_conf = extra_conf or {}
        self.extra_computes = [dict(c) for c in extra_computes]
        self.timeout = timeout
        self.schema_cache = schema_cache
        self.log_dir = os.path.join(self.workdir, 'logs')
        #: zun.conf used by zun-api and zun-compute.
        self.conf_path = os.path.join(self.workdir, 'zun', 'zun.conf')
        #: zun-compute's log (stdout and stderr, appended across restarts).
        self.compute_log = os.path.join(self.log_dir, 'zun-compute.log')
        self.openrc_path = os.path.join(self.workdir, 'openrc')
        self.timings = collections.OrderedDict()
        self._state_path = os.path.join(self.workdir, STATE_FILE)
        self._state = self._load_state()
        self._popens = {}
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._identity = None

    # -- state

    @property
    def name(self):
        """Prefix of the databases, DB user and RabbitMQ vhost."""
        return self._state.get('name')

    @property
    def host(self):
        """``[DEFAULT] host`` of zun-compute (and its placement RP name)."""
        return self._state.get('host')

    @property
    def hosts(self):
        """Every zun-compute host, :attr:`host` first."""
        if not self.host:
            return []
        return [self.host] + ['%s-%d' % (self.host, i + 2)
                              for i in range(len(self.extra_computes))]

    def compute_conf_path(self, host):
        """:returns: the zun.conf of zun-compute ``host``."""
        index = self.hosts.index(host)
        if not index:
            return self.conf_path
        return os.path.join(os.path.dirname(self.conf_path),
                            'zun-compute-%d.conf' % (index + 1))

    def _compute_name(self, host):
        index = self.hosts.index(host)
        return 'zun-compute' if not index else 'zun-compute-%d' % (
            index + 1)

    @property
    def ports(self):
        """``{service: TCP port}`` of the HTTP services."""
        return dict(self._state.get('ports', {}))

    @property
    def auth_url(self):
        """The keystone v3 URL."""
        return 'http://%s:%s/v3' % (HOST_IP, self.ports['keystone'])

    @property
    def admin_password(self):
        """Password of ``admin`` (project ``admin``, domain Default)."""
        return self._state.get('admin_password')

    @property
    def glance_url(self):
        """The glance-api URL (with ``glance=True``)."""
        return 'http://%s:%s' % (HOST_IP, self.ports['glance-api'])

    @property
    def glance_store_dir(self):
        """The file store of glance-api: one file per image."""
        return os.path.join(self.workdir, 'glance', 'images')

    def _databases(self):
        return (('keystone', 'placement', 'zun') if self.zun
                else ('keystone',)) + (('glance',) if self.glance else ())

    def _identity_client(self):
        if self._identity is None:
            self._identity = _Identity(self.auth_url, self.admin_password)
        return self._identity

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
        env.update(self.process_env)
        env.update(extra)
        return env

    def _log_path(self, name):
        return os.path.join(self.log_dir, '%s.log' % name)

    def _run(self, name, argv, timeout=300, **kwargs):
        """Run a one-shot command, its output to logs/<name>.log."""
        log = self._log_path(name)
        with open(log, 'ab') as f:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT,
                                  env=kwargs.pop('env', None) or self._env(),
                                  timeout=timeout, **kwargs)
        if proc.returncode:
            raise ZunEnvironmentError('%s failed (exit %s): %s\n%s' % (
                name, proc.returncode, ' '.join(argv), _tail(log)))

    def _spawn(self, name, argv, env=None, cwd=None):
        """Start a long-running service in its own process group."""
        log = self._log_path(name)
        with open(log, 'ab') as f:
            f.write(('==== %s starting: %s\n' % (
                time.strftime('%Y-%m-%d %H:%M:%S'),
                ' '.join(argv))).encode('utf-8'))
            f.flush()
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=f, stderr=subprocess.STDOUT,
                                     env=env or self._env(), cwd=cwd,
                                     start_new_session=True, close_fds=True)
        self._popens[name] = popen
        with self._lock:
            self._state.setdefault('procs', {})[name] = {
                'pid': popen.pid, 'start': _proc_start_time(popen.pid),
                'log': log}
        self._save_state()
        return popen

    def _alive(self, name):
        info = self._state.get('procs', {}).get(name)
        if not info:
            return False
        popen = self._popens.get(name)
        if popen is not None:
            return popen.poll() is None
        start = _proc_start_time(info['pid'])
        return start is not None and start == info['start']

    def _kill(self, name, sig=signal.SIGKILL, timeout=30):
        """Signal a service's process group and wait until it is gone."""
        info = self._state.get('procs', {}).get(name)
        if not info:
            return
        if self._alive(name):
            try:
                os.killpg(info['pid'], sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            popen = self._popens.get(name)
            while self._alive(name) and time.monotonic() < deadline:
                if popen is not None:
                    try:
                        popen.wait(0.1)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    time.sleep(0.1)
            if self._alive(name) and sig != signal.SIGKILL:
                os.killpg(info['pid'], signal.SIGKILL)
                if popen is not None:
                    popen.wait(10)
        # Children that left the group leader behind (e.g. gunicorn
        # workers) still belong to the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info['pid'], signal.SIGKILL)
        self._popens.pop(name, None)
        with self._lock:
            self._state.get('procs', {}).pop(name, None)
        self._save_state()

    def _check_alive(self, names):
        for name in names:
            if name in self._state.get('procs', {}) and not self._alive(name):
                raise ZunEnvironmentError('%s exited:\n%s' % (
                    name, _tail(self._log_path(name))))

    def _wait_http(self, name, url, timeout):
        deadline = time.monotonic() + timeout
        while not self._abort.is_set():
            self._check_alive([name])
            try:
                status = _http('GET', url, timeout=5)[0]
                if status < 500:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ZunEnvironmentError('%s does not answer on %s after '
                                          '%ss:\n%s' % (
                                              name, url, timeout,
                                              _tail(self._log_path(name))))
            time.sleep(0.2)
        raise ZunEnvironmentError('start aborted')

    def logs_tail(self):
        """The last lines of every service log, for error messages.

        :returns: text.
        """
        text = '\n'.join('---- %s (%s)\n%s' % (name, self._log_path(name),
                                               _tail(self._log_path(name)))
                         for name in self.services)
        if self.neutron:
            text += '\n' + self.neutron.logs_tail()
        return text

    def _db_url(self, service):
        return 'mysql+pymysql://%s:%s@%s:%s/%s_%s?charset=utf8' % (
            self.name, self._state['db_password'], HOST_IP,
            self.mariadb.port,
            self.name, service)

    def _auth_section(self, user, password):
        return {'auth_type': 'password', 'auth_url': self.auth_url,
                'www_authenticate_uri': self.auth_url,
                'username': user, 'password': password,
                'project_name': 'service', 'user_domain_name': 'Default',
                'project_domain_name': 'Default', 'region_name': REGION}

    # -- configuration

    def _write_configs(self):
        st = self._state
        ks_dir = os.path.join(self.workdir, 'keystone')
        pl_dir = os.path.join(self.workdir, 'placement')
        zun_dir = os.path.dirname(self.conf_path)
        for d in (ks_dir, pl_dir, zun_dir,
                  os.path.join(zun_dir, 'state'),
                  os.path.join(zun_dir, 'lock')):
            os.makedirs(d, exist_ok=True)
        _write_ini(os.path.join(ks_dir, 'keystone.conf'), {
            'DEFAULT': {'debug': False},
            'database': {'connection': self._db_url('keystone')},
            'token': {'provider': 'fernet'},
            'fernet_tokens': {'key_repository':
                              os.path.join(ks_dir, 'fernet-keys')},
            'fernet_receipts': {'key_repository':
                                os.path.join(ks_dir, 'fernet-keys')},
            'credential': {'key_repository':
                           os.path.join(ks_dir, 'credential-keys')},
            'cache': {'enabled': False},
            # Every token issued checks a password: keep hashing cheap.
            'identity': {'password_hash_rounds': 4},
        })
        authtoken = self._auth_section('placement', st['service_password'])
        authtoken.pop('region_name')
        _write_ini(os.path.join(pl_dir, 'placement.conf'), {
            'DEFAULT': {'debug': False},
            'placement_database': {'connection': self._db_url('placement')},
            'api': {'auth_strategy': 'keystone'},
            'keystone_authtoken': authtoken,
        })
        for directory, module, name, call in (
                (ks_dir, 'keystone.server', 'wsgi',
                 'wsgi.initialize_public_application()'),
                (pl_dir, 'placement', 'wsgi', 'wsgi.init_application()')):
            with open(os.path.join(directory, 'wsgi_app.py'), 'w') as f:
                f.write(_WSGI_SHIM % {'module': module, 'name': name,
                                      'call': call})
        paste = os.path.join(zun_dir, 'api-paste.ini')
        with open(paste, 'w') as f:
            f.write(_API_PASTE % {
                'workdir': zun_dir,
                'authtoken': 'zun.api.middleware.auth_token:'
                             'AuthTokenMiddleware.factory'})
        zun_auth = self._auth_section('zun', st['service_password'])
        conf = {
            'DEFAULT': {
                'debug': True,
                'host': self.host,
                'my_ip': HOST_IP,
                'container_driver': self.driver,
                'state_path': os.path.join(zun_dir, 'state'),
                'transport_url': 'rabbit://guest:guest@%s:%s/%s' % (
                    HOST_IP, self.rabbitmq.port, self.name),
            },
            'api': {'host_ip': HOST_IP, 'port': self.ports['zun-api'],
                    'workers': 1, 'api_paste_config': paste},
            'database': {'connection': self._db_url('zun')},
            'oslo_concurrency': {'lock_path': os.path.join(zun_dir, 'lock')},
            'volume': {'driver_list': 'local'},
            'keystone_auth': zun_auth,
            'keystone_authtoken': zun_auth,
            'neutron_client': {'region_name': REGION},
            'placement_client': {'region_name': REGION},
            'cinder_client': {'region_name': REGION},
            'glance_client': {'region_name': REGION},
            # Not the default 2375: two environments on one host (two
            # test workers, a soak next to a matrix) would both want it,
            # and the second one's console would not listen.
            'kata_console': {'listen_port': _free_port()},
        }
        if self.driver == 'kata':
            # The host's template store is shared with the CLI tests,
            # which use more shapes than the default keeps.
            conf['kata'] = {'template_max_count': 12}
        if 'zun-wsproxy' in self.services:
            port = self.ports['zun-wsproxy']
            conf['websocket_proxy'] = {
                'wsproxy_host': HOST_IP, 'wsproxy_port': port,
                'base_url': 'ws://%s:%s/' % (HOST_IP, port)}
        if 'fake-neutron' in self.services:
            # The stand-in only answers zun-api's scheduling queries: the
            # kata driver makes no ports.
            conf['kata_network'] = {'zun_network': 'none'}
        _write_ini(self.conf_path, _merge(conf, self.extra_conf))
        for host, extra in zip(self.hosts[1:], self.extra_computes):
            own = os.path.join(zun_dir, host)
            for d in ('state', 'lock'):
                os.makedirs(os.path.join(own, d), exist_ok=True)
            _write_ini(self.compute_conf_path(host), _merge(_merge(_merge(
                conf, self.extra_conf), {
                    'DEFAULT': {'host': host,
                                'state_path': os.path.join(own, 'state')},
                    'oslo_concurrency': {
                        'lock_path': os.path.join(own, 'lock')}}), extra))
        if self.glance:
            self._write_glance_config()
        with open(self.openrc_path, 'w') as f:
            f.write('export PATH=%s/bin:"$PATH"\n' % self.venv)
            f.write('export no_proxy=%s,localhost\n' % HOST_IP)
            for key, value in sorted(self.os_environ().items()):
                f.write('export %s=%s\n' % (key, value))

    def _write_glance_config(self):
        gl_dir = os.path.join(self.workdir, 'glance')
        for d in (self.glance_store_dir, os.path.join(gl_dir, 'staging'),
                  os.path.join(gl_dir, 'lock')):
            os.makedirs(d, exist_ok=True)
        # pip installs glance's paste file as data under <venv>/etc.
        paste = os.path.join(self.venv, 'etc', 'glance',
                             'glance-api-paste.ini')
        if not os.path.exists(paste):
            raise ZunEnvironmentError('glance is not installed in %s (no '
                                      '%s)' % (self.venv, paste))
        shutil.copy(paste, os.path.join(gl_dir, 'glance-api-paste.ini'))
        authtoken = self._auth_section('glance',
                                       self._state['service_password'])
        authtoken.pop('region_name')
        _write_ini(os.path.join(gl_dir, 'glance-api.conf'), {
            'DEFAULT': {
                'debug': False,
                'bind_host': HOST_IP,
                'bind_port': self.ports['glance-api'],
                'worker_self_reference_url': self.glance_url,
                'image_cache_dir': os.path.join(gl_dir, 'cache'),
                'node_staging_uri': 'file://' + os.path.join(gl_dir,
                                                             'staging'),
            },
            'database': {'connection': self._db_url('glance')},
            'glance_store': {'stores': 'file', 'default_store': 'file',
                             'filesystem_store_datadir':
                             self.glance_store_dir},
            'keystone_authtoken': authtoken,
            'paste_deploy': {'flavor': 'keystone', 'config_file':
                             os.path.join(gl_dir, 'glance-api-paste.ini')},
            'oslo_concurrency': {'lock_path': os.path.join(gl_dir, 'lock')},
        })
        with open(os.path.join(gl_dir, 'wsgi_app.py'), 'w') as f:
            f.write(_WSGI_SHIM % {'module': 'glance.wsgi', 'name': 'api',
                                  'call': 'api.application'})

    def os_environ(self):
        """The OS_* variables of the admin for the openstack CLI.

        :returns: a dict.
        """
        return {
            'OS_AUTH_URL': self.auth_url,
            'OS_AUTH_TYPE': 'password',
            'OS_IDENTITY_API_VERSION': '3',
            'OS_USERNAME': 'admin',
            'OS_PASSWORD': self.admin_password,
            'OS_PROJECT_NAME': 'admin',
            'OS_USER_DOMAIN_NAME': 'Default',
            'OS_PROJECT_DOMAIN_NAME': 'Default',
            'OS_REGION_NAME': REGION,
            'OS_INTERFACE': 'public',
            'OS_CONTAINER_API_VERSION': CONTAINER_API_VERSION,
        }

    # -- bring-up steps

    def _prepare_database(self):
        t = time.monotonic()
        self.mariadb.ensure()
        name, pw = self.name, self._state['db_password']
        statements = []
        for service in self._databases():
            statements.append('CREATE DATABASE `%s_%s` CHARACTER SET utf8' % (
                name, service))
        for host in (HOST_IP, 'localhost'):
            statements.append("CREATE USER '%s'@'%s' IDENTIFIED BY '%s'" % (
                name, host, pw))
            for service in self._databases():
                statements.append("GRANT ALL ON `%s_%s`.* TO '%s'@'%s'" % (
                    name, service, name, host))
        with self._lock:
            self._state['db_created'] = True
        self._save_state()
        self._sql(*statements)
        self._phase('mariadb + databases', t)

    def _prepare_rabbitmq(self):
        t = time.monotonic()
        self.rabbitmq.ensure()
        with self._lock:
            self._state['vhost_created'] = True
        self._save_state()
        self._rabbitmqctl('add_vhost', self.name)
        self._rabbitmqctl('set_permissions', '-p', self.name, 'guest',
                          '.*', '.*', '.*')
        self._phase('rabbitmq vhost', t)

    def _keystone_keys(self):
        # What "keystone-manage fernet_setup/credential_setup" write (a
        # primary and a staged Fernet key), without two slow processes.
        for repo in ('fernet-keys', 'credential-keys'):
            path = os.path.join(self.workdir, 'keystone', repo)
            os.makedirs(path, mode=0o700, exist_ok=True)
            for index in ('0', '1'):
                fd = os.open(os.path.join(path, index),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, 'wb') as f:
                    f.write(base64.urlsafe_b64encode(os.urandom(32)))

    def _gunicorn(self, name, directory, port, env):
        return self._spawn(name, [
            self._bin('gunicorn'), '--no-control-socket',
            '--bind', '%s:%s' % (HOST_IP, port), '--workers', '1',
            '--worker-class', 'gthread', '--threads', '4',
            '--timeout', '120', '--chdir', directory,
            '--pythonpath', directory, '--name', '%s-%s' % (name, self.name),
            'wsgi_app:application'], env=env)

    def _keystone(self, db_ready):
        ks_dir = os.path.join(self.workdir, 'keystone')
        conf = os.path.join(ks_dir, 'keystone.conf')
        manage = [self._bin('keystone-manage'), '--config-file', conf]
        self._keystone_keys()
        db_ready.result()
        self._schema('keystone', 'keystone', lambda: self._run(
            'keystone-manage', manage + ['db_sync']), 'keystone db_sync')
        t = time.monotonic()
        # The server only needs the schema: it boots while bootstrap runs.
        self._gunicorn('keystone', ks_dir, self.ports['keystone'],
                       self._env(OS_KEYSTONE_CONFIG_DIR=ks_dir))
        url = self.auth_url + '/'
        self._run('keystone-manage', manage + [
            'bootstrap', '--bootstrap-password', self.admin_password,
            '--bootstrap-region-id', REGION,
            '--bootstrap-admin-url', url, '--bootstrap-public-url', url,
            '--bootstrap-internal-url', url])
        self._wait_http('keystone', self.auth_url, self.timeout)
        self._phase('keystone bootstrap + up', t)
        t = time.monotonic()
        self._register()
        self._phase('keystone registrations', t)

    @staticmethod
    def _ensure_role(call, name):
        """The id of keystone role ``name``, created if missing."""
        roles = call('GET', '/roles?name=%s' % name, None,
                     'find role %s' % name)['roles']
        if roles:
            return roles[0]['id']
        return call('POST', '/roles', {'role': {'name': name}},
                    'create role %s' % name)['role']['id']

    def _register(self):
        """Service project, users, services and endpoints, in parallel."""
        idc = self._identity_client()
        idc.token()

        def call(method, path, body, what):
            status, _, resp = idc.request(method, path, body)
            for _ in range(3):
                if status != 403:
                    break
                # Seen once in CI (stop 16): the bootstrapped admin's
                # first token was refused identity:list_roles right
                # after the bootstrap (cause unknown). A new token, a
                # moment later, and the refusal stands only if it
                # persists.
                _log('%s: HTTP 403 with the admin token; a new token '
                     'and again' % what)
                time.sleep(1)
                idc.token(refresh=True)
                status, _, resp = idc.request(method, path, body)
            return _check(status, resp, what)

        def create_user(name):
            return call('POST', '/users', {'user': {
                'name': name, 'domain_id': 'default',
                'password': self._state['service_password']}},
                'create user %s' % name)['user']['id']

        def create_service(stype, name, url):
            service = call('POST', '/services', {'service': {
                'type': stype, 'name': name, 'enabled': True}},
                'create service %s' % stype)['service']['id']
            for interface in ('public', 'internal'):
                call('POST', '/endpoints', {'endpoint': {
                    'service_id': service, 'url': url,
                    'interface': interface, 'region_id': REGION}},
                    'create %s endpoint' % stype)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            project = pool.submit(call, 'POST', '/projects', {'project': {
                'name': 'service', 'domain_id': 'default'}},
                'create project')
            role = pool.submit(call, 'GET', '/roles?name=admin', None,
                               'find admin role')
            # Like DevStack, service users also get the "service" role:
            # Neutron's policies ask for it to unbind a port
            # (binding:profile), which zun does for preserved ports.
            service_role = pool.submit(self._ensure_role, call, 'service')
            names = (('zun', 'placement') if self.zun else ()) + (
                ('glance',) if self.glance else ())
            users = [pool.submit(create_user, name) for name in names]
            endpoints = []
            if self.zun:
                endpoints += [
                    ('container', 'zun', 'http://%s:%s/v1' % (
                        HOST_IP, self.ports['zun-api'])),
                    ('placement', 'placement', 'http://%s:%s' % (
                        HOST_IP, self.ports['placement']))]
            if 'fake-neutron' in self.services:
                # A real Neutron registers its endpoint itself.
                endpoints.append(('network', 'neutron', 'http://%s:%s' % (
                    HOST_IP, self.ports['fake-neutron'])))
            if self.glance:
                endpoints.append(('image', 'glance', self.glance_url))
            services = [pool.submit(create_service, *args)
                        for args in endpoints]
            project_id = project.result()['project']['id']
            role_id = role.result()['roles'][0]['id']
            grants = [pool.submit(call, 'PUT',
                                  '/projects/%s/users/%s/roles/%s' % (
                                      project_id, user.result(), rid),
                                  None, 'grant role')
                      for user in users
                      for rid in (role_id, service_role.result())]
            for future in services + grants:
                future.result()

    def _placement(self, db_ready):
        pl_dir = os.path.join(self.workdir, 'placement')
        env = self._env(OS_PLACEMENT_CONFIG_DIR=pl_dir)
        db_ready.result()
        self._schema('placement', 'openstack-placement', lambda: self._run(
            'placement-manage', [
                self._bin('placement-manage'), '--config-file',
                os.path.join(pl_dir, 'placement.conf'), 'db', 'sync'],
            env=env), 'placement db sync')
        t = time.monotonic()
        self._serve_placement()
        self._phase('placement up', t)

    def _serve_placement(self):
        """Start placement's server (its schema ready); wait for it."""
        pl_dir = os.path.join(self.workdir, 'placement')
        self._gunicorn('placement', pl_dir, self.ports['placement'],
                       self._env(OS_PLACEMENT_CONFIG_DIR=pl_dir))
        self._wait_http('placement', 'http://%s:%s/' % (
            HOST_IP, self.ports['placement']), self.timeout)

    def _glance_api(self, db_ready):
        gl_dir = os.path.join(self.workdir, 'glance')
        env = self._env(OS_GLANCE_CONFIG_DIR=gl_dir)
        db_ready.result()
        self._schema('glance', 'glance', lambda: self._run(
            'glance-manage', [
                self._bin('glance-manage'), '--config-file',
                os.path.join(gl_dir, 'glance-api.conf'), 'db_sync'],
            env=env), 'glance-manage db_sync')
        t = time.monotonic()
        self._gunicorn('glance-api', gl_dir, self.ports['glance-api'], env)
        self._wait_http('glance-api', self.glance_url + '/healthcheck',
                        self.timeout)
        self._phase('glance-api up', t)

    def _zun_api(self, db_ready, mq_ready):
        db_ready.result()
        self._schema('zun', 'zun', lambda: self._run('zun-db-manage', [
            self._bin('zun-db-manage'), '--config-file', self.conf_path,
            'upgrade']), 'zun-db-manage upgrade')
        mq_ready.result()
        t = time.monotonic()
        self._serve_zun_api()
        self._phase('zun-api up', t)

    def _serve_zun_api(self):
        """Start zun-api (its schema ready); wait until it answers."""
        self._spawn('zun-api', [self._bin('zun-api'), '--config-file',
                                self.conf_path], env=self._zun_env())
        self._wait_http('zun-api', 'http://%s:%s/' % (
            HOST_IP, self.ports['zun-api']), self.timeout)

    def _fake_neutron(self):
        self._spawn('fake-neutron', [
            self._bin('python'), os.path.join(_HERE, 'fake_neutron.py'),
            '--host', HOST_IP, '--port', str(self.ports['fake-neutron'])])
        self._wait_http('fake-neutron', 'http://%s:%s/' % (
            HOST_IP, self.ports['fake-neutron']), 30)

    def _start_compute(self, hosts=None):
        for host in hosts or self.hosts:
            argv = [self._bin('zun-compute'), '--config-file',
                    self.compute_conf_path(host)]
            if os.path.exists(self._neutron_conf_path):
                argv += ['--config-file', self._neutron_conf_path]
            self._spawn(self._compute_name(host), argv, env=self._zun_env())

    @property
    def _neutron_conf_path(self):
        # zun-compute's second file with a real Neutron: the OVSDB of its
        # Open vSwitch is known once neutron_env has prepared it.
        return os.path.join(os.path.dirname(self.conf_path),
                            'kata-neutron.conf')

    def _write_neutron_conf(self):
        deadline = time.monotonic() + self.timeout
        while not self.neutron.ovs_run_dir:
            if self._abort.is_set() or time.monotonic() > deadline:
                raise ZunEnvironmentError('neutron did not prepare its '
                                          'Open vSwitch')
            time.sleep(0.05)
        _write_ini(self._neutron_conf_path, _merge({'kata_network': {
            'zun_network': 'neutron',
            'ovsdb_connection': self.neutron.ovsdb_connection}},
            self.extra_conf))

    def _zun_env(self):
        # zun loads the "cri" capsule driver, which opens a gRPC channel;
        # gRPC's fork handlers then make about 1% of the children that
        # zun-compute (or its container driver) forks abort with
        # "epoll_wait error: Bad file descriptor" before exec.
        return self._env(GRPC_ENABLE_FORK_SUPPORT='0')

    def _zun_get(self, path):
        idc = self._identity_client()
        status, _, body = idc.request(
            'GET', idc.endpoint('container') + path,
            headers={'OpenStack-API-Version':
                     'container %s' % CONTAINER_API_VERSION})
        return _check(status, body, 'GET zun %s' % path)

    def compute_service(self, host=None):
        """zun-compute's service record as zun-api shows it, or None.

        :param host: which zun-compute (default: :attr:`host`).
        :returns: a dict with ``state``, ``report_count``... or None.
        """
        for service in self._zun_get('/services')['services']:
            if (service['binary'] == 'zun-compute' and
                    service['host'] == (host or self.host)):
                return service
        return None

    def resource_provider(self, host=None):
        """The placement resource provider of the compute node, or None.

        :param host: which zun-compute (default: :attr:`host`).

        :returns: a dict with ``uuid`` and ``inventories``, or None.
        """
        idc = self._identity_client()
        base = idc.endpoint('placement')
        headers = {'OpenStack-API-Version': 'placement 1.14'}
        status, _, body = idc.request(
            'GET', '%s/resource_providers?name=%s' % (
                base, host or self.host),
            headers=headers)
        providers = _check(status, body, 'GET resource providers')
        if not providers['resource_providers']:
            return None
        rp = providers['resource_providers'][0]
        status, _, body = idc.request(
            'GET', '%s/resource_providers/%s/inventories' % (
                base, rp['uuid']), headers=headers)
        rp['inventories'] = _check(status, body,
                                   'GET inventories')['inventories']
        return rp

    def _wait_compute(self, min_report_count=0, need_provider=True,
                      host=None):
        """Wait until zun-compute ``host`` (default: :attr:`host`) reports
        up (and has a placement RP).
        """
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            self._check_alive(self.SERVICES + tuple(
                self._compute_name(h) for h in self.hosts[1:]))
            try:
                service = self.compute_service(host)
                last = service
                if (service and service['state'] == 'up' and
                        service.get('report_count', 0) > min_report_count):
                    if not need_provider:
                        return
                    rp = self.resource_provider(host)
                    last = (service, rp)
                    if rp and rp['inventories']:
                        return
            except (ZunEnvironmentError, OSError) as e:
                last = e
            if time.monotonic() > deadline:
                raise ZunEnvironmentError(
                    'zun-compute %s not ready after %ss (last seen: %s)\n%s'
                    % (host or self.host, self.timeout, last,
                       self.logs_tail()))
            time.sleep(0.3)

    # -- public API

    def start(self):
        """Bring the whole environment up and wait until it is usable.

        Leftovers of an earlier environment in the same work directory are
        removed first. When start() fails, it calls :meth:`stop` before
        raising (the logs stay in ``<workdir>/logs``).

        :raises ZunEnvironmentError: with the tail of the service logs.
        """
        started = time.monotonic()
        os.makedirs(self.log_dir, exist_ok=True)
        if self._state:
            _log('cleaning up the previous environment in %s' % self.workdir)
            self.stop()
        suffix = secrets.token_hex(4)
        self._state = {
            'name': 'kzt_%s' % suffix,
            'host': 'kzt-%s' % suffix,
            'venv': self.venv,
            'driver': self.driver,
            'admin_password': secrets.token_hex(12),
            'service_password': secrets.token_hex(12),
            'db_password': secrets.token_hex(12),
            'ports': {name: _free_port()
                      for name in ('keystone', 'placement', 'zun-api',
                                   'fake-neutron', 'glance-api',
                                   'zun-wsproxy')},
            'procs': {},
            'databases': list(self._databases()),
            'neutron_venv': self.neutron_venv,
        }
        self._identity = None
        if self._with_neutron:
            self.neutron = self._neutron_env()
        self._save_state()
        try:
            self._start()
        except BaseException:
            _log('start failed: stopping what was started')
            try:
                self.stop()
            except ZunEnvironmentError as e:
                _log(str(e))
            raise
        self._phase('start total', started)

    def _neutron_env(self):
        # neutron_env imports this module: import it late.
        from kata_zun.tests.functional import neutron_env
        return neutron_env.NeutronEnvironment(
            self._state.get('neutron_venv', self.neutron_venv),
            os.path.join(self.workdir, 'neutron'), host=self.host,
            timeout=self.timeout, schema_cache=self.schema_cache)

    def _neutron(self, keystone):
        # Neutron boots while keystone starts; it registers its user and
        # the network endpoint once keystone answers.
        self.neutron.start(self.auth_url, self.admin_password,
                           keystone_ready=keystone.result)

    def _start(self):
        self._abort.clear()
        self._write_configs()
        if not self.zun:
            self._start_identity_only()
            return
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            db = pool.submit(self._prepare_database)
            mq = pool.submit(self._prepare_rabbitmq)
            lspci = pool.submit(ensure_lspci)
            keystone = pool.submit(self._keystone, db)
            if self.neutron:
                fake_neutron = None
                neutron = pool.submit(self._neutron, keystone)
            else:
                fake_neutron = neutron = pool.submit(self._fake_neutron)
            placement = pool.submit(self._placement, db)
            api = pool.submit(self._zun_api, db, mq)
            glance = (pool.submit(self._glance_api, db) if self.glance
                      else None)
            try:
                for future in (lspci, fake_neutron, keystone):
                    if future is not None:
                        future.result()
                # zun-compute reports to placement with the zun user as
                # soon as it starts: keystone must know that user first.
                t = time.monotonic()
                if self.neutron:
                    self._write_neutron_conf()
                self._start_compute()
                for future in (placement, api, glance, neutron):
                    if future is not None:
                        future.result()
            except BaseException:
                self._abort.set()
                for future in (db, mq, lspci, neutron, keystone,
                               placement, api, glance):
                    if future is not None:
                        future.cancel()
                raise
        for host in self.hosts:
            self._wait_compute(host=host)
        self._phase('zun-compute ready', t)
        if 'zun-wsproxy' in self.services:
            self._zun_wsproxy()

    def _zun_wsproxy(self):
        t = time.monotonic()
        self._spawn('zun-wsproxy', [self._bin('zun-wsproxy'),
                                    '--config-file', self.conf_path],
                    env=self._zun_env())
        _wait_port(self.ports['zun-wsproxy'], 60, 'zun-wsproxy')
        self._check_alive(['zun-wsproxy'])
        self._phase('zun-wsproxy up', t)

    def _start_identity_only(self):
        # zun=False: keystone (and glance-api, neutron), no zun.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            db = pool.submit(self._prepare_database)
            keystone = pool.submit(self._keystone, db)
            futures = [db, keystone]
            if self.glance:
                futures.append(pool.submit(self._glance_api, db))
            if self.neutron:
                futures.append(pool.submit(self._neutron, keystone))
            try:
                for future in futures:
                    future.result()
            except BaseException:
                self._abort.set()
                for future in futures:
                    future.cancel()
                raise

    def stop(self):
        """Kill every service, drop the databases and the vhost.

        Safe to call more than once and after a failed start(); also works
        from another process (it reads ``<workdir>/zun-env.json``).
        """
        if not self._state:
            self._state = self._load_state()
        if not self._state:
            return
        t = time.monotonic()
        errors = []
        if os.path.exists(os.path.join(self.workdir, 'neutron',
                                       'neutron-env.json')):
            # Before keystone: neutron deletes its user and endpoint.
            try:
                (self.neutron or self._neutron_env()).stop()
            except Exception as e:
                errors.append('stop neutron: %s' % e)
        for name in reversed(self.SERVICES):
            try:
                self._kill(name)
            except Exception as e:
                errors.append('kill %s: %s' % (name, e))
        for name in list(self._state.get('procs', {})):
            try:
                self._kill(name)
            except Exception as e:
                errors.append('kill %s: %s' % (name, e))
        self.venv = self._state.get('venv', self.venv)
        name = self.name
        databases = self._state.get('databases',
                                    ('keystone', 'placement', 'zun'))

        def drop_databases():
            self._sql(*(['DROP DATABASE IF EXISTS `%s_%s`' % (name, service)
                         for service in databases] +
                        ["DROP USER IF EXISTS '%s'@'%s'" % (name, host)
                         for host in (HOST_IP, 'localhost')]))

        def delete_vhost():
            self._rabbitmqctl('delete_vhost', name, check=False)

        jobs = []
        if self._state.get('db_created') and _port_open(self.mariadb.port):
            jobs.append(('drop databases', drop_databases))
        if (self._state.get('vhost_created') and
                _port_open(self.rabbitmq.port)):
            jobs.append(('delete vhost', delete_vhost))
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [(what, pool.submit(job)) for what, job in jobs]
        for what, future in futures:
            try:
                future.result()
            except Exception as e:
                errors.append('%s: %s' % (what, e))
        self._state = {}
        self._identity = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path)
        self._phase('stop', t)
        if errors:
            raise ZunEnvironmentError('stop: ' + '; '.join(errors))

    def restart_compute(self, kill=True):
        """Stop zun-compute and start it again; wait until it reports up.

        :param kill: SIGKILL (a crash) when True, else SIGTERM (a clean
            stop, SIGKILL after 30s).
        :returns: seconds the restart took, from the signal to "up".
        """
        t = time.monotonic()
        before = self.compute_service() or {}
        self._kill('zun-compute', signal.SIGKILL if kill else signal.SIGTERM)
        self._start_compute([self.host])
        self._wait_compute(min_report_count=before.get('report_count', 0),
                           need_provider=False)
        self._phase('restart_compute', t)
        return self.timings['restart_compute']

    def restart_token_checkers(self):
        """Restart zun-api and placement (SIGTERM, SIGKILL after 30 s) and
        wait until both answer.

        They validate tokens through keystonemiddleware, whose
        keystoneauth1 adapter waits on the wall clock: after a backward
        step of the host's clock a process started before it holds every
        new token's check until the clock catches up (upstream; see
        :mod:`kata_zun.driver.steadyclock`). An operator restarts them.

        :returns: seconds the restart took.
        """
        t = time.monotonic()
        for name in ('zun-api', 'placement'):
            self._kill(name, signal.SIGTERM)
        self._serve_placement()
        self._serve_zun_api()
        self._phase('restart_token_checkers', t)
        return self.timings['restart_token_checkers']

    def openstack(self, *args, timeout=180, input=None):
        """Run ``<venv>/bin/openstack`` as admin in project admin.

        The container API version is passed first (1.40, the maximum of
        zun 18); remember that the OSC client takes every argument after
        the image of ``appcontainer run/create`` as the command, so put
        options (``-f json``, ``--name``...) before the image.

        :param args: the command, e.g. ``('appcontainer', 'list')``.
        :param timeout: seconds before the command is killed.
        :param input: text given on stdin, or None.
        :returns: ``(exit code, stdout, stderr)`` as text.
        """
        argv = [self._bin('openstack'), '--os-container-api-version',
                CONTAINER_API_VERSION] + [str(a) for a in args]
        env = self._env(**self.os_environ())
        proc = subprocess.run(argv, input=input, capture_output=True,
                              text=True, timeout=timeout, env=env,
                              stdin=None if input is not None
                              else subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr

    def api(self):
        """The environment's python-zunclient client, made once: one
        keystone token for the environment's life.

        For polls. ``openstack appcontainer show`` each second cost some
        2 s of CPU per call (a new Python importing the whole client, and
        a password check in keystone): CPU that the VMs under test boot
        with, on a 2-core host. What a user does still goes through
        :meth:`openstack`.

        :returns: a ``zunclient.v1.client.Client``.
        """
        if getattr(self, '_api', None) is None:
            self._api = self.zun_client()
        return self._api

    def show(self, kind, ref):
        """What ``openstack appcontainer show -f json REF`` (kind
        ``containers``) or ``openstack capsule show -f json REF`` (kind
        ``capsules``) prints, read through :meth:`api`.

        :returns: the dict, or None when zun-api answers 404.
        """
        from zunclient.common import utils as zun_utils
        from zunclient import exceptions as zun_exceptions
        try:
            obj = getattr(self.api(), kind).get(ref)
        except zun_exceptions.NotFound:
            return None
        # As the OSC plugin shows them: addresses as one string.
        zun_utils.format_container_addresses(obj)
        return dict(obj._info)

    def actions(self, ref, request_id=None):
        """The actions of a container (``openstack appcontainer action
        list``), or one of them with its events (``... action show``),
        read through :meth:`api`.

        :returns: a list of dicts (``action``, ``request_id``,
            ``message``, ``start_time``...), or with ``request_id`` one
            dict (and its ``events``).
        """
        if request_id is not None:
            return dict(self.api().actions.get(ref, request_id)._info)
        return [dict(a._info) for a in self.api().actions.list(ref)]

    def exec_(self, ref, *argv):
        """``openstack appcontainer exec REF ARGV...`` through
        :meth:`api`: the same request to zun-api, its argv quoted as the
        client quotes it.

        :returns: ``(exit code, output)``.
        """
        from zunclient.common import utils as zun_utils
        result = self.api().containers.execute(
            ref, command=zun_utils.parse_command(list(argv)))
        return result['exit_code'], result['output']

    def zun_client(self):
        """A python-zunclient client of the admin (keystoneauth1 session).

        Needs keystoneauth1 and python-zunclient in the calling Python.

        :returns: a ``zunclient.v1.client.Client``.
        """
        from keystoneauth1 import identity
        from keystoneauth1 import session
        from zunclient import client

        quiet_keystoneauth()
        auth = identity.Password(auth_url=self.auth_url, username='admin',
                                 password=self.admin_password,
                                 project_name='admin',
                                 user_domain_name='Default',
                                 project_domain_name='Default')
        return client.Client(CONTAINER_API_VERSION,
                             session=session.Session(auth=auth),
                             region_name=REGION)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    """``up`` or ``down`` an environment from the command line.

    :param argv: arguments without the program name.
    :returns: exit code.
    """
    parser = argparse.ArgumentParser(
        prog='python -m kata_zun.tests.functional.zun_env',
        description='Bring a real Zun up on 127.0.0.1 (or down again).')
    parser.add_argument('--venv', default=os.path.dirname(
        os.path.dirname(os.path.abspath(sys.executable))),
        help='virtualenv with zun, keystone, placement, openstackclient '
             '(default: the one running this command)')
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--driver', default='kata',
                        help='zun container driver entry point name')
    parser.add_argument('--conf', action='append', default=[],
                        metavar='SECTION.KEY=VALUE',
                        help='extra zun.conf option (repeatable)')
    parser.add_argument('--glance', action='store_true',
                        help='also start glance-api (file store)')
    parser.add_argument('--no-zun', dest='zun', action='store_false',
                        help='keystone (and glance) only')
    parser.add_argument('--neutron', action='store_true',
                        help='a real Neutron (ML2/OVS) instead of the fake')
    parser.add_argument('--neutron-venv',
                        help='virtualenv with neutron (default: --venv)')
    parser.add_argument('action', choices=('up', 'down'))
    args = parser.parse_args(argv)
    extra = {}
    for item in args.conf:
        key, sep, value = item.partition('=')
        section, dot, option = key.rpartition('.')
        if not sep or not dot:
            parser.error('--conf wants SECTION.KEY=VALUE, not %r' % item)
        extra.setdefault(section, {})[option] = value
    env = ZunEnvironment(args.venv, args.workdir, driver=args.driver,
                         extra_conf=extra, glance=args.glance, zun=args.zun,
                         neutron=args.neutron,
                         neutron_venv=args.neutron_venv)
    try:
        if args.action == 'down':
            env.stop()
            return 0
        env.start()
    except ZunEnvironmentError as e:
        _log(str(e))
        return 1
    if not args.zun:
        print('keystone is up: source %s; logs in %s' % (
            env.openrc_path, env.log_dir))
        return 0
    print('Zun is up: compute host %s, zun.conf %s, logs in %s\n'
          'source %s; openstack --os-container-api-version %s '
          'appcontainer list' % (env.host, env.conf_path, env.log_dir,
                                 env.openrc_path, CONTAINER_API_VERSION))
    return 0


if __name__ == '__main__':
    sys.exit(main())
