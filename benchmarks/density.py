#!/usr/bin/env python3
"""Data plane and density figures of kata-zun, next to the floor.

In one run, in a state path of its own (see benchmarks/isolated.py)::

    .venv/bin/python benchmarks/density.py [--sandboxes 20] [--runs 5]

- the floor: a bare QEMU boot of the same kernel (benchmarks/coldstart.py);
- exec round trip of ``true`` through the API (median, p90);
- stdout guest -> host through the API (MB/s, every byte counted);
- host memory (PSS, from /proc/PID/smaps_rollup) per idle sandbox with
  ``--sandboxes`` running, all restored from the template of their shape
  once it is built (the count of clones is printed): QEMU, shim, both;
  with free page reporting (``[kata_hypervisor] free_page_reporting``)
  as configured, and with ``--compare-reporting`` once more with it
  off, for the difference; with ``--compare-sealed`` once more with
  jailed clones loading the whole RAM instead of mapping the template's
  sealed RAM (``[kata_jail] share_template_ram = false``); with
  ``--compare-forkserver`` once more with every shim started as a Python
  of its own (``[kata] shim_forkserver = false``). The shim fork
  server's own PSS is printed apart, as the template RAM holders' is.

It prints figures; it asserts nothing (the exit status says whether the
stream lost bytes).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from oslo_config import cfg
from oslo_log import log as logging

from kata_zun import conf

import coldstart  # benchmarks/coldstart.py
import isolated  # benchmarks/isolated.py

CONF = conf.CONF
# How long idle sandboxes are left alone before their memory is read:
# the guest reports free pages in batches about 2 s apart.
SETTLE_SECONDS = 20


def pss_kib(pid):
    """:returns: the PSS of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tcg_cache_kib(pid):
    """:returns: the PSS (KiB) of ``pid``'s anonymous writable and
    executable mappings: in QEMU under TCG, the translation cache (its
    only such mapping; under KVM there is none). 0 if it is gone.
    """
    total = 0
    try:
        with open('/proc/%d/smaps' % pid) as f:
            candidate = False
            for line in f:
                fields = line.split()
                if '-' in fields[0] and len(fields) >= 5:
                    # A mapping's header: range, perms, offset, dev,
                    # inode[, path].
                    candidate = ('w' in fields[1] and 'x' in fields[1] and
                                 len(fields) == 5)
                elif candidate and fields[0] == 'Pss:':
                    total += int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total


def med_p90(values):
    ordered = sorted(values)
    return (statistics.median(ordered),
            ordered[max(0, int(len(ordered) * 0.9) - 1)])


def idle_pss(conf_file, count):
    """Start ``count`` idle sandboxes, let them settle, read their PSS.

    :returns: :func:`sandbox_pss`'s lists.
    """
    names = ['idle%d' % i for i in range(count)]
    started = []
    try:
        for name in names:
            try:
                coldstart.cli(conf_file, 'run', '-d', '--name', name,
                              'busybox', 'sleep', '3600')
                started.append(name)
            except subprocess.CalledProcessError as exc:
                print('%s did not start: %s' % (
                    name, exc.stderr.decode('utf-8', 'replace').strip()))
        time.sleep(SETTLE_SECONDS)
        from kata_zun.runtime import manager
        rt = manager.Runtime()
        clones = sum(1 for name in started if restored(name))
        print('%d of %d idle sandboxes restored from a template; template '
              'RAM holders: %.1f MiB PSS in all; shim fork server: %.1f '
              'MiB PSS' % (clones, len(started), holders_pss() / 1024.0,
                           forkserver_pss(CONF.kata.run_path) / 1024.0))
        return sandbox_pss(rt, started)
    finally:
        for name in names:
            subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                            '--config-file', conf_file, 'rm', '-f', name],
                           capture_output=True)


def sandbox_pss(rt, names):
    """:param rt: a :class:`kata_zun.runtime.manager.Runtime`.
    :returns: (QEMU KiB list, shim KiB list, KiB list of QEMU's TCG
        translation cache, part of QEMU's), one entry per sandbox.
    """
    qemu, shim, tcg = [], [], []
    for name in names:
        state = rt.get(name).state
        vm_pid = int(state.get('vm_pid') or 0)
        qemu.append(pss_kib(vm_pid))
        tcg.append(tcg_cache_kib(vm_pid))
        shim.append(pss_kib(int(state.get('shim_pid') or 0)))
    return qemu, shim, tcg


def warm_template(conf_file, timeout=600):
    """Have the template of the idle sandboxes' shape built (the first
    start of a shape boots cold and builds it in the background), so
    that every measured sandbox is a clone.

    :returns: seconds it took.
    """
    from kata_zun.hypervisor import template
    started = time.monotonic()
    coldstart.cli(conf_file, 'run', '--rm', 'busybox', 'true')
    store = template.Store()
    while time.monotonic() - started < timeout:
        names = os.listdir(store.root) if os.path.isdir(store.root) else []
        if any(len(n) == 16 for n in names) and not store.building():
            break
        time.sleep(0.5)
    return time.monotonic() - started


