#!/usr/bin/env python3
"""Fault matrix of the standalone kata-zun CLI (issue 14).

For each step of a container's life (create, boot, start, exec, stop,
rm) and each process that can die during it (QEMU, the sandbox shim, the
CLI itself), run the real CLI against real VMs, SIGKILL that process
while the step is in flight, then check:

* no container lost: its record exists (or is cleanly gone after rm) and
  ``inspect`` says what happened (status, exit code, error);
* nothing orphaned right after the fault: no QEMU or virtiofsd without
  its shim, no shim without its QEMU;
* the next operation on the container works (``start``, ``exec``,
  ``rm``) or fails with a clear error (never a traceback);
* nothing leaked once it is removed: no process, run directory, record,
  host cgroup, uid lease, loop device or open descriptor of it.

It prints one line per cell as it goes, then the table, and exits 1 if
any cell failed.

How a step is hit (no guessed delays):

* ``create``: the CLI stops itself at the ``create`` fault point
  (:mod:`kata_zun.runtime.faultpoint`: the writable layer made, the
  record not yet whole) and is killed there.
* ``boot``: ``run -d`` is started; the kill comes as soon as the shim has
  recorded its QEMU's pid (QEMU started, the agent not yet up: a boot
  under TCG takes 1.5 s or more, the poll is every 10 ms).
* ``volume``: as ``boot``, for a container with a host directory
  shared through virtiofsd (``-v DIR:/data``): no virtiofsd may outlive
  its sandbox.
* ``start``: the CLI stops itself at the ``start-spawned`` point (the VM
  up and its container created, its process not started).
* ``exec``: the exec'd command prints a line and sleeps: the kill comes
  once that line has reached the CLI.
* ``stop``: the container's process traps SIGTERM and logs it; ``stop -t
  6`` is in flight (SIGTERM sent, SIGKILL not yet) once that line is in
  the container's log.
* ``rm``: the CLI stops itself at the ``rm`` point (QEMU and shim are
  killed there: the sandbox dies under a running rm) or at
  ``rm-cleanup`` (the CLI is killed there: the VM is gone, the record
  not yet removed).

Limits: a fault point pauses the CLI between two statements, so the
kill of QEMU or the shim lands at that statement of the CLI; what the
shim itself is doing at that moment is not chosen. The CLI's network
driver is ``none`` (taps and nftables rules are not exercised), and the
Zun driver, zun-compute, privsep, commit, pull and volume attach are not
covered here; a volume is only exercised at boot.

Run: ``.venv/bin/python tools/fault-matrix.py [--quick]``. It uses a
state and run path of its own: it never touches anyone's containers.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kata_zun.hypervisor import base as hv_base  # noqa: E402
from kata_zun.jail import cgroup  # noqa: E402
from kata_zun.runtime import faultpoint  # noqa: E402
from kata_zun.shim import logs  # noqa: E402

DEFAULT_GUEST_DIR = '/var/lib/kata-zun/guest'
LEASE_DIR = '/run/kata-zun-jail/uids'
CGROUP_PARENT = 'kata_zun'
TARGETS = ('qemu', 'shim', 'cli')
STEPS = ('create', 'boot', 'volume', 'start', 'exec', 'attach', 'stop',
         'rm')
# Nothing to kill: no QEMU nor shim exists while a record is created.
NOT_APPLICABLE = {('create', 'qemu'), ('create', 'shim')}
QUICK = (('create', 'cli'), ('boot', 'cli'), ('start', 'shim'),
         ('exec', 'qemu'), ('attach', 'shim'), ('stop', 'cli'),
         ('rm', 'shim'))
# The container's process: logs SIGTERM and goes on (stop must SIGKILL).
MAIN = ("trap 'echo got-term' TERM; echo main-up; "
        "while :; do sleep 1 & wait; done")
# The attach step's process: a line a second for the attached client.
TICKS = 'echo main-up; while :; do echo tick; sleep 1; done'
# Seconds: generous, for a loaded 2-core TCG host (a boot takes 1.5-10 s,
# far more while dozens of VMs boot at once): a slow host makes a cell
# slower, never a failure.
WAIT = 300
CLI_TIMEOUT = 400
BOOT_TIMEOUT = 300
SETTLE = 30


class CellFailed(Exception):
    pass


def _check(condition, reason):
    if not condition:
        raise CellFailed(reason)


def _cmdline(pid):
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ')
    except OSError:
        return b''


def _alive(pid):
    """:returns: True if ``pid`` runs (a zombie does not)."""
    return faultpoint.state(pid) not in (b'', b'Z', b'X')


def _pids():
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]


class Cli(object):
    """One CLI process, its output read as it comes."""

    def __init__(self, env, args, point=None):
        child_env = dict(os.environ)
        child_env.pop(faultpoint.ENV, None)
        # A CLI that hangs is made to print where (SIGABRT, below).
        child_env['PYTHONFAULTHANDLER'] = '1'
        if point:
            child_env[faultpoint.ENV] = point
        self.out = bytearray()
        self.err = bytearray()
        self.proc = subprocess.Popen(env.argv(args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env,
                                     cwd=REPO)
        self._threads = [
            threading.Thread(target=self._read, args=(s, b), daemon=True)
            for s, b in ((self.proc.stdout, self.out),
                         (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, buf):
        while True:
            data = stream.read1(65536)
            if not data:
                return
            buf += data

    def wait_for(self, what, needle, timeout=WAIT):
        """Wait for ``needle`` in stdout or stderr."""
        deadline = time.monotonic() + timeout
        while needle not in self.out and needle not in self.err:
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(5)
                _check(needle in self.out or needle in self.err,
                       '%s: the CLI ended (%s) before it: %s' % (
                           what, self.proc.poll(), self.text()))
                return
            _check(time.monotonic() < deadline,
                   '%s not reached in %d s' % (what, timeout))
            time.sleep(0.01)

    def wait_for_point(self, point, timeout=WAIT):
        """Wait until the CLI stopped itself at its fault point: its
        line comes just before its SIGSTOP, and a SIGCONT sent in
        between would be lost.
        """
        self.wait_for('the %s fault point' % point, faultpoint.MARKER,
                      timeout)
        _check(faultpoint.wait_stopped(self.proc.pid, timeout),
               'the CLI did not stop at the %s fault point: %s' % (
                   point, self.text()))

    def wait(self, timeout=CLI_TIMEOUT):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            where = self._where()
            self.proc.kill()
            self.proc.wait()
            raise CellFailed('the CLI hung for %d s%s' % (timeout, where))
        for t in self._threads:
            t.join(5)
        return code

    def _where(self):
        """:returns: what a hung CLI was doing, for the failure."""
        if faultpoint.stopped(self.proc.pid):
            return ' (stopped: a SIGCONT was lost)'
        size = len(self.err)
        self.proc.send_signal(signal.SIGABRT)   # faulthandler's dump
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for t in self._threads:
            t.join(1)
        dump = bytes(self.err[size:][-3000:]).decode('utf-8', 'replace')
        return ': %s' % dump.strip().replace('\n', ' | ')

    def kill(self):
        self.proc.kill()
        self.wait()

    def text(self):
        return (bytes(self.err[-600:]).decode('utf-8', 'replace')
                .strip().replace('\n', ' | '))


class Env(object):
    """An isolated kata-zun: its own state path, run path and config."""

    def __init__(self, guest_dir, keep=False):
        self.keep = keep
        self.root = tempfile.mkdtemp(prefix='kz-fault-matrix-')
        self.state_path = os.path.join(self.root, 'state')
        os.makedirs(self.state_path)
        os.symlink(guest_dir, os.path.join(self.state_path, 'guest'))
        # Unix socket paths must stay short.
        self.run_path = tempfile.mkdtemp(prefix='kzfm', dir='/tmp')
        self.conf = os.path.join(self.root, 'kata-zun.conf')
        with open(self.conf, 'w') as f:
            f.write('[DEFAULT]\ndebug = True\n'
                    '[kata]\nstate_path = %s\nrun_path = %s\n'
                    'writable_layer_mb = 64\nshim_start_timeout = %d\n'
                    '[kata_hypervisor]\naccelerator = %s\n'
                    '[kata_image]\ndefault_registry = 127.0.0.1:9\n'
                    '[kata_network]\ndriver = none\n' % (
                        self.state_path, self.run_path, BOOT_TIMEOUT,
                        os.environ.get('KATA_ZUN_ACCEL', 'auto')))
        self.containers = os.path.join(self.state_path, 'containers')

    def argv(self, args):
        return [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
                self.conf] + list(args)

    def kz(self, *args, timeout=CLI_TIMEOUT):
        """:returns: (exit code, stdout text, stderr text)."""
        try:
            proc = subprocess.run(self.argv(args), capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=timeout,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            raise CellFailed('kata-zun %s hung for %d s' % (
                ' '.join(args), timeout))
        return (proc.returncode, proc.stdout.decode('utf-8', 'replace'),
                proc.stderr.decode('utf-8', 'replace'))

    def ok(self, *args):
        code, out, err = self.kz(*args)
        _check(code == 0, 'kata-zun %s: exit %d: %s' % (
            ' '.join(args), code, err.strip()[-400:]))
        return out

    def load_busybox(self):
        from kata_zun.image import busybox
        path = os.path.join(self.root, 'busybox.tar')
        busybox.write_docker_archive(path, repo_tags=('busybox:latest',))
        self.ok('load', '-i', path)
        os.unlink(path)

    def inspect(self, ref):
        """:returns: the container's inspect dict, or None if gone."""
        code, out, err = self.kz('inspect', ref)
        if code != 0:
            _check('No such container' in err,
                   'inspect %s: exit %d: %s' % (ref, code, err.strip()))
            return None
        return json.loads(out)[0]

    def cid_of(self, name, timeout=WAIT):
        """The id of the record named ``name``, as soon as it exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for cid in os.listdir(self.containers):
                try:
                    with open(os.path.join(self.containers, cid,
                                           'config.json')) as f:
                        if json.load(f).get('name') == name:
                            return cid
                except (OSError, ValueError):
                    continue
            time.sleep(0.01)
        raise CellFailed('no record named %s after %d s' % (name, timeout))

    def state(self, cid):
        try:
            with open(os.path.join(self.containers, cid, 'state.json')) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def wait_state(self, cid, key, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.state(cid).get(key)
            if value:
                return value
            time.sleep(0.01)
        raise CellFailed('the shim recorded no %s in %d s' % (key, timeout))

    def wait_log(self, cid, needle, timeout=WAIT):
        path = os.path.join(self.containers, cid, 'container.log')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if any(needle in data for _ts, _s, data in logs.read(path)):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise CellFailed('%r not in the container log in %d s' % (
            needle, timeout))

    def run_container(self, name):
        cid = self.ok('run', '-d', '--name', name, 'busybox', 'sh', '-c',
                      MAIN).strip()
        self.wait_log(cid, b'main-up')
        return cid

    # ------------------------------------------------------------ processes
    def processes(self, cid):
        """:returns: {pid: kind} of the processes of one sandbox (kind:
            shim, qemu, virtiofsd or other).
        """
        found = {}
        vm = hv_base.vm_name(cid).encode()
        run_dir = os.path.join(self.run_path, cid[:16]).encode()
        me = os.getpid()
        for pid in _pids():
            if pid == me:
                continue
            cmd = _cmdline(pid)
            if not (cid.encode() in cmd or vm in cmd or run_dir in cmd):
                continue
            if not _alive(pid):
                continue
            if b'kata_zun.cmd.shim' in cmd:
                kind = 'shim'
            elif b'qemu-system' in cmd:
                kind = 'qemu'
            elif b'virtiofsd' in cmd:
                kind = 'virtiofsd'
            elif b'kata_zun.cmd.cli' in cmd:
                continue        # a CLI naming the container
            else:
                kind = 'other'
            found[pid] = kind
        return found

    def settle(self, cid, timeout=SETTLE):
        """Wait until the sandbox is whole or wholly gone.

        :returns: True if it runs (shim and QEMU), False if gone.
        :raises: CellFailed on an orphan (a QEMU or virtiofsd without its
            shim, a shim without its QEMU) that stays.
        """
        deadline = time.monotonic() + timeout
        while True:
            kinds = sorted(set(self.processes(cid).values()))
            if not kinds:
                return False
            if 'shim' in kinds and 'qemu' in kinds:
                return True
            if time.monotonic() > deadline:
                raise CellFailed('orphaned after %d s: %s' % (
                    timeout, ', '.join(kinds)))
            time.sleep(0.05)

    def shim_fds(self, cid):
        pids = [p for p, k in self.processes(cid).items() if k == 'shim']
        _check(len(pids) == 1, 'shims of %s: %s' % (cid[:12], pids))
        return len(os.listdir('/proc/%d/fd' % pids[0]))

    def kill(self, target, cid, cli):
        """SIGKILL the target process of one sandbox."""
        if target == 'cli':
            cli.kill()
            return
        key = 'shim_pid' if target == 'shim' else 'vm_pid'
        pid = self.state(cid).get(key)
        kinds = self.processes(cid)
        _check(pid and kinds.get(pid) == target,
               'no %s to kill (state.json %s=%s, processes %s)' % (
                   target, key, pid, kinds))
        os.kill(pid, signal.SIGKILL)

    # ---------------------------------------------------------------- leaks
    def leaks(self, cid):
        """:returns: what is left of a removed container, as text."""
        left = []
        procs = self.processes(cid)
        if procs:
            left.append('processes %s' % procs)
        run_dir = os.path.join(self.run_path, cid[:16])
        record = os.path.join(self.containers, cid)
        for path, what in ((run_dir, 'run dir'), (record, 'record')):
            if os.path.lexists(path):
                left.append('%s %s' % (what, path))
        vm = hv_base.vm_name(cid)
        try:
            group = cgroup.for_sandbox(CGROUP_PARENT, vm)
            left += ['cgroup %s' % d for d in group.directories()
                     if os.path.isdir(d)]
        except Exception as exc:
            left.append('cgroups not checked: %s' % exc)
        try:
            for name in os.listdir(LEASE_DIR):
                try:
                    with open(os.path.join(LEASE_DIR, name)) as f:
                        if json.load(f).get('sandbox') == vm:
                            left.append('uid lease %s' % name)
                except (OSError, ValueError):
                    continue
        except FileNotFoundError:
            pass
        for loop in _loop_backing():
            if self.state_path in loop or self.run_path in loop:
                left.append('loop device on %s' % loop)
        for pid, fd, target in _open_files((record, run_dir)):
            left.append('fd %s of pid %d on %s' % (fd, pid, target))
        return left

    def check_gone(self, cid, timeout=SETTLE):
        """Fail on what is still left of ``cid`` after ``timeout``: a
        shim on its way out (no command line any more, its descriptors
        not yet closed) is not a leak, what stays is.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self.leaks(cid)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _check(not left, 'leaked: %s' % '; '.join(left))

    def cleanup(self, cids):
        """Remove what a cell left, whatever happened in it."""
        for cid in cids:
            if os.path.isdir(os.path.join(self.containers, cid)):
                self.kz('rm', '-f', cid)

    def close(self):
        code, out, _err = self.kz('ps', '-a', '-q')
        if code == 0 and out.split():
            self.kz('rm', '-f', *out.split())
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
            shutil.rmtree(self.run_path, ignore_errors=True)


