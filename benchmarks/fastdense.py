#!/usr/bin/env python3
"""Every figure of "fast and dense by default" in one run, next to the
floor and the goal.

In one state path of its own (see benchmarks/isolated.py)::

    .venv/bin/python benchmarks/fastdense.py [--runs 5] [--concurrent 20] \
        [--sandboxes 20] [--capacity-max 300]

1. the floor: a bare QEMU boot of the same kernel (benchmarks/coldstart.py);
2. cold starts (``[kata] vm_templating = false``): ``run --rm busybox
   true`` ``--runs`` times one after the other, then ``--concurrent``
   ``run -d`` at once (benchmarks/parallel_starts.py);
3. warm starts, restored from the template of the shape (built first):
   the same;
4. exec round trip of ``true`` and stdout guest -> host through the API,
   in one warm sandbox (benchmarks/coldstart.py);
5. PSS per idle sandbox with ``--sandboxes`` running: QEMU, shim, both
   (benchmarks/density.py);
6. idle capacity: idle sandboxes started one after the other until
   ``--capacity-max`` run, a start fails or is refused, or new starts
   take over twice the warm median (benchmarks/capacity.py; 0 skips it).

It ends with one table: each figure, its ratio to the floor where that
means something, and the goal. It asserts nothing. (The exec and stdout
floors, a minimal agent on the same kernel, are benchmarks/dataplane.py's.)
"""

import argparse
import statistics
import sys

from oslo_log import log as logging

from kata_zun import conf

import capacity  # benchmarks/capacity.py
import coldstart  # benchmarks/coldstart.py
import density  # benchmarks/density.py
import parallel_starts  # benchmarks/parallel_starts.py
import templating  # benchmarks/templating.py

CONF = conf.CONF


def set_templating(conf_file, on):
    """Later values of a section win in oslo.config (read by each CLI)."""
    with open(conf_file, 'a') as f:
        f.write('[kata]\nvm_templating = %s\n' % ('true' if on else 'false'))


def fmt(value, unit, missing='-'):
    if value is None:
        return missing
    if not unit:
        return '%d' % value
    return ('%.3f %s' if unit == 's' else '%.1f %s') % (value, unit)


def p99(values):
    return parallel_starts.percentile(values, 99)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--concurrent', type=int, default=20)
    parser.add_argument('--sandboxes', type=int, default=20)
    parser.add_argument('--stream-mb', type=int, default=100)
    parser.add_argument('--capacity-max', type=int, default=300)
    args = parser.parse_args()
    env = parallel_starts.Sandbox('kz-fastdense-',
                                  '[kata]\nwritable_layer_mb = 256\n')
    conf_file = env.conf
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[conf_file])
    rows = []
    try:
        env.load_busybox()
        accel_name, boots = coldstart.floor(env.root, args.runs)
        floor = statistics.median(boots)
        print('kata-zun, fast and dense (accelerator: %s, machine: %s, %d '
              'MiB per sandbox)' % (accel_name,
                                    CONF.kata_hypervisor.machine_type,
                                    CONF.kata_hypervisor.default_memory_mb))
        print('%-44s %8.3f s' % ('floor: bare QEMU boot -> /init -> '
                                 'poweroff', floor))
        sys.stdout.flush()

        for label, restored in (('cold', False), ('warm', True)):
            set_templating(conf_file, restored)
            if restored:
                print('%-44s %8.1f s' % (
                    'template of the shape ready after',
                    density.warm_template(conf_file)))
            one = templating.timed_runs(conf_file, args.runs)
            times, failures, wall = parallel_starts.run_count(
                env, args.concurrent)
            for why in failures:
                print('  failed %s start (%d at once): %s' % (
                    label, args.concurrent, why))
            print('%s: run --rm median %.3f s, p99 %.3f s; %d run -d at '
                  'once: %d up, p50 %s, p99 %s' % (
                      label, statistics.median(one), p99(one),
                      args.concurrent, len(times),
                      '%.2f s' % statistics.median(times) if times else '-',
                      '%.2f s' % p99(times) if times else '-'))
            sys.stdout.flush()
            rows.append(('%s run --rm busybox true' % label,
                         statistics.median(one), 's', p99(one),
                         '<= 1.4x floor' if label == 'cold' else
                         '<= 0.15x floor'))
            rows.append(('%s run -d, %d at once: up %d' % (
                label, args.concurrent, len(times)),
                statistics.median(times) if times else None, 's',
                p99(times) if times else None,
                'all up, p99 <= 2x p50'))

        size = args.stream_mb * 1000 * 1000
        rtt, got, elapsed = coldstart.data_plane(conf_file,
                                                 max(args.runs, 20), size)
        rows.append(('exec round trip (API, exec true)',
                     statistics.median(rtt) * 1000, 'ms',
                     p99(rtt) * 1000, '<= 15 ms'))
        rows.append(('stdout guest -> host (API, %d of %d B)' % (got, size),
                     got / elapsed / 1e6, 'MB/s', None, '>= 150 MB/s'))

        qemu, shim, tcg = density.idle_pss(conf_file, args.sandboxes)
        total = [q + s for q, s in zip(qemu, shim)]
        rows.append(('PSS per idle sandbox, %d running (QEMU %.1f + shim '
                     '%.1f)' % (len(total), statistics.median(qemu) / 1024.0,
                                statistics.median(shim) / 1024.0),
                     statistics.median(total) / 1024.0, 'MiB', None,
                     '<= 40 MiB'))
        # What of it only TCG costs (none under KVM): measured, per
        # sandbox, from QEMU's writable executable mapping.
        rows.append(('  of which TCG translation cache (QEMU)',
                     statistics.median(tcg) / 1024.0, 'MiB', None, ''))
        rows.append(('  the rest (QEMU less that cache, + shim)',
                     statistics.median([t - c for t, c in zip(total, tcg)])
                     / 1024.0, 'MiB', None, ''))
        sys.stdout.flush()

        if args.capacity_max:
            count = capacity.fill(conf_file, [], args.capacity_max,
                                  floor=floor)[0]
            # Why it stopped is printed by fill(); env.close() removes
            # the sandboxes.
            rows.append(('idle sandboxes, new starts within 2x warm', count,
                         '', None, '>= 300 (or the memory limit)'))

        print()
        print('%-62s %11s %11s %7s  %s' % ('figure', 'median', 'p99',
                                           'x floor', 'goal'))
        for label, value, unit, tail, goal in rows:
            ratio = '%.2fx' % (value / floor) if unit == 's' and value \
                else ''
            print('%-62s %11s %11s %7s  %s' % (
                label[:62], fmt(value, unit), fmt(tail, unit, ''), ratio,
                goal))
        return 0
    finally:
        env.close()           # removes every container it started


if __name__ == '__main__':
    sys.exit(main())
