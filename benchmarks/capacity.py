#!/usr/bin/env python3
"""How many idle sandboxes this host holds with new starts still fast.

In one run, in a state path of its own (see benchmarks/isolated.py)::

    .venv/bin/python benchmarks/capacity.py [--max 300]

- the floor: a bare QEMU boot of the same kernel (benchmarks/coldstart.py);
- the warm median: the median of the first ``--baseline`` timed
  ``run -d busybox sleep`` starts, all restored from the template of
  their shape (built first);
- then more idle sandboxes, one after the other, each start timed, until
  ``--max`` run, a start fails or is refused (memory admission: the
  host's memory limit), or the median of the last ``--window`` starts
  is over twice the warm median;
- printed on the way every ``--every`` sandboxes: starts (median of the
  window), MemAvailable, PSS of QEMU, shim and the shim fork server.

It prints figures; it asserts nothing. Every sandbox is removed at the
end.
"""

import argparse
import statistics
import subprocess
import sys
import time

from oslo_log import log as logging

from kata_zun import conf

import coldstart  # benchmarks/coldstart.py
import density  # benchmarks/density.py
import isolated  # benchmarks/isolated.py

CONF = conf.CONF


def mem_available_mib():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 1024.0
    return 0.0


def start(conf_file, name):
    """:returns: (seconds, error text or None)."""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
         conf_file, 'run', '-d', '--name', name, 'busybox', 'sleep',
         '86400'], capture_output=True)
    took = time.monotonic() - began
    if proc.returncode:
        return took, proc.stderr.decode('utf-8', 'replace').strip()[-300:]
    return took, None


def pss_line(rt, names, run_path):
    qemu, shim, tcg = density.sandbox_pss(rt, names)
    server = density.forkserver_pss(run_path)
    n = len(names)
    return ('PSS per sandbox: QEMU %.1f + shim %.1f + fork server %.1f = '
            '%.1f MiB; all: %.0f MiB; TCG translation cache %.1f MiB of '
            'QEMU\'s' % (
                statistics.median(qemu) / 1024.0,
                statistics.median(shim) / 1024.0, server / 1024.0 / n,
                (statistics.median(qemu) + statistics.median(shim) +
                 server / n) / 1024.0,
                (sum(qemu) + sum(shim) + server) / 1024.0,
                statistics.median(tcg) / 1024.0))


def fill(conf_file, names, most, baseline=10, window=5, every=25,
         floor=None):
    """Start idle sandboxes one after the other until ``most`` run, a
    start fails (or is refused), or the median of the last ``window``
    starts is over twice the warm median (the median of the first
    ``baseline``), printing figures every ``every`` sandboxes.

    :param names: a list the started sandboxes' names are added to (the
        caller removes them).
    :returns: (number running, why it stopped, warm median or None)
    """
    from kata_zun.runtime import manager
    rt = manager.Runtime()
    times = []
    warm = None
    why = 'reached the most asked for (%d)' % most
    while len(names) < most:
        name = 'idle%d' % len(names)
        took, error = start(conf_file, name)
        if error:
            why = 'start %d failed: %s' % (len(names) + 1, error)
            break
        names.append(name)
        times.append(took)
        if len(times) == baseline:
            warm = statistics.median(times)
            print('%-44s %8.3f s (%s; median of the first %d)' % (
                'warm median of run -d', warm,
                '%.2fx the floor' % (warm / floor) if floor else
                'no floor', baseline))
        last = statistics.median(times[-window:])
        if len(names) % every == 0:
            print('%4d running: start %.3f s (median of the last %d), '
                  'MemAvailable %.0f MiB; %s' % (
                      len(names), last, window, mem_available_mib(),
                      pss_line(rt, names, CONF.kata.run_path)))
            sys.stdout.flush()
        if warm and len(times) > baseline and last > 2 * warm:
            why = ('the median of the last %d starts, %.3f s, is over '
                   'twice the warm median' % (window, last))
            break
    print('%-44s %8d (%s)' % ('idle sandboxes running', len(names), why))
    if names:
        print('%4d running: MemAvailable %.0f MiB; %s' % (
            len(names), mem_available_mib(),
            pss_line(rt, names, CONF.kata.run_path)))
    return len(names), why, warm


def remove(conf_file, names):
    for i in range(0, len(names), 20):
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', conf_file, 'rm', '-f'] +
                       names[i:i + 20], capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--max', type=int, default=300)
    parser.add_argument('--baseline', type=int, default=10)
    parser.add_argument('--window', type=int, default=5)
    parser.add_argument('--every', type=int, default=25)
    parser.add_argument('--runs', type=int, default=3,
                        help='bare boots for the floor')
    args = parser.parse_args()
    iso = isolated.Isolated('kz-capacity-',
                            '[kata]\nwritable_layer_mb = 256\n')
    conf_file = iso.conf
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[conf_file])
    names = []
    try:
        coldstart.load_busybox(conf_file, iso.root)
        accel_name, boots = coldstart.floor(iso.root, args.runs)
        floor = statistics.median(boots)
        print('kata-zun idle capacity (accelerator: %s, %d MiB per '
              'sandbox, MemAvailable %.0f MiB at the start)' % (
                  accel_name, CONF.kata_hypervisor.default_memory_mb,
                  mem_available_mib()))
        print('%-44s %8.3f s' % ('floor: bare QEMU boot -> /init -> '
                                 'poweroff', floor))
        print('%-44s %8.1f s' % ('template of the idle shape ready after',
                                 density.warm_template(conf_file)))
        sys.stdout.flush()
        fill(conf_file, names, args.max, args.baseline, args.window,
             args.every, floor)
        return 0
    finally:
        remove(conf_file, names)
        iso.close()


if __name__ == '__main__':
    sys.exit(main())
