"""Infrastructure faults under a real Zun: the broker and the database
restart, the state disk fills up, the host's clock is stepped.

One environment serves every test: its own RabbitMQ and MariaDB
(:mod:`infra_servers`; the host's shared ones are never touched), its
``[kata] state_path`` on a small ext4 filesystem of its own (a loop
device), and every process of it (keystone, placement, zun-api,
zun-compute, the shims, the openstack client) on a wall clock that
libfaketime lets the test step (:class:`infra_servers.FakeHostClock`
stands in for a step of the host's clock, which the test must not make:
other tests run on this machine at the same time).

A long-running container, ``keeper``, is started once: after every fault
it must still run in the very same QEMU process and answer ``exec``.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import fixtures
from oslotest import base
from testtools import content

from kata_zun.runtime import fileutils
from kata_zun.tests.functional import base as kz_base
from kata_zun.tests.functional import infra_servers
from kata_zun.tests.functional import test_zun_e2e
from kata_zun.tests.functional import zun_env

# Four containers of 1 GiB (zun's default_disk, set below): placement
# lets this test run them; filling it takes a fallocate, not 4 GiB of
# writes (the image file stays sparse on the host).
STATE_FS_MB = 4096
STATUS_TIMEOUT = 240
KEEPER = 'keeper'


def _wait(what, predicate, timeout=STATUS_TIMEOUT, interval=1.0):
    """Poll ``predicate`` until it returns something true.

    :returns: that value.
    :raises AssertionError: after ``timeout`` seconds, with the last value.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except Exception as exc:    # a service may be restarting
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError('%s: not after %ss (last: %r)' % (
                what, timeout, last))
        time.sleep(interval)


