#!/usr/bin/env python3
"""Soak of kata-zun (issue 14): many container lives in a row, no leak.

Two soaks, each on a state and run path of its own (never anyone's
containers):

* **CLI**: ``--cli-cycles`` (default 1000) cycles of ``create``,
  ``start``, ``exec``, ``logs``, ``stop``, ``rm`` through the standalone
  CLI, on the isolated kata-zun of ``tools/fault-matrix.py``.
* **Zun**: ``--zun-cycles`` (default 200) cycles of the same verbs
  through a real zun-api and zun-compute
  (:mod:`kata_zun.tests.functional.zun_env`; the Neutron stand-in, no
  real Neutron), with the ``openstack appcontainer`` commands
  (``--zun-client api`` calls python-zunclient in-process instead: the
  same REST calls without a CLI start per verb).

Every ``--check-every`` cycles and at the end it counts what would have
leaked (every count must be 0): QEMU, shim and virtiofsd processes of
the path, run directories, container records, host cgroups of the
soak's sandboxes under ``kata_zun/`` in every hierarchy, their uid
leases, loop devices on the paths, their taps, image store entries
beyond the baseline, an event log past its bound, and (Zun) container
rows in zun's database. zun-compute's RSS and open descriptors are
sampled at start, at every check and at the end. The baseline (images,
run and state entries) is taken after the first cycle, once the VM
template exists.

A count that is not 0 is checked again for up to ``SETTLE`` seconds (a
shim exits after ``rm`` returns): only what stays is a leak.

Run (as root): ``nice -n 10 .venv/bin/python tools/soak.py --cli-cycles
1000 --zun-cycles 200 --progress /tmp/soak.progress``. It prints the
report and exits 1 on any failed cycle or leak.
"""

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kata_zun.hypervisor import base as hv_base  # noqa: E402
from kata_zun.jail import cgroup  # noqa: E402
from kata_zun.network import ipam  # noqa: E402


