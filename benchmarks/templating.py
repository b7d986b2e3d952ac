#!/usr/bin/env python3
"""Cold boot against VM-template restore, side by side with the floor.

In one run: the bare-boot floor (benchmarks/coldstart.py's: the same
kernel booting a busybox initrd that powers off at once), then
``kata-zun run --rm busybox true`` and the time until the agent answers
(the shim's ``boot_timing``), booted cold (``[kata] vm_templating =
false``) and restored from a template (the first start of the shape
boots cold and has the template built in the background; the timed runs
start once it exists)::

    .venv/bin/python benchmarks/templating.py [--runs 10]

It prints medians and p99s and ratios to the floor; it asserts nothing.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun.guest import builder
from kata_zun.hypervisor.qemu import accel as qemu_accel

import coldstart  # benchmarks/coldstart.py
import isolated  # benchmarks/isolated.py

CONF = conf.CONF


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 *
                                                   (len(ordered) - 1))))]


def timed_runs(conf_file, runs):
    walls = []
    for _ in range(runs):
        start = time.monotonic()
        coldstart.cli(conf_file, 'run', '--rm', 'busybox', 'true')
        walls.append(time.monotonic() - start)
    return walls


def agent_times(conf_file, state, runs):
    """:returns: [(seconds until the VMM ran, until the agent said
        HELLO, until the container was created)] from the shims.
    """
    out = []
    for i in range(runs):
        cid = coldstart.cli(conf_file, 'run', '-d', 'busybox', 'sleep',
                            '600', stdout=subprocess.PIPE).stdout.decode()
        cid = cid.strip()
        with open(os.path.join(state, 'containers', cid,
                               'state.json')) as f:
            timing = json.load(f)['boot_timing']
        coldstart.cli(conf_file, 'rm', '-f', cid)
        out.append((timing['vmm_started'], timing['agent_ready'],
                    timing['container_created']))
    return out


def wait_built(templates, timeout=900):
    """:returns: time.monotonic() once the template dir holds a template
        and no build runs.
    """
    from kata_zun.hypervisor import template
    store = template.Store(templates)
    deadline = time.monotonic() + timeout
    while True:
        done = [n for n in os.listdir(templates) if len(n) == 16]
        if done and not store.building():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError('no template after %d s' % timeout)
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--runs', type=int, default=10)
    args = parser.parse_args()
    templates = tempfile.mkdtemp(prefix='kzbt', dir='/dev/shm')
    cold = isolated.Isolated('kz-bench-cold-',
                             '[kata]\nvm_templating = false\n')
    warm = isolated.Isolated('kz-bench-warm-',
                             '[kata]\nvm_templating = true\n'
                             'template_dir = %s\n' % templates)
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[cold.conf])
    try:
        assets = builder.find()
        accel = qemu_accel.choose(assets.kernel)
        name = getattr(accel, 'name', accel)
        for iso in (cold, warm):
            coldstart.load_busybox(iso.conf, iso.root)
        # The KVM probe's verdict is cached per run path: give the warm
        # side its verdict now, so that its first start below is timed
        # without the probe (up to [kata_hypervisor]
        # accel_probe_timeout, once per host boot in real life).
        for iso in (cold, warm):
            CONF.set_override('run_path', iso.run, 'kata')
            qemu_accel.choose(assets.kernel)
        CONF.clear_override('run_path', 'kata')
        # The first start of a shape boots cold and has its template
        # built in the background.
        start = time.monotonic()
        coldstart.cli(warm.conf, 'run', '--rm', 'busybox', 'true')
        first = time.monotonic() - start
        built = wait_built(templates) - start

        floor = [coldstart.bare_boot(assets, cold.root, name)
                 for _ in range(args.runs)]
        # Interleaved, so that a busy moment of the host hits both.
        cold_run, warm_run = [], []
        for _ in range(args.runs):
            cold_run += timed_runs(cold.conf, 1)
            warm_run += timed_runs(warm.conf, 1)
        cold_agent = agent_times(cold.conf, cold.state, args.runs)
        warm_agent = agent_times(warm.conf, warm.state, args.runs)

        med = statistics.median
        fl = med(floor)
        jailed = CONF.kata_jail.enabled and os.geteuid() == 0
        print('kata-zun VM templating (accelerator: %s, %d runs, medians '
              'and p99; jail %s)'
              % (name, args.runs, 'on' if jailed else 'off'))
        print('%-48s %8.3f s' % ('floor: bare QEMU boot -> /init -> '
                                 'poweroff', fl))
        for label, values in (
                ('run --rm busybox true, cold', cold_run),
                ('run --rm busybox true, from a template', warm_run)):
            print('%-48s %8.3f s  p99 %6.3f s  (%.2fx floor)' % (
                label, med(values), p99(values), med(values) / fl))
        for label, values in (('cold', cold_agent),
                              ('from a template', warm_agent)):
            for i, what in enumerate(('VMM started', 'agent ready',
                                      'container created')):
                column = [v[i] for v in values]
                print('%-48s %8.3f s  p99 %6.3f s  (%.2fx floor)' % (
                    '  %s: %s' % (label, what), med(column), p99(column),
                    med(column) / fl))
        print('%-48s %8.3f s' % ('first start of a shape (cold)', first))
        print('%-48s %8.3f s' % ('  its template ready (background)',
                                 built))
        sys.stdout.flush()
        return 0
    finally:
        cold.close()
        warm.close()
        shutil.rmtree(templates, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