def _loop_backing():
    found = []
    try:
        names = os.listdir('/sys/block')
    except OSError:
        return found
    for name in names:
        try:
            with open('/sys/block/%s/loop/backing_file' % name) as f:
                found.append(f.read().strip())
        except OSError:
            continue
    return found


def _open_files(prefixes):
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        try:
            fds = os.listdir('/proc/%d/fd' % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            except OSError:
                continue
            if any(target == p or target.startswith(p + '/')
                   for p in prefixes):
                yield pid, fd, target


# ------------------------------------------------------------------ cells

def _no_traceback(cli):
    _check(b'Traceback' not in cli.err,
           'the CLI crashed: %s' % cli.text())


def _clear_failure(cli, code):
    """A CLI that saw its sandbox die fails with one clear error line."""
    _no_traceback(cli)
    if code != 0:
        _check(b'kata-zun: error: ' in cli.err,
               'exit %d without a clear error: %s' % (code, cli.text()))


def _explained(info, what):
    """The record says what happened to a container that does not run."""
    _check(info is not None, '%s: the container is lost' % what)
    state = info['State']
    _check(state['Status'] in ('created', 'exited'),
           '%s: status %s' % (what, state['Status']))
    _check(state['Error'] or state['ExitCode'] not in (None, 0),
           '%s: %s with no error nor exit code' % (what, state['Status']))
    return '%s%s' % (state['Status'], ' [%s]' % state['Error']
                     if state['Error'] else ' (%s)' % state['ExitCode'])


def _restarts(env, name, cid):
    """The next operation: start works, and the container runs."""
    env.ok('start', name)
    info = env.inspect(name)
    _check(info and info['State']['Status'] == 'running',
           'after start: %s' % (info and info['State']))
    _check(env.settle(cid), 'start said ok but no sandbox runs')
    out = env.ok('exec', name, 'echo', 'alive')
    _check(out.strip() == 'alive', 'exec after start printed %r' % out)


def _shim_dropped_client(env, cid, fds):
    """The shim closes a killed client's connection: within SETTLE s it
    holds no more descriptors than the ``fds`` it had before the client.
    """
    deadline = time.monotonic() + SETTLE
    while env.shim_fds(cid) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    _check(env.shim_fds(cid) <= fds, 'the shim kept %d fds more' % (
        env.shim_fds(cid) - fds))


def cell_create(env, target, name, cids):
    cli = Cli(env, ['run', '-d', '--name', name, 'busybox', 'sleep', '600'],
              point='create')
    cli.wait_for_point('create')
    orphans = [c for c in os.listdir(env.containers) if not os.path.exists(
        os.path.join(env.containers, c, 'config.json')) and
        not c.startswith('.')]
    _check(len(orphans) == 1, 'half-made records: %s' % orphans)
    cids.extend(orphans)
    cli.kill()
    _check(name not in env.ok('ps', '-a'),
           'a half-made record is listed')
    cid = env.ok('run', '-d', '--name', name, 'busybox', 'sleep',
                 '600').strip()
    cids.append(cid)
    env.check_gone(orphans[0])
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return 'half-made record swept by the next run; name free'


def cell_boot(env, target, name, cids, volume=False):
    extra = []
    if volume:
        shared = os.path.join(env.root, 'shared-' + name)
        os.makedirs(shared, exist_ok=True)
        extra = ['-v', '%s:/data' % shared]
    cli = Cli(env, ['run', '-d', '--name', name] + extra + [
        'busybox', 'sh', '-c', MAIN])
    cid = env.cid_of(name)
    cids.append(cid)
    env.wait_state(cid, 'vm_pid')
    _check(not env.state(cid).get('boot_timing'),
           'the VM was up before the kill: not mid-boot')
    if volume:
        _check('virtiofsd' in env.processes(cid).values(),
               'no virtiofsd runs for the volume')
    env.kill(target, cid, cli)
    if target != 'cli':
        code = cli.wait()
        _check(code != 0, 'run -d succeeded with its %s killed' % target)
        _clear_failure(cli, code)
    # A starter killed mid-boot: the shim notices once the VM is up.
    deadline = time.monotonic() + WAIT
    while env.processes(cid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _check(not env.settle(cid), 'a sandbox runs that nobody started')
    said = _explained(env.inspect(name), 'after the kill')
    _restarts(env, name, cid)
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return said


def cell_start(env, target, name, cids):
    cli = Cli(env, ['run', '-d', '--name', name, 'busybox', 'sh', '-c',
                    MAIN], point='start-spawned')
    cli.wait_for_point('start-spawned')
    cid = env.cid_of(name)
    cids.append(cid)
    env.kill(target, cid, cli)
    if target != 'cli':
        cli.proc.send_signal(signal.SIGCONT)
        code = cli.wait()
        _check(code != 0, 'run -d succeeded with its %s killed' % target)
        _clear_failure(cli, code)
        _check(not env.settle(cid), 'the sandbox still runs')
        said = _explained(env.inspect(name), 'after the kill')
    else:
        _check(env.settle(cid), 'the booted sandbox is gone')
        info = env.inspect(name)
        _check(info and info['State']['Status'] == 'created',
               'status %s' % (info and info['State']['Status']))
        said = 'created (VM up, not started)'
    _restarts(env, name, cid)
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return said


def cell_exec(env, target, name, cids):
    cid = env.run_container(name)
    cids.append(cid)
    fds = env.shim_fds(cid)
    cli = Cli(env, ['exec', name, 'sh', '-c',
                    'echo exec-up; sleep 8; echo exec-done'])
    cli.wait_for('the exec', b'exec-up')
    env.kill(target, cid, cli)
    if target == 'cli':
        _check(env.settle(cid), 'the container died with its exec client')
        out = env.ok('exec', name, 'echo', 'alive')
        _check(out.strip() == 'alive', 'exec printed %r' % out)
        _shim_dropped_client(env, cid, fds)
        said = 'running; the shim dropped the client'
    else:
        code = cli.wait()
        _check(code != 0, 'exec exited 0 with its %s killed' % target)
        _clear_failure(cli, code)
        _check(not env.settle(cid), 'the sandbox still runs')
        said = _explained(env.inspect(name), 'after the kill')
        _restarts(env, name, cid)
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return said


def cell_attach(env, target, name, cids):
    cid = env.ok('run', '-d', '--name', name, 'busybox', 'sh', '-c',
                 TICKS).strip()
    cids.append(cid)
    env.wait_log(cid, b'main-up')
    fds = env.shim_fds(cid)
    attach = ['attach', '--no-stdin', '--sig-proxy', 'false', name]
    cli = Cli(env, attach)
    cli.wait_for('the attached output', b'tick')
    env.kill(target, cid, cli)
    if target == 'cli':
        _check(env.settle(cid), 'the container died with its attached '
               'client')
        _shim_dropped_client(env, cid, fds)
        # The next client is served as the first was.
        again = Cli(env, attach)
        again.wait_for('output to a new attach', b'tick')
        again.kill()
        said = 'running; the shim dropped the client'
    else:
        code = cli.wait()
        _check(code != 0, 'attach exited 0 with its %s killed' % target)
        _no_traceback(cli)
        _check(not env.settle(cid), 'the sandbox still runs')
        info = env.inspect(name)
        said = _explained(info, 'after the kill')
        # attach ends as the container did: its exit code, or one clear
        # error line.
        _check(code == info['State']['ExitCode'] or
               b'kata-zun: error: ' in cli.err,
               'attach exit %d, the container\'s %s, no error line: %s' % (
                   code, info['State']['ExitCode'], cli.text()))
        _restarts(env, name, cid)
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return said


def cell_stop(env, target, name, cids):
    cid = env.run_container(name)
    cids.append(cid)
    cli = Cli(env, ['stop', '-t', '6', name])
    env.wait_log(cid, b'got-term')
    env.kill(target, cid, cli)
    if target != 'cli':
        _clear_failure(cli, cli.wait())
    deadline = time.monotonic() + WAIT
    while env.processes(cid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _check(not env.settle(cid), 'the stopped sandbox still runs')
    info = env.inspect(name)
    said = _explained(info, 'after the stop')
    if target == 'cli':
        _check(info['State']['ExitCode'] == 137,
               'exit code %s, not 137 (SIGKILL after -t 6)' %
               info['State']['ExitCode'])
    _restarts(env, name, cid)
    env.ok('rm', '-f', name)
    env.check_gone(cid)
    return said


def cell_rm(env, target, name, cids):
    cid = env.run_container(name)
    cids.append(cid)
    point = 'rm-cleanup' if target == 'cli' else 'rm'
    cli = Cli(env, ['rm', '-f', name], point=point)
    cli.wait_for_point(point)
    env.kill(target, cid, cli)
    if target != 'cli':
        cli.proc.send_signal(signal.SIGCONT)
        code = cli.wait()
        _no_traceback(cli)
        _check(code == 0, 'rm -f failed: %s' % cli.text())
        _check(env.inspect(name) is None, 'rm -f left the record')
        said = 'removed'
    else:
        _check(not env.settle(cid), 'the sandbox still runs')
        said = _explained(env.inspect(name), 'after the kill')
        env.ok('rm', name)
        _check(env.inspect(name) is None, 'rm left the record')
    env.check_gone(cid)
    return said


def cell_volume(env, target, name, cids):
    return cell_boot(env, target, name, cids, volume=True)


CELLS = {'create': cell_create, 'boot': cell_boot, 'volume': cell_volume,
         'start': cell_start,
         'exec': cell_exec, 'attach': cell_attach, 'stop': cell_stop,
         'rm': cell_rm}


def run_cell(env, step, target):
    """:returns: (passed, text)."""
    name = 'fm-%s-%s' % (step, target)
    cids = []
    try:
        return True, CELLS[step](env, target, name, cids)
    except CellFailed as exc:
        return False, str(exc)
    except Exception as exc:            # a bug of the cell: still a fail
        return False, 'matrix error: %r' % exc
    finally:
        try:
            env.cleanup(cids)
        except Exception:
            pass


def print_table(results):
    width = max(len(t) for t in TARGETS) + 6
    print('\n%-8s' % 'step' + ''.join('%-*s' % (width, t) for t in TARGETS))
    for step in STEPS:
        row = [step]
        if not any((step, t) in results for t in TARGETS):
            continue
        for target in TARGETS:
            if (step, target) in NOT_APPLICABLE:
                row.append('n/a')
            elif (step, target) not in results:
                row.append('-')
            else:
                row.append('PASS' if results[(step, target)][0] else 'FAIL')
        print('%-8s' % row[0] + ''.join('%-*s' % (width, c)
                                        for c in row[1:]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='a few cells (for CI, under 3 minutes)')
    parser.add_argument('--cell', action='append', default=[],
                        metavar='STEP:TARGET', help='run only these cells')
    parser.add_argument('--keep', action='store_true',
                        help='keep the state directory (for debugging)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print('fault-matrix: needs root (the jail, cgroups)',
              file=sys.stderr)
        return 2
    guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR', DEFAULT_GUEST_DIR)
    if not os.path.isdir(guest_dir):
        print('fault-matrix: no guest assets in %s: run tools/install.sh'
              % guest_dir, file=sys.stderr)
        return 2
    if args.cell:
        cells = [tuple(c.split(':', 1)) for c in args.cell]
        for cell in cells:
            if cell[0] not in STEPS or cell[1:] and cell[1] not in TARGETS:
                parser.error('no cell %s' % ':'.join(cell))
    elif args.quick:
        cells = list(QUICK)
    else:
        cells = [(s, t) for s in STEPS for t in TARGETS
                 if (s, t) not in NOT_APPLICABLE]
    env = Env(guest_dir, keep=args.keep)
    results = {}
    start = time.monotonic()
    try:
        env.load_busybox()
        for step, target in cells:
            t0 = time.monotonic()
            passed, text = run_cell(env, step, target)
            results[(step, target)] = (passed, text)
            print('%-4s %-6s x %-5s %5.1fs  %s' % (
                'PASS' if passed else 'FAIL', step, target,
                time.monotonic() - t0, text), flush=True)
    finally:
        env.close()
    # Whatever the cells did, nothing of this state path may run on.
    stray = [pid for pid in _pids() if pid != os.getpid() and (
        env.state_path.encode() in _cmdline(pid) or
        env.run_path.encode() in _cmdline(pid))]
    print_table(results)
    passed = sum(1 for ok, _t in results.values() if ok)
    print('\n%d/%d cells passed in %.0f s' % (
        passed, len(results), time.monotonic() - start))
    if stray:
        print('FAIL: processes left on the matrix state path: %s' % stray)
    return 0 if passed == len(results) and not stray else 1


if __name__ == '__main__':
    sys.exit(main())