def restored(name):
    """:returns: whether sandbox ``name`` was restored from a template
        (its shim says so).
    """
    from kata_zun.runtime import manager
    c = manager.Runtime().get(name)
    path = os.path.join(CONF.kata.state_path, 'containers', c.id,
                        'shim.log')
    try:
        with open(path, 'rb') as f:
            return b'restored from template' in f.read()
    except OSError:
        return False


def holders_pss():
    """:returns: KiB of the template RAM holders' PSS (one per template;
        their memfd pages are counted where clones map them).
    """
    out = subprocess.run(['pgrep', '-f', 'kata_zun.hypervisor.ramholder'],
                         capture_output=True, text=True).stdout
    return sum(pss_kib(int(p)) for p in out.split())


def forkserver_pss(run_path):
    """:returns: KiB of the run path's shim fork server's PSS (it holds
        the run path open), 0 if there is none.
    """
    out = subprocess.run(['pgrep', '-f', 'kata_zun.shim.forkserver'],
                         capture_output=True, text=True).stdout
    total = 0
    for pid in out.split():
        try:
            fds = os.listdir('/proc/%s/fd' % pid)
            if any(os.path.realpath('/proc/%s/fd/%s' % (pid, fd)) ==
                   os.path.realpath(run_path) for fd in fds):
                total += pss_kib(int(pid))
        except OSError:
            continue
    return total


def print_pss(label, qemu, shim, tcg):
    mib = 1024.0
    total = [q + s for q, s in zip(qemu, shim)]
    print('%-46s QEMU %6.1f + shim %5.1f = %6.1f MiB  (median of %d; '
          'all: %.0f MiB; TCG translation cache %.1f MiB of QEMU\'s)' % (
              label, statistics.median(qemu) / mib,
              statistics.median(shim) / mib, statistics.median(total) / mib,
              len(total), sum(total) / mib, statistics.median(tcg) / mib))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--sandboxes', type=int, default=20)
    parser.add_argument('--stream-mb', type=int, default=100)
    parser.add_argument('--compare-sealed', action='store_true',
                        help='measure idle PSS once more with jailed '
                             'clones loading the whole RAM ([kata_jail] '
                             'share_template_ram = false)')
    parser.add_argument('--compare-forkserver', action='store_true',
                        help='measure idle PSS once more with every shim '
                             'a Python of its own ([kata] shim_forkserver '
                             '= false)')
    parser.add_argument('--compare-reporting', action='store_true',
                        help='measure idle PSS with free page reporting '
                             'off as well')
    args = parser.parse_args()
    iso = isolated.Isolated('kz-density-',
                            '[kata]\nwritable_layer_mb = 256\n')
    conf_file = iso.conf
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[conf_file])
    try:
        coldstart.load_busybox(conf_file, iso.root)
        name, floor = coldstart.floor(iso.root, args.runs)

        size = args.stream_mb * 1000 * 1000
        rtt, got, elapsed = coldstart.data_plane(conf_file,
                                                 max(args.runs, 20), size)

        print('kata-zun data plane and density (accelerator: %s, machine: '
              '%s)' % (name, CONF.kata_hypervisor.machine_type))
        print('%-46s %8.3f s' % ('floor: bare QEMU boot -> /init -> '
                                 'poweroff', statistics.median(floor)))
        med, p90 = med_p90(rtt)
        print('%-46s %8.2f ms (p90 %.2f ms, %d runs)' % (
            'exec round trip (API, exec true)', med * 1000, p90 * 1000,
            len(rtt)))
        print('%-46s %8.1f MB/s (%d of %d bytes)' % (
            'stdout guest -> host (API)', got / elapsed / 1e6, got, size))
        sys.stdout.flush()
        try:
            reporting = CONF.kata_hypervisor.free_page_reporting
        except cfg.NoSuchOptError:     # a kata-zun before the option
            reporting = False
        print('%-46s %8.1f s' % ('template of the idle shape ready after',
                                 warm_template(conf_file)))
        qemu, shim, tcg = idle_pss(conf_file, args.sandboxes)
        print_pss('PSS per idle sandbox, %d running (reporting %s)'
                  % (args.sandboxes, 'on' if reporting else 'off'),
                  qemu, shim, tcg)
        # Each comparison: one option changed, then set back.
        for wanted, label, group, option in (
                (args.compare_sealed, 'no sealed RAM', 'kata_jail',
                 'share_template_ram'),
                (args.compare_forkserver, 'no fork server', 'kata',
                 'shim_forkserver'),
                (args.compare_reporting and reporting, 'reporting off',
                 'kata_hypervisor', 'free_page_reporting')):
            if not wanted:
                continue
            with open(conf_file, 'a') as f:
                f.write('[%s]\n%s = false\n' % (group, option))
            qemu, shim, tcg = idle_pss(conf_file, args.sandboxes)
            print_pss('PSS per idle sandbox, %d running (%s)'
                      % (args.sandboxes, label), qemu, shim, tcg)
            with open(conf_file, 'a') as f:
                f.write('[%s]\n%s = true\n' % (group, option))
        return 0 if got == size else 1
    finally:
        iso.close()


if __name__ == '__main__':
    sys.exit(main())
