"""A private RabbitMQ and a private MariaDB that a test may restart.

The host's RabbitMQ (127.0.0.1:5672) and MariaDB (127.0.0.1:3306) are
shared by every test running on the machine: they are never stopped.
A test that restarts its broker or its database server starts its own
here, on free ports, with every file (data, logs, sockets, pid files,
the Erlang cookie) under one directory of its own, and hands them to
:class:`zun_env.ZunEnvironment` (``rabbitmq=``, ``mariadb=``).

Standard library only, like :mod:`zun_env`.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

from kata_zun.tests.functional import zun_env

RABBITMQ_BIN = '/usr/lib/rabbitmq/bin'
MARIADBD = '/usr/sbin/mariadbd'
MARIADB_INSTALL_DB = '/usr/bin/mariadb-install-db'
START_TIMEOUT = 120


class _Daemon(object):
    """One server process in its own process group, logging to a file."""

    name = None

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.log = os.path.join(self.workdir, '%s.log' % self.name)
        self.popen = None
        #: Seconds each stop() and start() took, in order.
        self.timings = []

    def _argv(self):
        raise NotImplementedError

    def _env(self):
        return None

    def _ready(self):
        raise NotImplementedError

    def alive(self):
        """:returns: True while the server process runs."""
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout=START_TIMEOUT):
        """Start the server and wait until it answers.

        :raises ZunEnvironmentError: it exited or did not answer in time.
        """
        t = time.monotonic()
        with open(self.log, 'ab') as f:
            self.popen = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=f,
                stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not self.alive():
                raise zun_env.ZunEnvironmentError(
                    '%s exited (%s):\n%s' % (self.name, self.popen.poll(),
                                             zun_env._tail(self.log)))
            if time.monotonic() > deadline:
                raise zun_env.ZunEnvironmentError(
                    '%s not ready after %ss:\n%s' % (
                        self.name, timeout, zun_env._tail(self.log)))
            time.sleep(0.2)
        self.timings.append(('start', time.monotonic() - t))

    def stop(self, timeout=60):
        """SIGTERM the server's process group (SIGKILL after ``timeout``)
        and wait until it is gone and its port is closed.
        """
        t = time.monotonic()
        if self.popen is None:
            return
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(30)
        # Helpers it forked (epmd is not one: it is shared, see below).
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + timeout
        while zun_env._port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.timings.append(('stop', time.monotonic() - t))

    def restart(self, down_seconds=0.0):
        """Stop, stay down ``down_seconds``, start again.

        :returns: seconds from the stop to the server answering again.
        """
        t = time.monotonic()
        self.stop()
        time.sleep(down_seconds)
        self.start()
        return time.monotonic() - t


class PrivateRabbitMQ(_Daemon, zun_env.RabbitMQServer):
    """A RabbitMQ node of its own: node name, AMQP and distribution
    ports, mnesia and log directories, config files and Erlang cookie
    (``$HOME/.erlang.cookie`` with ``HOME`` its work directory, for the
    server and for ``rabbitmqctl`` alike) all private. The host's
    ``/etc/rabbitmq`` files are not read. epmd (127.0.0.1:4369) is shared
    with the host's node: it only maps node names to ports.

    :param workdir: directory holding everything (removed by cleanup()).
    """

    name = 'rabbitmq'

    def __init__(self, workdir):
        _Daemon.__init__(self, workdir)
        zun_env.RabbitMQServer.__init__(self, zun_env._free_port())
        self.dist_port = zun_env._free_port()
        self.node = 'kzinfra%s@localhost' % secrets.token_hex(4)
        self.home = os.path.join(self.workdir, 'home')
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        cookie = os.path.join(self.home, '.erlang.cookie')
        if not os.path.exists(cookie):
            # Erlang refuses a cookie file others may read.
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, 'w') as f:
                f.write(secrets.token_hex(16).upper())
        self.conf = os.path.join(self.workdir, 'rabbitmq.conf')
        with open(self.conf, 'w') as f:
            f.write('listeners.tcp.local = 127.0.0.1:%d\n'
                    'loopback_users.guest = true\n' % self.port)
        self.env_conf = os.path.join(self.workdir, 'rabbitmq-env.conf')
        with open(self.env_conf, 'w') as f:
            f.write('# private node: see infra_servers.py\n')
        self.plugins = os.path.join(self.workdir, 'enabled_plugins')
        with open(self.plugins, 'w') as f:
            f.write('[].\n')

    def ensure(self):
        if not zun_env._port_open(self.port):
            raise zun_env.ZunEnvironmentError('private RabbitMQ %s is down'
                                              % self.node)

    def _env(self):
        env = dict(os.environ)
        env.update({
            'HOME': self.home,
            'RABBITMQ_NODENAME': self.node,
            'RABBITMQ_NODE_IP_ADDRESS': zun_env.HOST_IP,
            'RABBITMQ_NODE_PORT': str(self.port),
            'RABBITMQ_DIST_PORT': str(self.dist_port),
            'RABBITMQ_MNESIA_BASE': os.path.join(self.workdir, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(self.workdir, 'log'),
            'RABBITMQ_PID_FILE': os.path.join(self.workdir, 'rabbit.pid'),
            'RABBITMQ_CONFIG_FILE': self.conf,
            'RABBITMQ_CONF_ENV_FILE': self.env_conf,
            'RABBITMQ_ENABLED_PLUGINS_FILE': self.plugins,
            'RABBITMQ_ENABLED_PLUGINS': '',
            'ERL_EPMD_ADDRESS': zun_env.HOST_IP,
            'ERL_FLAGS': '-kernel inet_dist_use_interface {127,0,0,1}',
        })
        return env

    def _argv(self):
        return [os.path.join(RABBITMQ_BIN, 'rabbitmq-server')]

    def _ready(self):
        if not zun_env._port_open(self.port):
            return False
        argv, env = self.ctl('await_startup', '--timeout', '5')
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True,
                              timeout=60).returncode == 0

    def ctl(self, *args):
        return ([os.path.join(RABBITMQ_BIN, 'rabbitmqctl'), '-n',
                 self.node] + list(args), self._env())

    def cleanup(self):
        """Stop the node and remove its files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class PrivateMariaDB(_Daemon, zun_env.MariaDBServer):
    """A MariaDB server of its own: data directory, port, socket, pid
    file and error log private; ``--no-defaults`` so the host's
    ``/etc/mysql`` is not read. root has no password (TCP and socket),
    like the shared server.

    :param workdir: directory holding everything (removed by cleanup()).
    """

    name = 'mariadb'

    def __init__(self, workdir):
        _Daemon.__init__(self, workdir)
        zun_env.MariaDBServer.__init__(
            self, zun_env._free_port(),
            os.path.join(self.workdir, 'mysqld.sock'))
        self.datadir = os.path.join(self.workdir, 'data')
        if not os.path.isdir(os.path.join(self.datadir, 'mysql')):
            subprocess.run([
                MARIADB_INSTALL_DB, '--no-defaults', '--user=root',
                '--datadir=%s' % self.datadir,
                '--auth-root-authentication-method=normal',
                '--skip-test-db'], check=True, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=300)

    def ensure(self):
        if not zun_env._port_open(self.port):
            raise zun_env.ZunEnvironmentError('private MariaDB on port %d '
                                              'is down' % self.port)

    def _argv(self):
        return [MARIADBD, '--no-defaults', '--user=root',
                '--datadir=%s' % self.datadir,
                '--port=%d' % self.port, '--bind-address=%s' % zun_env.HOST_IP,
                '--socket=%s' % self.socket,
                '--pid-file=%s' % os.path.join(self.workdir, 'mysqld.pid'),
                '--log-error=%s' % os.path.join(self.workdir, 'error.log'),
                '--innodb-buffer-pool-size=64M', '--skip-log-bin',
                '--max-connections=500', '--skip-name-resolve',
                # Commits reach the OS at once, the disk within a second:
                # a restart (even a SIGKILL) of the server loses nothing,
                # and a busy host's fsync latency does not stall every
                # keystone write.
                '--innodb-flush-log-at-trx-commit=2']

    def _ready(self):
        if not zun_env._port_open(self.port):
            return False
        return subprocess.run(self.mysql_argv('mysql') + [
            '--execute=SELECT 1'], stdin=subprocess.DEVNULL,
            capture_output=True, timeout=60).returncode == 0

    def cleanup(self):
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1'