class ZunInfraFaultsTest(base.BaseTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.started = time.monotonic()
        cls.work = tempfile.mkdtemp(prefix='kzinfra')
        cls.mounted = False
        cls.mq = cls.db = cls.env = None
        try:
            cls._set_up()
        except BaseException:
            cls._tear_down()
            raise

    @classmethod
    def _set_up(cls):
        cls.clock = infra_servers.FakeHostClock(
            os.path.join(cls.work, 'clock'))
        cls.mq = infra_servers.PrivateRabbitMQ(os.path.join(cls.work, 'mq'))
        cls.db = infra_servers.PrivateMariaDB(os.path.join(cls.work, 'db'))
        # The broker takes ~15 s to boot: in parallel with the rest.
        mq_error = []

        def start_mq():
            try:
                cls.mq.start()
            except BaseException as exc:
                mq_error.append(exc)
        mq_thread = threading.Thread(target=start_mq)
        mq_thread.start()
        try:
            cls.db.start()
            cls._mount_state_fs()
        finally:
            mq_thread.join()
        if mq_error:
            raise mq_error[0]
        cls.run_path = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        cls.env = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(cls.work, 'zun'), driver='kata',
            extra_conf={
                'DEFAULT': {'sync_container_state_interval': '5',
                            'default_disk': '1'},
                'kata': {'state_path': cls.state_path,
                         'run_path': cls.run_path,
                         'writable_layer_mb': '64'},
                'kata_image': {'default_registry': kz_base.CLOSED_REGISTRY},
                # Not the default 2375, which other tests' hosts may hold.
                'kata_console': {'listen_port': str(zun_env._free_port())}},
            mariadb=cls.db, rabbitmq=cls.mq, process_env=cls.clock.env)
        cls.env.start()
        from kata_zun.image import busybox
        archive = os.path.join(cls.work, 'busybox.tar')
        busybox.write_docker_archive(archive)
        subprocess.run(cls._cli() + ['load', '-i', archive], check=True,
                       capture_output=True, timeout=kz_base.CLI_TIMEOUT)
        code, out, err = cls.env.openstack(
            'appcontainer', 'run', '--name', KEEPER,
            '--image-pull-policy', 'ifnotpresent',
            '--healthcheck', 'cmd=true,interval=1s,retries=1',
            'busybox', 'sh', '-c', 'while true; do sleep 1; done')
        if code:
            raise AssertionError('run keeper: %s %s' % (out, err))
        cls.keeper = _wait('keeper running', lambda: cls._running(KEEPER))
        cls.keeper_vm = cls._record(cls.keeper)['vm_pid']
        cls.setup_seconds = time.monotonic() - cls.started

    @classmethod
    def _mount_state_fs(cls):
        # A filesystem of its own, so filling it disturbs nothing else.
        image = os.path.join(cls.work, 'state.ext4')
        with open(image, 'wb') as f:
            f.truncate(STATE_FS_MB * 1024 * 1024)
        subprocess.run(['mkfs.ext4', '-q', '-F', '-m', '0', image],
                       check=True, capture_output=True, timeout=120)
        cls.state_path = os.path.join(cls.work, 'kata')
        os.makedirs(cls.state_path)
        subprocess.run(['mount', '-o', 'loop', image, cls.state_path],
                       check=True, capture_output=True, timeout=60)
        cls.mounted = True
        os.symlink(os.environ.get('KATA_ZUN_GUEST_DIR',
                                  kz_base.DEFAULT_GUEST_DIR),
                   os.path.join(cls.state_path, 'guest'))

    @classmethod
    def tearDownClass(cls):
        cls._tear_down()
        super().tearDownClass()

    @classmethod
    def _tear_down(cls):
        if cls.env is not None:
            cli = cls._cli()
            ids = subprocess.run(cli + ['ps', '-a', '-q'],
                                 capture_output=True,
                                 timeout=kz_base.CLI_TIMEOUT).stdout.split()
            if ids:
                subprocess.run(cli + ['rm', '-f'] + [
                    i.decode() for i in ids], capture_output=True,
                    timeout=kz_base.CLI_TIMEOUT)
            try:
                cls.env.stop()
            except zun_env.ZunEnvironmentError as exc:
                sys.stderr.write('%s\n' % exc)
        for server in (cls.mq, cls.db):
            if server is not None:
                server.cleanup()
        if cls.mounted:
            subprocess.run(['umount', cls.state_path], capture_output=True,
                           timeout=60)
        shutil.rmtree(cls.work, ignore_errors=True)
        shutil.rmtree(getattr(cls, 'run_path', '/nonexistent'), True)

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(900, gentle=True))
        self.addOnException(self._attach_logs)
        self.addCleanup(self.clock.step, 0)

    def _attach_logs(self, exc_info):
        test_zun_e2e.attach_compute_logs(self, self.env, self.state_path)
        for server in (self.mq, self.db):
            self.addDetail(server.name + '.log', content.text_content(
                kz_base.tail_file(server.log, 8000)))

    # -- helpers

    @classmethod
    def _cli(cls):
        return [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
                cls.env.conf_path]

    @classmethod
    def _show(cls, name):
        code, out, err = cls.env.openstack('appcontainer', 'show', '-f',
                                           'json', name)
        if code:
            raise AssertionError('show %s: %s' % (name, err))
        return json.loads(out)

    @classmethod
    def _running(cls, name):
        info = cls._show(name)
        if info['status'] == 'Error':
            raise AssertionError('%s: Error: %s' % (
                name, info.get('status_reason')))
        return info if info['status'] == 'Running' else None

    @classmethod
    def _record(cls, info):
        return fileutils.read_json(os.path.join(
            cls.state_path, 'containers', info['uuid'].replace('-', ''),
            'state.json'))

    def os(self, *args, check=True):
        code, out, err = self.env.openstack(*args)
        if check:
            self.assertEqual(0, code, 'openstack %s: %s %s' % (
                ' '.join(args), out, err))
        return code, out, err

    def exec_echo(self, name, word):
        out = self.os('appcontainer', 'exec', name, 'echo', word)[1]
        self.assertIn(word, out)

    def assert_keeper_rides_through(self):
        """The keeper runs in the same QEMU process and answers exec."""
        self.assertEqual('Running', self._show(KEEPER)['status'])
        record = self._record(self.keeper)
        self.assertEqual(self.keeper_vm, record['vm_pid'])
        os.kill(record['vm_pid'], 0)
        self.exec_echo(KEEPER, 'keeper-alive')

    def run_exec_delete(self, name):
        """A full round trip through zun-api, RabbitMQ, zun-compute."""
        self.os('appcontainer', 'run', '--name', name,
                '--image-pull-policy', 'ifnotpresent',
                'busybox', 'sleep', '1000')
        _wait('%s running' % name, lambda: self._running(name))
        self.exec_echo(name, 'hello-' + name)
        self.os('appcontainer', 'delete', '--force', name)
        _wait('%s deleted' % name, lambda: self.env.openstack(
            'appcontainer', 'show', name)[0] != 0)

    def wait_compute_reports(self):
        """zun-compute reports again (its report_count grows)."""
        before = _wait('compute service', self.env.compute_service)
        _wait('zun-compute reports', lambda: (
            lambda s: s and s['state'] == 'up' and
            s['report_count'] > before['report_count'])(
                self.env.compute_service()))

    def start_in_flight(self, name):
        """``appcontainer run``, returning once zun-compute's driver is at
        work on it (its sandbox directory exists).
        """
        existing = set(os.listdir(os.path.join(self.state_path,
                                               'containers')))
        self.os('appcontainer', 'run', '--name', name,
                '--image-pull-policy', 'ifnotpresent',
                'busybox', 'sleep', '1000')
        _wait('%s picked up by the driver' % name, lambda: set(os.listdir(
            os.path.join(self.state_path, 'containers'))) - existing,
            interval=0.05)

    # -- the faults

    def test_rabbitmq_restart(self):
        self.start_in_flight('mq-flight')
        took = self.mq.restart(down_seconds=2)
        self.addDetail('rabbitmq-restart-seconds',
                       content.text_content('%.1f' % took))
        # The operation in flight finished on the database, not the bus.
        _wait('mq-flight running', lambda: self._running('mq-flight'))
        self.wait_compute_reports()
        self.assert_keeper_rides_through()
        # A call (exec) and casts (run, delete) over the new connection.
        self.exec_echo('mq-flight', 'after-mq-restart')
        self.run_exec_delete('after-mq')
        self.os('appcontainer', 'delete', '--force', 'mq-flight')

    def test_mariadb_restart(self):
        self.start_in_flight('db-flight')
        # Down long enough for the boot to finish while the database is
        # away: zun-compute cannot save the result at once.
        took = self.db.restart(down_seconds=8)
        self.addDetail('mariadb-restart-seconds',
                       content.text_content('%.1f' % took))
        self.wait_compute_reports()
        _wait('db-flight running', lambda: self._running('db-flight'))
        self.assert_keeper_rides_through()
        self.exec_echo('db-flight', 'after-db-restart')
        self.run_exec_delete('after-db')
        self.os('appcontainer', 'delete', '--force', 'db-flight')

    def _fill_state_fs(self):
        filler = os.path.join(self.state_path, 'filler')
        self.addCleanup(lambda: os.path.exists(filler) and os.unlink(filler))
        st = os.statvfs(self.state_path)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(
                st.f_bavail * st.f_frsize - 4 * 1024 * 1024, 4096))
        finally:
            os.close(fd)
        # The last blocks too, written.
        with open(filler, 'ab', buffering=0) as f:
            try:
                while True:
                    f.write(b'\0' * 4096)
            except OSError:
                pass
        st = os.statvfs(self.state_path)
        self.assertLess(st.f_bavail * st.f_frsize, 64 * 1024)
        return filler

    def _assert_records_valid(self):
        containers = os.path.join(self.state_path, 'containers')
        for cid in os.listdir(containers):
            if not os.path.isdir(os.path.join(containers, cid)):
                continue        # the directory's lock file
            for name in os.listdir(os.path.join(containers, cid)):
                # No temporary file of an atomic write is left behind.
                self.assertFalse(name.startswith('.tmp-'), (cid, name))
                if name.endswith('.json'):
                    doc = fileutils.read_json(
                        os.path.join(containers, cid, name))
                    self.assertIsInstance(doc, dict, (cid, name))
        r = subprocess.run(self._cli() + ['ps', '-a'], capture_output=True,
                           text=True, timeout=kz_base.CLI_TIMEOUT)
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertIn(self.keeper['uuid'].replace('-', '')[:12], r.stdout)

    def test_state_disk_full(self):
        filler = self._fill_state_fs()
        # What runs keeps running, exec included (its shim's logs and
        # records cannot grow).
        self.assert_keeper_rides_through()
        self.os('appcontainer', 'run', '--name', 'full',
                '--image-pull-policy', 'ifnotpresent', 'busybox',
                'sleep', '1000')
        info = _wait('full in Error', lambda: (
            lambda i: i if i['status'] == 'Error' else None)(
                self._show('full')))
        self.assertIn('No space left on device', info['status_reason'])
        self._assert_records_valid()
        self.assert_keeper_rides_through()
        # Room again: everything works.
        os.unlink(filler)
        self.os('appcontainer', 'delete', '--force', 'full')
        self.run_exec_delete('after-full')
        self._assert_records_valid()
        self.assert_keeper_rides_through()

    def _shim_env(self, record):
        with open('/proc/%d/environ' % record['shim_pid'], 'rb') as f:
            return dict(item.split(b'=', 1) for item in
                        f.read().split(b'\0') if b'=' in item)

    def _probes_after(self, wall):
        """Health probes of the keeper that started after ``wall``."""
        health = self._record(self.keeper).get('health') or {}
        # Within ten minutes: not a probe from before a step back.
        return [e for e in health.get('log', ())
                if wall <= e['start'] <= wall + 600]

    def test_clock_steps(self):
        # The keeper's shim reads the clock through libfaketime.
        env = self._shim_env(self._record(self.keeper))
        self.assertEqual(self.clock.offset_file.encode(),
                         env.get(b'FAKETIME_TIMESTAMP_FILE'))
        # A container (kata-zun CLI, on the same faked host) in a long
        # health-check grace period: a wall-clock step must not end it.
        cli = subprocess.run(
            self._cli() + ['run', '-d', '--name', 'graceful',
                           '--health-cmd', 'false', '--health-interval',
                           '1', '--health-retries', '1',
                           '--health-start-period', '600', 'busybox',
                           'sleep', '1000'],
            capture_output=True, text=True, timeout=kz_base.CLI_TIMEOUT,
            env=dict(os.environ, **self.clock.env))
        self.assertEqual(0, cli.returncode, cli.stderr)
        graceful = cli.stdout.strip()
        self.addCleanup(subprocess.run, self._cli() + ['rm', '-f', graceful],
                        capture_output=True, timeout=kz_base.CLI_TIMEOUT)
        compute_pid = self.env._state['procs']['zun-compute']['pid']
        for offset in (3600, -3600):
            self.clock.step(offset)
            now = self.clock.now()
            self.assertAlmostEqual(time.time() + offset, now, delta=60)
            # zun-api judges zun-compute by the age of its last report,
            # which the step makes an hour old (or an hour ahead): the
            # host is "not up" (zun-api answers 500 to exec, upstream
            # zun's servicegroup) until zun-compute reports again, which
            # its periodic task (on the monotonic clock) does at once.
            self.wait_compute_reports()
            if offset < 0:
                # zun-api and placement check each new token through a
                # keystoneauth1 adapter that waits on the wall clock
                # (upstream): started before a step back, they answer
                # nothing new until the clock catches up, an hour here.
                # An operator restarts them; zun-compute, where the driver
                # puts that wait on the monotonic clock
                # (kata_zun.driver.steadyclock), is not restarted, and
                # its claims below reach placement at once.
                self.env.restart_token_checkers()
            # Probes go on (scheduled on the monotonic clock) and see the
            # new wall clock; the keeper stays healthy.
            _wait('keeper probes after the step to %+d' % offset,
                  lambda: len(self._probes_after(now - 5)) >= 2)
            self.assertIn('(healthy)', self._show(KEEPER)['status_detail'])
            self.assert_keeper_rides_through()
            # Failing probes inside the grace period do not count.
            path = os.path.join(self.state_path, 'containers', graceful,
                                'state.json')
            state = _wait('graceful fails probes after the step', lambda: (
                lambda st: st if any(
                    now - 5 <= e['start'] <= now + 600 and
                    e['exit_code'] != 0
                    for e in st['health']['log']) else None)(
                        fileutils.read_json(path)))
            self.assertEqual('starting', state['health']['status'], state)
            self.assertEqual(0, state['health']['failing_streak'], state)
            # A boot (its progress deadlines) and the whole Zun path.
            self.run_exec_delete('clock%s' % ('plus' if offset > 0
                                              else 'minus'))
        self.clock.step(0)
        self.wait_compute_reports()
        self.assert_keeper_rides_through()
        # The same zun-compute rode through both steps.
        self.assertEqual(compute_pid,
                         self.env._state['procs']['zun-compute']['pid'])
