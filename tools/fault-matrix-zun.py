#!/usr/bin/env python3
"""Fault matrix of kata-zun under Zun (issue 14, its Zun half).

For each step of a container's life driven through real zun-api and
zun-compute (create, start, exec, stop, rm, commit, pull, Cinder volume
attach, network attach) and each process that can die during it
(zun-compute, kata_zun's privsep daemon, QEMU, the sandbox shim), SIGKILL
that process while the step is in flight, then check:

* no container lost: zun's record exists (or is gone after a delete) and,
  once zun-compute is back and has synced, ``appcontainer show`` tells a
  settled status, with a reason when it is Error;
* zun agrees with the host: Running means a whole sandbox runs,
  anything else that no QEMU of it runs;
* the next operation works or fails with a clear reason: a running
  container execs, another one starts (or says why not in its
  status_reason), and ``delete --force`` removes it;
* nothing leaked once it is deleted: no QEMU, shim or virtiofsd, run
  directory, kata record, host cgroup, uid lease, loop device of it, no
  descriptor of any process (zun-compute's included) on its files, and
  no privsep daemon left without its zun-compute.

How a step is hit (never a guessed delay): zun-compute stops itself
(SIGSTOP: eventlet or not, the whole process) at a fault point of the
runtime or the driver armed through ``KATA_ZUN_FAULT_POINT_FILE`` (see
:mod:`kata_zun.runtime.faultpoint`): ``create`` (the runtime's record
half made), ``start-spawned`` (the VM up, its process not started),
``rm`` (the sandbox still runs under a delete), ``commit-read`` (the
paused container's VM resumed for the read), ``zun-pull``,
``zun-volume-attached`` (the Cinder volume connected on the host by
os-brick, no VM yet) and ``zun-network-attach``. ``exec`` and ``stop``
are hit by an observed event: the exec'd command writes a line into the
container's log (its PID 1's stdout) and sleeps; the container's process
logs the SIGTERM of ``stop --timeout 6``. The victim is then killed, and
a zun-compute that was not the victim gets SIGCONT; a killed one is
started again, as an operator's service manager would.

Networks: with ``--neutron`` (the default of the full matrix) Zun
runs with a real Neutron (ML2/OVS agent, its own Open vSwitch; see
:mod:`kata_zun.tests.functional.neutron_env`) and every container gets a
Neutron port (``--net network=...``): a tap made by kata_zun's privsep
daemon (CAP_NET_ADMIN, ``kata_zun.privsep.sys_admin_pctxt``), added to
the integration bridge by os-vif. That daemon is the ``privsep`` target
of the steps that use it: a container's first start (``appcontainer
run``: ``create``), a later ``start`` (the port is plugged again), a
network attach (the NIC's tap) and ``rm`` (the tap is deleted). It is
killed while zun-compute stands at ``neutron-tap-created`` (the daemon
has just made the tap; the OVS port is not there yet) or, for ``rm``,
at ``rm-cleanup`` (the VM gone, the network not yet unplugged), and
must be restarted by oslo.privsep at its next use: the cell checks a new
daemon runs once the container is deleted (the unplug used it). After
each delete nothing of the container may be left on the network path:
no tap of its ports, no OVS port of it on any bridge (by name or by
``external_ids:vm-uuid``), nothing of it in ``nft list ruleset``, no
network record or lease of it in the state path, and no Neutron port
with its ``device_id`` (the ports the driver made are deleted).
``--quick`` and ``--cell`` without ``--neutron`` use the stand-in
Neutron of the other Zun tests (``[kata_network] zun_network = none``):
a network attach is then refused by the driver with a clear reason,
and the cells check that a kill while it is in flight loses nothing.

Cells that cannot exist are not run (``n/a``, the reason is printed
under the table): no QEMU nor shim exists while a container is created,
pulled for or has its volume connected; kata_zun's privsep daemon only
works for Neutron ports, in the steps above. The Cinder stand-in's
volumes are connected by os-brick's ``local`` connector, which runs no
privileged command: no privsep daemon exists to kill (``volume x
privsep``).

Run: ``.venv/bin/python tools/fault-matrix-zun.py [--quick] [--neutron]
[--cell STEP:TARGET] [--at POINT]`` (``--at``: another fault point for
the cells hit by one, e.g. ``--neutron --cell network:compute --at
neutron-tap-created`` kills zun-compute in the middle of an attach).
It starts its own Zun (and, for the volume cells, its own Cinder; with
``--neutron`` its own Neutron and Open vSwitch) with a state path of its
own: it never touches anyone's containers. Shared with the CLI matrix:
:mod:`fault-matrix <tools>`'s process, leak and sandbox checks.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kata_zun.runtime import faultpoint  # noqa: E402
from kata_zun.tests.functional import fake_neutron  # noqa: E402
from kata_zun.tests.functional import zun_env  # noqa: E402

NEUTRON_CIDR = '10.78.1.0/24'
NEUTRON_CIDR2 = '10.78.9.0/24'
#: kata_zun's own privsep daemon (taps), as its command line names it.
KATA_PRIVSEP = b'kata_zun.privsep.sys_admin_pctxt'


def _load_cli_matrix():
    spec = importlib.util.spec_from_file_location(
        'fault_matrix', os.path.join(REPO, 'tools', 'fault-matrix.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fm = _load_cli_matrix()
CellFailed = fm.CellFailed
_check = fm._check

TARGETS = ('compute', 'privsep', 'qemu', 'shim')
STEPS = ('create', 'start', 'exec', 'attach', 'stop', 'rm', 'commit',
         'pull', 'volume', 'network')
#: Where zun-compute stops for each step hit by a fault point.
POINTS = {'create': 'create', 'start': 'start-spawned', 'rm': 'rm',
          'commit': 'commit-read', 'pull': 'zun-pull',
          'volume': 'zun-volume-attached', 'network': 'zun-network-attach'}
#: Where zun-compute stops when kata_zun's privsep daemon is the
#: victim: right after it made the container's tap, or before a delete
#: unplugs the network.
PRIVSEP_POINTS = {'create': 'neutron-tap-created',
                  'start': 'neutron-tap-created',
                  'network': 'neutron-tap-created', 'rm': 'rm-cleanup'}
#: Steps with no VM of the container yet: no QEMU nor shim to kill.
NO_VM = ('create', 'pull', 'volume')


#: ``--at``: another fault point for the cells hit by one (e.g. a
#: zun-compute killed in the middle of a network attach).
POINT_OVERRIDE = None


def point_of(step, target):
    """:returns: the fault point where ``target`` is killed in ``step``."""
    if POINT_OVERRIDE:
        return POINT_OVERRIDE
    if target == 'privsep':
        return PRIVSEP_POINTS[step]
    return POINTS[step]


def not_applicable(step, target, neutron):
    """:returns: why a cell cannot exist (text), or None if it can."""
    if target == 'privsep':
        if step == 'volume':
            return ("the Cinder stand-in's volumes use os-brick's local "
                    "connector, which runs nothing privileged: no "
                    "privsep daemon")
        if not neutron:
            return ("stand-in Neutron: kata_zun's privsep daemon (taps) "
                    "never starts")
        if step not in PRIVSEP_POINTS:
            return "the step makes no privileged call"
        return None
    if target in ('qemu', 'shim') and step in NO_VM:
        return 'no VM yet'
    return None


def applicable(step, target, neutron=False):
    return not_applicable(step, target, neutron) is None


#: One cell per kind of landing (a runtime point, an observed event, a
#: zun-compute restart that retries the step), no Glance nor Cinder.
QUICK = (('create', 'compute'), ('start', 'shim'), ('exec', 'qemu'),
         ('stop', 'compute'), ('rm', 'compute'))
MAIN = fm.MAIN
#: Zun statuses a container may be left in once everything settled.
SETTLED = ('Running', 'Stopped', 'Created', 'Paused', 'Error')
WAIT = fm.WAIT
#: An openstack command in flight while its zun-compute dies waits for
#: the RPC timeout (60 s) at most.
OS_TIMEOUT = 200


class ComputeUnderTest(zun_env.ZunEnvironment):
    """Zun whose zun-compute stops at the point written in a file."""

    point_file = None

    def _zun_env(self):
        env = super()._zun_env()
        env[faultpoint.FILE_ENV] = self.point_file
        env.pop(faultpoint.ENV, None)
        return env


class ZunMatrix(fm.Env):
    """One Zun environment (and Cinder, when asked) for every cell; the
    CLI matrix's checks read its kata-zun state (``fm.Env``).
    """

    def __init__(self, guest_dir, cinder=False, glance=False, keep=False,
                 neutron_venv=None):
        self.keep = keep
        self.neutron = neutron_venv is not None
        #: Neutron networks of the containers (real Neutron only).
        self.net_id = self.net2_id = None
        #: kata_zun privsep daemons this cell killed.
        self.privsep_killed = []
        self.root = tempfile.mkdtemp(prefix='kz-fault-zun-')
        self.state_path = os.path.join(self.root, 'kata')
        os.makedirs(self.state_path)
        os.symlink(guest_dir, os.path.join(self.state_path, 'guest'))
        self.run_path = tempfile.mkdtemp(prefix='kzfz', dir='/tmp')
        self.containers = os.path.join(self.state_path, 'containers')
        self.point_file = os.path.join(self.root, 'fault-point')
        extra = {}
        if cinder:
            from kata_zun.tests.functional import cinder_env
            extra = cinder_env.CinderEnvironment.zun_conf(sys.prefix)
        # Attach goes through zun-wsproxy to the kata console, which
        # zun-compute serves where zun expects Docker.
        console_port = zun_env._free_port()
        extra.update({
            'kata_console': {'listen_host': zun_env.HOST_IP,
                             'listen_port': console_port},
            'docker': {'docker_remote_api_port': console_port},
            'DEFAULT': {'sync_container_state_interval': '5'},
            'kata': {'state_path': self.state_path,
                     'run_path': self.run_path,
                     'writable_layer_mb': '64'},
            'kata_image': {'default_registry': '127.0.0.1:9'}})
        self.zun = ComputeUnderTest(sys.prefix,
                                    os.path.join(self.root, 'zun'),
                                    driver='kata', extra_conf=extra,
                                    glance=glance, neutron=self.neutron,
                                    neutron_venv=neutron_venv, wsproxy=True)
        self.zun.point_file = self.point_file
        self.cinder = None
        if cinder:
            from kata_zun.tests.functional import cinder_env
            venv = zun_env.find_venv('KATA_ZUN_CINDER_VENV',
                                     '.venv-cinder', 'cinder-volume')
            if venv is None:
                raise RuntimeError('no virtualenv with cinder: run '
                                   'tools/install.sh')
            self.cinder = cinder_env.CinderEnvironment(
                venv, os.path.join(self.root, 'cinder'), keystone=self.zun)
        self.conf = self.zun.conf_path

    def start(self):
        if self.cinder:
            self.cinder.start_with_keystone()
        else:
            self.zun.start()
        self.load_busybox()
        if self.neutron:
            self.net_id = self._network('zf-net', NEUTRON_CIDR)
            self.net2_id = self._network('zf-net2', NEUTRON_CIDR2)

    def _network(self, name, cidr):
        net = json.loads(self.os_ok('network', 'create', '-f', 'json',
                                    name))
        self.os_ok('subnet', 'create', '-f', 'json', '--network',
                   net['id'], '--subnet-range', cidr, name + '-sub')
        return net['id']

    def net_options(self):
        """``appcontainer run`` options for the container's network."""
        if not self.neutron:
            return ()
        return ('--net', 'network=%s' % self.net_id)

    def close(self):
        # Not fm.Env.close: it removes self.root, where zun's state is,
        # before zun and its databases are stopped.
        try:
            code, out, _err = self.kz('ps', '-a', '-q')
            if code == 0 and out.split():
                self.kz('rm', '-f', *out.split())
        finally:
            try:
                if self.cinder:
                    self.cinder.stop()
            finally:
                self.zun.stop()
                if not self.keep:
                    shutil.rmtree(self.root, ignore_errors=True)
                    shutil.rmtree(self.run_path, ignore_errors=True)

    # --------------------------------------------------------------- zun
    def os(self, *args, timeout=OS_TIMEOUT):
        """:returns: (exit code, stdout, stderr) of ``openstack``."""
        try:
            return self.zun.openstack(*args, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CellFailed('openstack %s hung for %d s' % (
                ' '.join(args), timeout))

    def os_ok(self, *args):
        code, out, err = self.os(*args)
        _check(code == 0, 'openstack %s: exit %d: %s' % (
            ' '.join(args), code, err.strip()[-400:]))
        return out

    def os_bg(self, *args):
        """``openstack`` in the background: a Popen (text output)."""
        argv = [self.zun._bin('openstack'), '--os-container-api-version',
                zun_env.CONTAINER_API_VERSION] + list(args)
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env=self.zun._env(**self.zun.os_environ()))

    def show(self, name):
        """:returns: the container as zun-api shows it (``openstack
            appcontainer show -f json``), or None.

        Through the API client: a poll that started ``openstack`` twice a
        second took a core from the VMs under test.
        """
        try:
            return self.zun.show('containers', name)
        except Exception as exc:
            raise CellFailed('show %s: %s' % (name, exc))

    def wait_status(self, name, want, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            info = self.show(name)
            _check(info is not None, '%s: the container is lost' % name)
            if info['status'] in want:
                return info
            _check(time.monotonic() < deadline,
                   '%s: status %s (%s) after %d s, not %s' % (
                       name, info['status'], info.get('status_reason'),
                       timeout, '/'.join(want)))
            time.sleep(0.5)

    def wait_gone(self, name, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while self.show(name) is not None:
            _check(time.monotonic() < deadline,
                   '%s still shown %d s after delete' % (name, timeout))
            time.sleep(0.5)

    def actions(self, name, action):
        """:returns: zun's ``action`` records of container ``name``."""
        if getattr(self, '_client', None) is None:
            self._client = self.zun.zun_client()
        return [a for a in self._client.actions.list(name)
                if a.action == action]

    def wait_action(self, name, action, before):
        """Wait until zun-compute finished the action after the
        ``before`` first ones (a cast: the API answered at once).
        """
        deadline = time.monotonic() + WAIT
        while True:
            acts = self.actions(name, action)
            if len(acts) > before and all(
                    getattr(a, 'finish_time', None) for a in acts):
                return
            _check(time.monotonic() < deadline,
                   '%s of %s not finished in %d s' % (action, name, WAIT))
            time.sleep(0.5)

    def uuid_of(self, name):
        """The uuid of a container from zun's database (``show`` would
        ask a stopped zun-compute and wait for the RPC timeout).
        """
        for row in json.loads(self.os_ok('appcontainer', 'list', '-f',
                                         'json')):
            if row.get('name') == name:
                return row['uuid']
        raise CellFailed('zun has no record of %s' % name)

    def run(self, name, *extra):
        """A running container whose process logs SIGTERM and goes on.

        :returns: its kata-zun id.
        """
        self.os_ok('appcontainer', 'run', '--name', name,
                   '--image-pull-policy', 'ifnotpresent',
                   *(self.net_options() + extra),
                   'busybox', 'sh', '-c', MAIN)
        info = self.wait_status(name, ('Running',))
        note('%s running' % name)
        cid = info['uuid'].replace('-', '')
        self.wait_log(cid, b'main-up')
        return cid

    # ---------------------------------------------------------- compute
    def compute_pid(self):
        return self.zun._state['procs']['zun-compute']['pid']

    def arm(self, point):
        for path in (self.point_file, self.point_file + '.reached'):
            if os.path.exists(path):
                os.unlink(path)
        with open(self.point_file + '.tmp', 'w') as f:
            f.write(point + '\n')
        os.rename(self.point_file + '.tmp', self.point_file)

    def disarm(self):
        if os.path.exists(self.point_file):
            os.unlink(self.point_file)

    def wait_point(self, point, op=None, timeout=WAIT):
        """Wait until zun-compute stopped at ``point``."""
        reached = self.point_file + '.reached'
        deadline = time.monotonic() + timeout
        while not os.path.exists(reached):
            # Most zun verbs are casts: the command ends at once; one
            # that failed never reaches zun-compute.
            if op is not None and op.poll() not in (None, 0) and not \
                    os.path.exists(reached):
                _check(False, 'openstack ended (%s) before zun-compute '
                       'reached %s: %s' % (op.returncode, point,
                                           op.stderr.read()[-400:]))
            _check(time.monotonic() < deadline,
                   'zun-compute did not reach %s in %d s' % (point,
                                                             timeout))
            time.sleep(0.01)
        with open(reached) as f:
            name, pid = f.read().split()
        _check(name == point and int(pid) == self.compute_pid(),
               '%s (pid %s) stopped at %s, not zun-compute' % (
                   fm._cmdline(int(pid))[:80], pid, name))
        # SIGSTOP follows the file: wait until it took effect (a
        # zun-compute that died meanwhile is the cell's to judge).
        _check(faultpoint.wait_stopped(int(pid), max(
            0.0, deadline - time.monotonic())) or not fm._alive(int(pid)),
            'zun-compute did not stop at %s in %d s' % (point, timeout))

    def privsep_daemons(self, context=None):
        """:returns: pids of the privsep daemons of this zun-compute
            (only those of ``context``, bytes of their command line).

        A daemon is not zun-compute's child: privsep-helper forks it
        and exits, init adopts it. It has zun-compute's environment,
        and with it this matrix's own fault point file.
        """
        mark = b'\0%s=%s\0' % (faultpoint.FILE_ENV.encode(),
                               self.point_file.encode())
        return [pid for pid in fm._pids()
                if b'privsep-helper' in fm._cmdline(pid) and
                (context is None or context in fm._cmdline(pid)) and
                mark in _environ(pid)]

    def kill_compute(self):
        """SIGKILL zun-compute (only it: its children see it die) and
        start it again; its privsep daemons must end on their own.
        """
        note('killing zun-compute')
        before = self.zun.compute_service() or {}
        pid = self.compute_pid()
        helpers = self.privsep_daemons()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + fm.SETTLE
        while any(fm._alive(p) for p in helpers):
            _check(time.monotonic() < deadline,
                   'privsep daemon %s outlived zun-compute by %d s' % (
                       [p for p in helpers if fm._alive(p)], fm.SETTLE))
            time.sleep(0.05)
        self.zun._kill('zun-compute')
        self.zun._start_compute([self.zun.host])
        self.zun._wait_compute(min_report_count=before.get(
            'report_count', 0), need_provider=False)
        note('zun-compute up again')

    def resume_compute(self):
        os.kill(self.compute_pid(), signal.SIGCONT)

    def kill(self, target, cid, cli=None):
        """SIGKILL ``target``; a stopped zun-compute that survives goes
        on. :returns: True if zun-compute was restarted.
        """
        if target == 'compute':
            self.kill_compute()
            return True
        if target == 'privsep':
            # kata_zun's own daemon (taps); os-vif's (OVS, its own
            # context) is not the target.
            helpers = self.privsep_daemons(KATA_PRIVSEP)
            _check(helpers, "no kata_zun privsep daemon of zun-compute "
                   "to kill")
            note('killing privsep daemon %s' % helpers)
            for pid in helpers:
                os.kill(pid, signal.SIGKILL)
            self.privsep_killed += helpers
        else:
            super().kill(target, cid, cli)
        self.resume_compute()
        return False


def note(text):
    """A timestamped progress line on stderr (where a slow cell spends
    its time).
    """
    print('%s %s' % (time.strftime('%H:%M:%S'), text), file=sys.stderr,
          flush=True)


def _environ(pid):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            return b'\0' + f.read()
    except OSError:
        return b''


def _finish(op, what):
    """Wait for an openstack command that was in flight."""
    try:
        op.wait(OS_TIMEOUT)
    except subprocess.TimeoutExpired:
        op.kill()
        op.wait()
        raise CellFailed('%s hung for %d s' % (what, OS_TIMEOUT))
    # zun-api passes zun-compute's exception on with its remote
    # traceback: the reason is its first line.
    err = op.stderr.read().strip().split('\n')[0]
    return op.returncode, err


# ------------------------------------------------------------------ checks

def settle(m, name, cid):
    """Wait until zun and the host agree on a settled container.

    :returns: its zun record (status, status_reason).
    """
    note('settling %s' % name)
    deadline = time.monotonic() + WAIT
    while True:
        info = m.wait_status(name, SETTLED)
        running = m.settle(cid) if os.path.isdir(
            os.path.join(m.containers, cid)) else False
        status = info['status']
        agree = running if status in ('Running', 'Paused') else not running
        if agree and (status != 'Error' or info.get('status_reason')):
            return info
        _check(time.monotonic() < deadline,
               'zun says %s (%s) while a sandbox %s' % (
                   status, info.get('status_reason'),
                   'runs' if running else 'does not run'))
        time.sleep(1)


def next_operation(m, name, cid, info):
    """A running container execs; another one starts, or says why not.

    :returns: what happened, as text.
    """
    said = '%s%s' % (info['status'], ' [%s]' % info['status_reason']
                     if info.get('status_reason') else '')
    if info['status'] == 'Paused':
        m.os_ok('appcontainer', 'unpause', name)
        info = m.wait_status(name, ('Running',))
    if info['status'] != 'Running':
        before = len(m.actions(name, 'start'))
        code, _out, err = m.os('appcontainer', 'start', name)
        if code != 0:
            _check(err.strip(), 'start failed with no reason')
            return said + '; start refused: %s' % err.strip().split(
                '\n')[0][:160]
        m.wait_action(name, 'start', before)
        info = m.wait_status(name, SETTLED)
        if info['status'] == 'Error':
            _check(info.get('status_reason'), 'start: Error, no reason')
            return said + '; start failed: %s' % info['status_reason']
        _check(m.settle(cid), 'zun says Running, no sandbox runs')
    code, out, err = m.os('appcontainer', 'exec', name, 'echo', 'alive')
    _check(code == 0 and 'alive' in out, 'exec after the fault: exit %d: '
           '%s %s' % (code, out.strip()[-200:], err.strip()[-200:]))
    return said + '; exec ok'


def delete_and_check(m, name, cid):
    note('deleting %s' % name)
    ports = neutron_ports(m, cid)
    m.os_ok('appcontainer', 'delete', '--force', name)
    m.wait_gone(name)
    check_all_gone(m, cid, ports)
    note('%s gone, nothing left' % name)


def neutron_ports(m, cid):
    """:returns: ids of the Neutron ports of container ``cid`` (its
        ``device_id``), for the leak check after its delete.
    """
    if not m.neutron:
        return set()
    return {p['id'] for p in m.zun.neutron.call(
        'GET', '/v2.0/ports?device_id=%s' % _uuid(cid))['ports']}


def _uuid(cid):
    return '%s-%s-%s-%s-%s' % (cid[:8], cid[8:12], cid[12:16], cid[16:20],
                               cid[20:32])


def network_leaks(m, cid, ports):
    """:returns: what is left of a deleted container on the network
        path, as text: taps, OVS ports, nftables rules, network records
        and leases, Neutron ports.
    """
    from kata_zun.network import neutron as kz_neutron
    left = []
    uuid = _uuid(cid)
    now = {p['id']: p for p in m.zun.neutron.call(
        'GET', '/v2.0/ports?device_id=%s' % uuid)['ports']}
    for port in now.values():
        left.append('Neutron port %s (device_id %s, %s)' % (
            port['id'], uuid, port.get('device_owner')))
    taps = {kz_neutron.tap_name(p) for p in set(ports) | set(now)}
    for tap in sorted(taps):
        if os.path.lexists(os.path.join('/sys/class/net', tap)):
            left.append('tap %s' % tap)
    vsctl = m.zun.neutron.vsctl
    for bridge in vsctl('list-br').split():
        for port in vsctl('list-ports', bridge).split():
            if port in taps:
                left.append('OVS port %s on %s' % (port, bridge))
    for iface in vsctl('--bare', '--columns=name', 'find', 'Interface',
                       'external_ids:vm-uuid=%s' % uuid).split():
        left.append('OVS interface %s of vm-uuid %s' % (iface, uuid))
    proc = subprocess.run(['nft', 'list', 'ruleset'], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode:
        left.append('nft list ruleset failed: %s' % proc.stderr.strip())
    for line in proc.stdout.splitlines():
        if cid in line or uuid in line or any(t in line for t in taps):
            left.append('nftables: %s' % line.strip())
    network_dir = os.path.join(m.state_path, 'network')
    for root, _dirs, files in os.walk(network_dir):
        for fname in files:
            path = os.path.join(root, fname)
            try:
                with open(path, 'rb') as f:
                    text = f.read()
            except OSError:
                continue
            if cid in fname or cid.encode() in text:
                left.append('network record or lease %s' % path)
    return left


def check_all_gone(m, cid, ports):
    """The CLI matrix's leak checks, and the network path's with a real
    Neutron (its delete may still be unplugging: bounded wait).
    """
    m.check_gone(cid)
    if not m.neutron:
        return
    # Which ports the check covers (an empty set would check little).
    note('network leak check of %s: its ports %s' % (
        cid[:12], sorted(ports)))
    deadline = time.monotonic() + fm.SETTLE
    while True:
        left = network_leaks(m, cid, ports)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _check(not left, 'leaked on the network path: %s' % '; '.join(left))


def check_privsep_restarted(m):
    """A killed kata_zun privsep daemon was replaced at its next use
    (the cell's delete unplugged the network through it).
    """
    now = m.privsep_daemons(KATA_PRIVSEP)
    fresh = [p for p in now if p not in m.privsep_killed]
    _check(fresh, 'no kata_zun privsep daemon after the delete: the '
           'killed one (%s) was not restarted' % m.privsep_killed)
    return 'privsep daemon %s restarted as %s' % (m.privsep_killed, fresh)


def outcome(m, name, cid):
    """After the fault: settle, the next operation, delete and check.

    :returns: what happened, as text.
    """
    info = settle(m, name, cid)
    said = next_operation(m, name, cid, info)
    delete_and_check(m, name, cid)
    return said


def wait_point_or_fail(m, point, op):
    try:
        m.wait_point(point, op)
    except CellFailed:
        m.disarm()
        raise


# ------------------------------------------------------------------- cells

def _run_killed_at(m, target, name, cids, step, *options):
    """``appcontainer run`` with zun-compute stopping at ``step``'s
    fault point, where ``target`` is killed.

    :param options: more ``appcontainer run`` options.
    :returns: the container's runtime id.
    """
    point = point_of(step, target)
    m.arm(point)
    op = m.os_bg('appcontainer', 'run', '--name', name, *(
        m.net_options() + options + ('busybox', 'sh', '-c', MAIN)))
    wait_point_or_fail(m, point, op)
    cid = m.uuid_of(name).replace('-', '')
    cids.append(cid)
    m.kill(target, cid)
    _finish(op, 'appcontainer run')
    return cid


def cell_create(m, target, name, cids):
    cid = _run_killed_at(m, target, name, cids, 'create',
                         '--image-pull-policy', 'ifnotpresent')
    return outcome(m, name, cid)


def cell_pull(m, target, name, cids):
    cid = _run_killed_at(m, target, name, cids, 'pull',
                         '--image-pull-policy', 'always')
    return outcome(m, name, cid)


def _during(m, target, name, cid, point, *op_args):
    """Run ``op_args`` with zun-compute stopping at ``point``; kill."""
    m.arm(point)
    op = m.os_bg(*op_args)
    wait_point_or_fail(m, point, op)
    m.kill(target, cid)
    return _finish(op, 'appcontainer %s' % op_args[1])


def cell_start(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    m.os_ok('appcontainer', 'stop', '--timeout', '1', name)
    m.wait_status(name, ('Stopped',))
    _during(m, target, name, cid, point_of('start', target), 'appcontainer',
            'start', name)
    return outcome(m, name, cid)


def cell_exec(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    op = m.os_bg('appcontainer', 'exec', name, 'sh', '-c',
                 'echo exec-up > /proc/1/fd/1; sleep 8; echo exec-done')
    m.wait_log(cid, b'exec-up')
    if target == 'compute':
        m.kill_compute()
    else:
        fm.Env.kill(m, target, cid, None)
    _finish(op, 'appcontainer exec')
    return outcome(m, name, cid)


def _attach(m, name):
    """``openstack appcontainer attach`` in a pseudo-terminal, once the
    container's output reaches it.
    """
    from kata_zun.tests.functional import test_zun_console_e2e as console
    argv = [m.zun._bin('openstack'), '--os-container-api-version',
            zun_env.CONTAINER_API_VERSION, 'appcontainer', 'attach', name]
    term = console.Terminal(argv, m.zun._env(**m.zun.os_environ()))
    try:
        term.expect(b'tick', timeout=WAIT)
    except AssertionError as exc:
        term.close()
        raise CellFailed('attach: %s' % str(exc)[-300:])
    return term


def _ended(term):
    """The attach client ends once its stream is cut (not hangs)."""
    try:
        return term.wait(timeout=WAIT)
    except AssertionError:
        raise CellFailed('attach still runs %d s after the kill: %r' % (
            WAIT, term.output[-200:]))
    finally:
        term.close()


def cell_attach(m, target, name, cids):
    # Zun attaches only to interactive containers (a TTY, stdin open).
    m.os_ok('appcontainer', 'create', '--name', name, '--interactive',
            '--image-pull-policy', 'ifnotpresent', *(m.net_options() + (
                'busybox', 'sh', '-c', fm.TICKS)))
    m.wait_status(name, ('Created',))
    m.os_ok('appcontainer', 'start', name)
    info = m.wait_status(name, ('Running',))
    cid = info['uuid'].replace('-', '')
    cids.append(cid)
    term = _attach(m, name)
    if target == 'compute':
        # The console dies with zun-compute; the container must not.
        m.kill_compute()
    else:
        fm.Env.kill(m, target, cid, None)
    _ended(term)
    if target == 'compute':
        _check(m.settle(cid), 'the container died with zun-compute')
        # The restarted zun-compute's console serves a new attach.
        _attach(m, name).close()
    return outcome(m, name, cid)


def cell_stop(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    op = m.os_bg('appcontainer', 'stop', '--timeout', '6', name)
    m.wait_log(cid, b'got-term')
    if target == 'compute':
        m.kill_compute()
    else:
        fm.Env.kill(m, target, cid, None)
    _finish(op, 'appcontainer stop')
    # The shim had the stop (SIGTERM, SIGKILL after 6 s) when the kill
    # came: it finishes it whoever asked. Until then zun and the host
    # both still say running, and a settle would take that moment for
    # the outcome (seen in CI: exec then met zun's Stopped).
    deadline = time.monotonic() + WAIT
    while m.processes(cid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _check(not m.settle(cid), 'the stopped sandbox still runs')
    return outcome(m, name, cid)


def cell_rm(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    ports = neutron_ports(m, cid)
    code, err = _during(m, target, name, cid, point_of('rm', target),
                        'appcontainer', 'delete', '--force', name)
    _check(code == 0, 'delete --force failed: %s' % err[-300:])
    m.wait_gone(name)
    check_all_gone(m, cid, ports)
    return 'deleted'


def cell_commit(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    m.os_ok('appcontainer', 'exec', name, 'sh', '-c',
            'echo committed > /marker')
    repo = 'zf-commit-%s' % target
    _during(m, target, name, cid, point_of('commit', target),
            'appcontainer', 'commit', name, repo)
    said = outcome(m, name, cid)
    # The image was committed or not at all: never half-stored.
    code, out, _err = m.kz('images')
    if code == 0 and repo in out.split():
        m.kz('rmi', repo)
        said += '; image committed'
    return said


def cell_network(m, target, name, cids):
    cid = m.run(name)
    cids.append(cid)
    network = m.net2_id if m.neutron else fake_neutron.NETWORK_NAME
    code, err = _during(m, target, name, cid, point_of('network', target),
                        'appcontainer', 'network', 'attach', '--network',
                        network, name)
    said = ''
    if m.neutron and target != 'compute':
        # The attach is a cast that zun-compute carried on with: wait
        # for its end, then tell what zun made of it. (A killed
        # zun-compute never finishes the action's record.)
        m.wait_action(name, 'network_attach', 0)
        attached = network in (m._client.containers.get(name).addresses
                               or {})
        said = 'attach %s; ' % ('done' if attached else 'not done')
    return said + outcome(m, name, cid)


def cell_volume(m, target, name, cids):
    _check(m.cinder is not None, 'no Cinder in this run')
    vol = json.loads(m.os_ok('volume', 'create', '-f', 'json', '--size',
                             '1', name))
    deadline = time.monotonic() + WAIT
    while m.cinder.volume(vol['id'])['status'] != 'available':
        _check(time.monotonic() < deadline, 'volume not available')
        time.sleep(1)
    try:
        cid = _run_killed_at(m, target, name, cids, 'volume',
                             '--image-pull-policy', 'ifnotpresent',
                             '--mount', 'source=%s,destination=/data' % name)
        said = outcome(m, name, cid)
        deadline = time.monotonic() + WAIT
        while True:
            status = m.cinder.volume(vol['id'])['status']
            if status == 'available':
                break
            _check(time.monotonic() < deadline,
                   'volume %s after the delete' % status)
            time.sleep(1)
        return said + '; volume available again'
    finally:
        m.os('volume', 'delete', vol['id'])


CELLS = {'create': cell_create, 'start': cell_start, 'exec': cell_exec,
         'attach': cell_attach, 'stop': cell_stop, 'rm': cell_rm,
         'commit': cell_commit, 'pull': cell_pull, 'volume': cell_volume,
         'network': cell_network}


def run_cell(m, step, target):
    """:returns: (passed, text)."""
    name = 'zf-%s-%s' % (step, target)
    cids = []
    m.privsep_killed = []
    try:
        said = CELLS[step](m, target, name, cids)
        if target == 'privsep':
            said += '; ' + check_privsep_restarted(m)
        return True, said
    except CellFailed as exc:
        return False, str(exc)
    except Exception as exc:            # a bug of the cell: still a fail
        return False, 'matrix error: %r' % exc
    finally:
        m.disarm()
        try:
            pid = m.compute_pid()
            if fm._alive(pid) and faultpoint.stopped(pid):
                m.resume_compute()
            m.os('appcontainer', 'delete', '--force', name)
            m.cleanup(cids)
        except Exception:
            pass


def print_table(results, neutron=False):
    width = max(len(t) for t in TARGETS) + 4
    print('\n%-9s' % 'step' + ''.join('%-*s' % (width, t) for t in TARGETS))
    for step in STEPS:
        if not any((step, t) in results for t in TARGETS):
            continue
        row = []
        for target in TARGETS:
            if not applicable(step, target, neutron):
                row.append('n/a')
            elif (step, target) not in results:
                row.append('-')
            else:
                row.append('PASS' if results[(step, target)][0] else 'FAIL')
        print('%-9s' % step + ''.join('%-*s' % (width, c) for c in row))
    reasons = {}
    for step in STEPS:
        if not any((step, t) in results for t in TARGETS):
            continue
        for target in TARGETS:
            why = not_applicable(step, target, neutron)
            if why:
                reasons.setdefault(why, []).append('%s x %s' % (step,
                                                                target))
    for why, cells in reasons.items():
        print('n/a: %s: %s' % (', '.join(cells), why))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='a few cells, no Cinder (for CI)')
    parser.add_argument('--cell', action='append', default=[],
                        metavar='STEP:TARGET', help='run only these cells')
    parser.add_argument('--neutron', action='store_true', default=None,
                        help='a real Neutron (the default of the full '
                        'matrix; needs .venv-neutron)')
    parser.add_argument('--no-neutron', dest='neutron',
                        action='store_false',
                        help='the stand-in Neutron (the default of '
                        '--quick and --cell)')
    parser.add_argument('--at', metavar='POINT',
                        help='stop zun-compute at this fault point instead '
                        'of the usual one (cells hit by a point: create, '
                        'start, rm, commit, pull, volume, network)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the state directory (for debugging)')
    args = parser.parse_args(argv)
    global POINT_OVERRIDE
    POINT_OVERRIDE = args.at
    if os.geteuid() != 0:
        print('fault-matrix-zun: needs root', file=sys.stderr)
        return 2
    guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR', fm.DEFAULT_GUEST_DIR)
    if not os.path.isdir(guest_dir):
        print('fault-matrix-zun: no guest assets in %s: run '
              'tools/install.sh' % guest_dir, file=sys.stderr)
        return 2
    neutron = args.neutron
    if neutron is None:
        neutron = not (args.quick or args.cell)
    neutron_venv = None
    if neutron:
        from kata_zun.tests.functional import test_neutron_env
        neutron_venv = test_neutron_env.neutron_venv()
        if neutron_venv is None:
            print('fault-matrix-zun: a real Neutron needs the virtualenv '
                  'with neutron (.venv-neutron, or $KATA_ZUN_NEUTRON_VENV): '
                  'run tools/install-neutron.sh, or use --no-neutron (the '
                  'stand-in: no privsep cell of the network path)',
                  file=sys.stderr)
            return 2
    if args.cell:
        cells = [tuple(c.split(':', 1)) for c in args.cell]
        for cell in cells:
            if len(cell) != 2 or cell[0] not in STEPS or \
                    cell[1] not in TARGETS:
                parser.error('no cell %s' % ':'.join(cell))
            why = not_applicable(cell[0], cell[1], neutron)
            if why:
                parser.error('cell %s is n/a: %s' % (':'.join(cell), why))
    elif args.quick:
        cells = list(QUICK)
    else:
        cells = [(s, t) for s in STEPS for t in TARGETS
                 if applicable(s, t, neutron)]
    start = time.monotonic()
    # Cinder for the volume cells; Glance for commit (zun makes the
    # Glance image before it asks the driver to commit).
    m = ZunMatrix(guest_dir, cinder=any(s == 'volume' for s, _t in cells),
                  glance=any(s == 'commit' for s, _t in cells),
                  keep=args.keep, neutron_venv=neutron_venv)
    results = {}
    try:
        m.start()
        print('environment up in %.0f s (%s Neutron)' % (
            time.monotonic() - start, 'real' if neutron else 'stand-in'),
            flush=True)
        for step, target in cells:
            t0 = time.monotonic()
            passed, text = run_cell(m, step, target)
            results[(step, target)] = (passed, text)
            print('%-4s %-7s x %-7s %5.1fs  %s' % (
                'PASS' if passed else 'FAIL', step, target,
                time.monotonic() - t0, text), flush=True)
    finally:
        m.close()
    stray = [pid for pid in fm._pids() if pid != os.getpid() and (
        m.state_path.encode() in fm._cmdline(pid) or
        m.run_path.encode() in fm._cmdline(pid))]
    print_table(results, neutron)
    passed = sum(1 for ok, _t in results.values() if ok)
    print('\n%d/%d cells passed in %.0f s' % (
        passed, len(results), time.monotonic() - start))
    if stray:
        print('FAIL: processes left on the matrix state path: %s' % stray)
    return 0 if passed == len(results) and not stray else 1


if __name__ == '__main__':
    sys.exit(main())