# Two calls that libfaketime 0.9.10 (with FAKETIME_DONT_FAKE_MONOTONIC=1)
# gets wrong, handed straight to the C library by this helper, preloaded
# before it: every clock_nanosleep(TIMER_ABSTIME) fails with EINVAL
# (Python's time.sleep is one), and pthread_cond_timedwait wakes late
# (a GIL hand-over between two Python threads took 40 times longer, so
# keystone's requests timed out). Python waits on CLOCK_MONOTONIC, which
# is not faked, so passing these through changes nothing else.
_PASSTHROUGH_C = r'''
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req,
                    struct timespec *rem)
{
    long r = syscall(SYS_clock_nanosleep, clock, flags, req, rem);
    return r == -1 ? errno : 0;
}

typedef int (*ctw_t)(pthread_cond_t *, pthread_mutex_t *,
                     const struct timespec *);

int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m,
                           const struct timespec *abstime)
{
    static ctw_t real;
    if (!real) {
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        real = (ctw_t)dlvsym(libc, "pthread_cond_timedwait", "GLIBC_2.3.2");
    }
    return real(c, m, abstime);
}
'''


class FakeHostClock(object):
    """libfaketime standing in for a step of the host's wall clock.

    Stepping the machine's real clock would disturb every other test
    running on it; instead the processes given :attr:`env` (a whole Zun
    environment: every service, the shims, the clients) read the wall
    clock through libfaketime with an offset taken from a file that
    :meth:`step` rewrites at run time, as ``date -s`` or an NTP step
    would move it. The monotonic clock is left alone
    (``FAKETIME_DONT_FAKE_MONOTONIC``), exactly as a real step leaves it.
    QEMU itself gets no environment from the shim, so it keeps the real
    clock (the guest's clock is its own anyway).

    :param workdir: directory of the offset file and the helper library.
    """

    def __init__(self, workdir):
        if not os.path.exists(LIBFAKETIME):
            raise zun_env.ZunEnvironmentError(
                'libfaketime is missing: apt-get install libfaketime')
        os.makedirs(workdir, exist_ok=True)
        self.offset_file = os.path.join(workdir, 'clock-offset')
        self.offset = 0
        self._write(0)
        source = os.path.join(workdir, 'passthrough.c')
        with open(source, 'w') as f:
            f.write(_PASSTHROUGH_C)
        self.passthrough_lib = os.path.join(workdir, 'passthrough.so')
        subprocess.run(['gcc', '-shared', '-fPIC', '-O2', '-o',
                        self.passthrough_lib, source, '-ldl'], check=True,
                       capture_output=True, timeout=120)
        #: Environment variables of a process on the faked host.
        self.env = {
            'LD_PRELOAD': '%s %s' % (self.passthrough_lib, LIBFAKETIME),
            'FAKETIME_TIMESTAMP_FILE': self.offset_file,
            # Read the file again after a second: a step is seen within
            # one or two (reading it at every call costs ~10 us a call).
            'FAKETIME_CACHE_DURATION': '1',
            'FAKETIME_DONT_FAKE_MONOTONIC': '1',
            # File times stay real (a stepped clock does not change
            # them); faking every stat() also slows imports down.
            'NO_FAKE_STAT': '1',
        }

    def _write(self, seconds):
        tmp = self.offset_file + '.tmp'
        with open(tmp, 'w') as f:
            f.write('%+d\n' % seconds)
        os.replace(tmp, self.offset_file)

    def step(self, seconds):
        """Set the host's clock ``seconds`` away from the real one.

        :param seconds: the offset from the real clock (not from the
            current offset), e.g. 3600, -3600, 0.
        """
        self._write(seconds)
        self.offset = seconds

    def now(self):
        """:returns: time.time() as a process on the faked host sees it."""
        out = subprocess.run(
            [sys.executable, '-c', 'import time; print(time.time())'],
            env=dict(os.environ, **self.env), capture_output=True,
            text=True, check=True, timeout=60).stdout
        return float(out)