def _load_matrix():
    """The fault matrix's isolated environment and probes (its file name
    is not a module name).
    """
    spec = importlib.util.spec_from_file_location(
        'kz_fault_matrix', os.path.join(REPO, 'tools', 'fault-matrix.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fm = _load_matrix()

# The container's process: exits at once on SIGTERM (stop is quick).
MAIN = ("trap 'exit 0' TERM; echo up-%s; "
        "while :; do sleep 1 & wait; done")
SETTLE = 30
EVENTS_MAX = 1024 * 1024      # [kata] events_log_max_bytes (default)
ZUN_WAIT = 300
# What a running sandbox always has (checked once per soak).
LIVE_PROBES = ('qemu', 'shim', 'run dirs', 'records', 'cgroups',
               'uid leases')


class CycleFailed(Exception):
    pass


def percentile(values, pct):
    """:returns: the ``pct`` percentile (nearest rank) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1,
                      int(round(pct / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def proc_usage(pid):
    """:returns: (RSS in KiB, open descriptors) of ``pid``, or (None,
        None) if it is gone.
    """
    try:
        with open('/proc/%d/status' % pid) as f:
            rss = [int(line.split()[1]) for line in f
                   if line.startswith('VmRSS:')]
        return (rss[0] if rss else 0), len(os.listdir('/proc/%d/fd' % pid))
    except (OSError, ValueError):
        return None, None


def _listdir(path):
    try:
        return [n for n in os.listdir(path) if not n.startswith('.')]
    except OSError:
        return []


class LeakCounter(object):
    """Counts what the soak's containers left on the host.

    :param state_path: ``[kata] state_path`` of the soak.
    :param run_path: ``[kata] run_path`` of the soak.
    :param db_rows: a callable returning zun's container rows, or None.
    """

    def __init__(self, state_path, run_path, db_rows=None):
        self.state_path = state_path
        self.run_path = run_path
        self.db_rows = db_rows
        self.cids = set()
        self.baseline = None
        try:
            self.layout = cgroup.detect()
        except Exception:
            self.layout = None

    def add(self, cid):
        self.cids.add(cid)

    def note_records(self):
        """Remember the sandboxes that have records now (under Zun the
        runtime's id is not the Zun uuid the client sees).
        """
        self.cids.update(_listdir(os.path.join(self.state_path,
                                               'containers')))

    def _store(self):
        root = os.path.join(self.state_path, 'images')
        return {what: len(_listdir(os.path.join(root, *sub)))
                for what, sub in (('images', ('images',)),
                                  ('block', ('block',)),
                                  ('blobs', ('blobs', 'sha256')))}

    def take_baseline(self):
        self.baseline = {'run': set(_listdir(self.run_path)),
                         'store': self._store()}

    def _processes(self):
        paths = (self.state_path.encode(), self.run_path.encode())
        vms = {hv_base.vm_name(c).encode() for c in self.cids}
        found = {'qemu': 0, 'shim': 0, 'virtiofsd': 0}
        for pid in fm._pids():
            if pid == os.getpid():
                continue
            cmd = fm._cmdline(pid)
            if not (any(p in cmd for p in paths) or
                    any(v in cmd for v in vms)):
                continue
            if not fm._alive(pid):
                continue
            for kind, needle in (('shim', b'kata_zun.cmd.shim'),
                                 ('qemu', b'qemu-system'),
                                 ('virtiofsd', b'virtiofsd')):
                if needle in cmd:
                    found[kind] += 1
        return found

    def _cgroups(self):
        if self.layout is None:
            return -1
        kind, where = self.layout
        roots = [where] if kind == 'v2' else sorted(set(where.values()))
        vms = {hv_base.vm_name(c) for c in self.cids}
        return sum(1 for root in roots
                   for name in _listdir(os.path.join(root, fm.CGROUP_PARENT))
                   if name in vms)

    def _leases(self):
        vms = {hv_base.vm_name(c) for c in self.cids}
        count = 0
        for name in _listdir(fm.LEASE_DIR):
            try:
                with open(os.path.join(fm.LEASE_DIR, name)) as f:
                    count += json.load(f).get('sandbox') in vms
            except (OSError, ValueError, AttributeError):
                continue
        return count

    def _taps(self):
        taps = {ipam.TAP_PREFIX + c[:12] for c in self.cids}
        return sum(1 for n in _listdir('/sys/class/net') if n in taps)

    def _events(self):
        """:returns: 1 if the event log outgrew its bound, else 0."""
        over = 0
        for name in ('events.log', 'events.log.1'):
            try:
                size = os.stat(os.path.join(self.state_path, name)).st_size
            except OSError:
                continue
            # A writer that found the rotation lock taken may append a
            # few lines past the limit.
            over += size > EVENTS_MAX + 64 * 1024
        return over

    def event_bytes(self):
        total = 0
        for name in ('events.log', 'events.log.1'):
            try:
                total += os.stat(os.path.join(self.state_path,
                                              name)).st_size
            except OSError:
                pass
        return total

    def count_once(self):
        """:returns: {what: count}, every count 0 when nothing leaked."""
        counts = self._processes()
        base = self.baseline or {'run': set(), 'store': {}}
        counts['run dirs'] = len(set(_listdir(self.run_path)) -
                                 base['run'])
        counts['records'] = len(_listdir(os.path.join(self.state_path,
                                                      'containers')))
        counts['cgroups'] = self._cgroups()
        counts['uid leases'] = self._leases()
        counts['loop devices'] = sum(
            1 for b in fm._loop_backing()
            if self.state_path in b or self.run_path in b)
        counts['taps'] = self._taps()
        store = self._store()
        counts['image store'] = sum(
            max(0, n - base['store'].get(k, n)) for k, n in store.items())
        counts['image tmp'] = len(_listdir(os.path.join(
            self.state_path, 'images', 'tmp')))
        counts['event log over bound'] = self._events()
        if self.db_rows is not None:
            counts['zun db rows'] = self.db_rows()
        return counts

    def probe_live(self):
        """Check the probes see a running sandbox (else a 0 proves
        nothing).

        :raises: CycleFailed naming the probes that saw nothing.
        """
        counts = self.count_once()
        blind = [k for k in LIVE_PROBES if not counts.get(k)]
        if blind:
            raise CycleFailed('the leak probes do not see a running '
                              'sandbox: %s are 0' % ', '.join(blind))

    def count(self, timeout=SETTLE):
        """Count, again while anything is left, for up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.count_once()
            if not any(counts.values()) or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)


class Soak(object):
    """The cycles of one soak, their timings, failures and checks."""

    def __init__(self, name, leaks, progress, sampled_pid=None):
        self.name = name
        self.leaks = leaks
        self.progress = progress
        self.sampled_pid = sampled_pid
        self.times = []
        self.step_times = {}
        self.failures = []
        self.checks = []
        self.samples = []
        self.max_events = 0

    def log(self, text):
        line = '%s %s %s' % (time.strftime('%H:%M:%S'), self.name, text)
        print(line, flush=True)
        if self.progress:
            with open(self.progress, 'a') as f:
                f.write(line + '\n')

    def step(self, what, func, *args):
        t0 = time.monotonic()
        result = func(*args)
        self.step_times.setdefault(what, []).append(time.monotonic() - t0)
        return result

    def sample(self, label):
        if self.sampled_pid:
            rss, fds = proc_usage(self.sampled_pid())
            self.samples.append((label, rss, fds))
            self.log('%s: zun-compute RSS %s KiB, %s fds' % (
                label, rss, fds))

    def check(self, label):
        counts = self.leaks.count()
        self.checks.append((label, counts))
        self.max_events = max(self.max_events, self.leaks.event_bytes())
        bad = {k: v for k, v in counts.items() if v}
        self.log('%s: leaks %s, event log %d bytes' % (
            label, bad or 'none', self.leaks.event_bytes()))

    def run(self, cycles, every, cycle, cleanup, until=None):
        """:param until: a time.monotonic() after which no cycle starts
            (the soak then stops early, and says so).
        """
        self.sample('start')
        for i in range(1, cycles + 1):
            if until and time.monotonic() > until:
                self.log('time budget spent: stopped after %d of %d cycles'
                         % (i - 1, cycles))
                break
            t0 = time.monotonic()
            try:
                cycle(i)
                self.times.append(time.monotonic() - t0)
                status = 'ok'
            except Exception as exc:
                reason = str(exc) if isinstance(exc, CycleFailed) else (
                    'soak error: %r' % exc)
                self.failures.append((i, reason[:500]))
                status = 'FAIL %s' % reason[:300]
                try:
                    cleanup(i)
                except Exception as exc2:
                    self.log('cleanup of cycle %d: %r' % (i, exc2))
            self.log('cycle %d/%d %.2fs %s' % (i, cycles,
                                               time.monotonic() - t0, status))
            if i == 1:
                self.leaks.count()
                self.leaks.take_baseline()
            if every and i % every == 0:
                self.check('after %d' % i)
                self.sample('after %d' % i)
        self.check('end')
        self.sample('end')

    def report(self):
        lines = ['== %s soak: %d cycles, %d ok, %d failed' % (
            self.name, len(self.times) + len(self.failures), len(self.times),
            len(self.failures))]
        for i, reason in self.failures[:20]:
            lines.append('  cycle %d failed: %s' % (i, reason))
        if self.times:
            lines.append('  cycle time: p50 %.2f s, p99 %.2f s, max %.2f s'
                         % (percentile(self.times, 50),
                            percentile(self.times, 99), max(self.times)))
        for what, values in self.step_times.items():
            lines.append('    %-8s p50 %.2f s, p99 %.2f s' % (
                what, percentile(values, 50), percentile(values, 99)))
        label, final = self.checks[-1]
        lines.append('  leaks at the end: %s' % ', '.join(
            '%s %d' % kv for kv in final.items()))
        worst = {}
        for _label, counts in self.checks:
            for k, v in counts.items():
                worst[k] = max(worst.get(k, 0), v)
        lines.append('  worst at any check (%d checks): %s' % (
            len(self.checks), ', '.join('%s %d' % kv
                                        for kv in worst.items())))
        lines.append('  event log: %d bytes at most' % self.max_events)
        if self.samples:
            rss0, fds0 = self.samples[0][1:]
            rss1, fds1 = self.samples[-1][1:]
            lines.append('  zun-compute RSS %s -> %s KiB, fds %s -> %s '
                         '(all: %s)' % (rss0, rss1, fds0, fds1, ' '.join(
                             '%s/%s' % (r, f) for _l, r, f in self.samples)))
        return '\n'.join(lines)

    def summary(self):
        return {'name': self.name,
                'cycles': len(self.times) + len(self.failures),
                'failed': len(self.failures), 'failures': self.failures,
                'p50': percentile(self.times, 50),
                'p99': percentile(self.times, 99),
                'leaks': self.checks[-1][1] if self.checks else None,
                'worst': {k: max(c[k] for _l, c in self.checks)
                          for k in (self.checks[-1][1] if self.checks
                                    else {})},
                'samples': self.samples}

    def ok(self):
        return not self.failures and self.checks and not any(
            v for _l, counts in self.checks[-1:] for v in counts.values())


# ------------------------------------------------------------------ CLI

def cli_soak(args):
    env = fm.Env(os.environ.get('KATA_ZUN_GUEST_DIR', fm.DEFAULT_GUEST_DIR),
                 keep=args.keep)
    leaks = LeakCounter(env.state_path, env.run_path)
    soak = Soak('cli', leaks, args.progress)

    def ok(*argv):
        code, out, err = env.kz(*argv)
        if code != 0:
            raise CycleFailed('kata-zun %s: exit %d: %s' % (
                argv[0], code, err.strip()[-300:]))
        return out

    def cycle(i):
        name = 'soak-%d' % i
        cid = soak.step('create', ok, 'create', '--name', name, 'busybox',
                        'sh', '-c', MAIN % i).strip()
        leaks.add(cid)
        soak.step('start', ok, 'start', cid)
        if i == 1:
            leaks.probe_live()
        out = soak.step('exec', ok, 'exec', cid, 'echo', 'x-%d' % i)
        if out.strip() != 'x-%d' % i:
            raise CycleFailed('exec printed %r' % out[:200])
        deadline = time.monotonic() + SETTLE
        while 'up-%d' % i not in soak.step('logs', ok, 'logs', cid):
            if time.monotonic() > deadline:
                raise CycleFailed('up-%d not in the logs' % i)
            time.sleep(0.2)
        soak.step('stop', ok, 'stop', '-t', '10', cid)
        soak.step('rm', ok, 'rm', cid)

    def cleanup(i):
        env.kz('rm', '-f', 'soak-%d' % i)

    try:
        env.load_busybox()
        soak.run(args.cli_cycles, args.check_every, cycle, cleanup,
                 until=args.until)
    finally:
        env.close()
    return soak


# ------------------------------------------------------------------ Zun

class ZunVerbs(object):
    """The appcontainer verbs, with the OSC CLI or python-zunclient."""

    def __init__(self, env, how):
        self.env = env
        self.how = how
        self.client = env.zun_client() if how == 'api' else None

    def _os(self, *args):
        code, out, err = self.env.openstack('appcontainer', *args)
        if code != 0:
            raise CycleFailed('appcontainer %s: exit %d: %s' % (
                args[0], code, err.strip()[-300:]))
        return out

    def status(self, name):
        """:returns: (status, reason), (None, None) once gone."""
        if self.client:
            from zunclient import exceptions
            try:
                c = self.client.containers.get(name)
            except exceptions.NotFound:
                return None, None
            return c.status, c.status_reason
        code, out, err = self.env.openstack('appcontainer', 'show', '-f',
                                            'json', name)
        if code != 0:
            if re.search(r'not (be )?found', err):
                return None, None
            raise CycleFailed('appcontainer show: %s' % err.strip()[-300:])
        info = json.loads(out)
        return info['status'], info.get('status_reason')

    def wait(self, name, wanted):
        deadline = time.monotonic() + ZUN_WAIT
        while True:
            status, reason = self.status(name)
            if status in wanted:
                return status
            if status == 'Error' and None not in wanted:
                raise CycleFailed('%s: Error: %s' % (name, reason))
            if time.monotonic() > deadline:
                raise CycleFailed('%s: %s, not %s after %d s' % (
                    name, status, '/'.join(map(str, wanted)), ZUN_WAIT))
            time.sleep(0.2)

    def create(self, name, command):
        if self.client:
            c = self.client.containers.create(
                name=name, image='busybox', command=command,
                image_pull_policy='ifnotpresent')
            return c.uuid
        out = self._os('create', '-f', 'json', '--name', name,
                       '--image-pull-policy', 'ifnotpresent', 'busybox',
                       *command)
        return json.loads(out)['uuid']

    def start(self, name):
        if self.client:
            return self.client.containers.start(name)
        self._os('start', name)

    def execute(self, name, command):
        if self.client:
            # As the OSC command sends it: one shell-quoted string.
            out = self.client.containers.execute(
                name, command=' '.join(shlex.quote(c) for c in command),
                run=True)
            return out.get('output') or ''
        return self._os('exec', name, *command)

    def logs(self, name):
        if self.client:
            return self.client.containers.logs(name, stdout=True,
                                               stderr=True) or ''
        return self._os('logs', name)

    def stop(self, name):
        if self.client:
            return self.client.containers.stop(name, 10)
        self._os('stop', '--timeout', '10', name)

    def delete(self, name, force=False):
        if self.client:
            return self.client.containers.delete(name, force=force)
        self._os('delete', *(['--force'] if force else []) + [name])


def zun_soak(args):
    from kata_zun.image import busybox
    from kata_zun.tests.functional import zun_env

    work = tempfile.mkdtemp(prefix='kz-soak-zun-')
    state_path = os.path.join(work, 'kata')
    os.makedirs(state_path)
    os.symlink(os.environ.get('KATA_ZUN_GUEST_DIR', fm.DEFAULT_GUEST_DIR),
               os.path.join(state_path, 'guest'))
    run_path = tempfile.mkdtemp(prefix='kzsz', dir='/tmp')
    env = zun_env.ZunEnvironment(
        sys.prefix, os.path.join(work, 'zun'), driver='kata', extra_conf={
            'DEFAULT': {'sync_container_state_interval': '5'},
            'kata': {'state_path': state_path, 'run_path': run_path,
                     'writable_layer_mb': '64'},
            'kata_image': {'default_registry': '127.0.0.1:9'}})

    def db_rows():
        proc = subprocess.run(
            ['mysql', '-h', zun_env.HOST_IP, '-u', 'root', '-N', '-B', '-e',
             'SELECT COUNT(*) FROM container', '%s_zun' % env.name],
            capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return -1
        return int(proc.stdout.strip() or 0)

    def compute_pid():
        return env._state['procs']['zun-compute']['pid']

    leaks = LeakCounter(state_path, run_path, db_rows)
    soak = Soak('zun', leaks, args.progress, sampled_pid=compute_pid)
    try:
        env.start()
        archive = os.path.join(work, 'busybox.tar')
        busybox.write_docker_archive(archive)
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', env.conf_path, 'load', '-i',
                        archive], check=True, capture_output=True)
        verbs = ZunVerbs(env, args.zun_client)

        def cycle(i):
            name = 'zsoak-%d' % i
            cid = soak.step('create', verbs.create, name,
                            ['sh', '-c', MAIN % i])
            leaks.add(cid)
            soak.step('created', verbs.wait, name, ('Created',))
            soak.step('start', verbs.start, name)
            soak.step('running', verbs.wait, name, ('Running',))
            leaks.note_records()
            if i == 1:
                leaks.probe_live()
            out = soak.step('exec', verbs.execute, name,
                            ['echo', 'x-%d' % i])
            if 'x-%d' % i not in out:
                raise CycleFailed('exec printed %r' % out[:200])
            deadline = time.monotonic() + SETTLE
            while 'up-%d' % i not in soak.step('logs', verbs.logs, name):
                if time.monotonic() > deadline:
                    raise CycleFailed('up-%d not in the logs' % i)
                time.sleep(0.2)
            soak.step('stop', verbs.stop, name)
            soak.step('stopped', verbs.wait, name, ('Stopped',))
            soak.step('delete', verbs.delete, name)
            soak.step('deleted', verbs.wait, name, (None,))

        def cleanup(i):
            name = 'zsoak-%d' % i
            try:
                verbs.delete(name, force=True)
            except Exception:
                pass
            verbs.wait(name, (None,))

        soak.run(args.zun_cycles, args.check_every, cycle, cleanup,
                 until=args.until)
        if args.zun_client == 'api':
            soak.log('zun-compute log: %d tracebacks' % _tracebacks(
                env.compute_log))
    finally:
        try:
            env.stop()
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(run_path, ignore_errors=True)
    return soak


def _tracebacks(path):
    try:
        with open(path, errors='replace') as f:
            return len(re.findall(r'^Traceback', f.read(), re.M))
    except OSError:
        return -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cli-cycles', type=int, default=1000)
    parser.add_argument('--zun-cycles', type=int, default=200)
    parser.add_argument('--check-every', type=int, default=50,
                        metavar='K', help='count leaks every K cycles')
    parser.add_argument('--zun-client', choices=('osc', 'api'),
                        default='osc', help='openstack appcontainer '
                        '(osc) or python-zunclient in-process (api)')
    parser.add_argument('--progress', help='append progress lines here')
    parser.add_argument('--json', help='write the figures here')
    parser.add_argument('--keep', action='store_true',
                        help='keep the state directories (debugging)')
    parser.add_argument('--minutes', type=float,
                        help='start no cycle after this many minutes')
    args = parser.parse_args(argv)
    # A SIGTERM unwinds (zun services and sandboxes are stopped).
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    args.until = (time.monotonic() + args.minutes * 60
                  if args.minutes else None)
    if os.geteuid() != 0:
        print('soak: needs root (the jail, cgroups)', file=sys.stderr)
        return 2
    soaks = []
    if args.cli_cycles:
        soaks.append(cli_soak(args))
    if args.zun_cycles:
        soaks.append(zun_soak(args))
    print()
    for soak in soaks:
        print(soak.report())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([s.summary() for s in soaks], f, indent=1)
    ok = all(s.ok() for s in soaks)
    print('\nsoak: %s' % ('PASS' if ok else 'FAIL'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
