#!/usr/bin/env python3
"""Concurrent starts: N ``kata-zun run -d`` at once, how many come up and
how long each takes; with ``--form zun``, N ``openstack appcontainer
run`` through a real zun-api and zun-compute (``zun_starts.py``).

Runs in a state path of its own (a temporary directory; the host's guest
assets are linked in and busybox is loaded from the host's
busybox-static), so it never touches a user's containers::

    .venv/bin/python benchmarks/parallel_starts.py [--counts 1,20,50] \
        [--form cli,zun]

Unless ``--cold``, the CLI form first starts one container and waits
until the template of its shape is built (the first start of a shape in
a state path also runs the accelerator probe), so that the counted
starts are warm ones. For each count it prints succeeded/total, the
p50/p99/max start time (from launching the CLI to its exit with the
container up) and the wall time until all were up; failures are printed
with their reason. It asserts nothing.
"""

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import time

import coldstart  # benchmarks/coldstart.py
import isolated  # benchmarks/isolated.py

CLI_TIMEOUT = 900


class Sandbox(isolated.Isolated):
    """An isolated CLI configuration (no registry: a closed loopback
    port), with ``extra_config`` text.
    """

    def __init__(self, prefix='kzconc', extra_config=''):
        super().__init__(prefix, '[kata_image]\n'
                         'default_registry = 127.0.0.1:9\n' + extra_config)

    def cli(self, *args, timeout=CLI_TIMEOUT):
        return subprocess.run(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf] + list(args), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL)

    def load_busybox(self):
        try:
            coldstart.load_busybox(self.conf, self.root)
        except subprocess.CalledProcessError as exc:
            raise SystemExit('load failed: %s' % exc.stderr)

    def remove_all(self):
        ids = self.cli('ps', '-a', '-q').stdout.split()
        if ids:
            self.cli('rm', '-f', *ids)

    def close(self):
        self.remove_all()
        super().close()


def start_one(sandbox, name):
    t = time.monotonic()
    try:
        r = sandbox.cli('run', '-d', '--name', name, 'busybox', 'sleep',
                        '3600')
        ok, why = r.returncode == 0, r.stderr.strip()[-300:]
        if not ok and os.environ.get('KZ_CONSOLE_TAIL'):
            for word in r.stderr.replace(')', ' ').split():
                if word.endswith('console.log') and os.path.exists(word):
                    for name in ('console.log', 'shim.log'):
                        path = os.path.join(os.path.dirname(word), name)
                        with open(path, 'rb') as f:
                            why += '\n    %s: %s' % (
                                name, f.read()[-1500:].decode(
                                    'utf-8', 'replace').replace(
                                        '\n', '\n    '))
    except subprocess.TimeoutExpired:
        ok, why = False, 'the CLI took more than %d s' % CLI_TIMEOUT
    return ok, time.monotonic() - t, why


def warm(sandbox):
    """Start one container and wait for its shape's template.

    :returns: seconds it took.
    """
    import density  # benchmarks/density.py
    from kata_zun import conf
    from oslo_log import log as logging
    logging.register_options(conf.CONF)
    conf.CONF([], project='kata-zun', default_config_files=[sandbox.conf])
    return density.warm_template(sandbox.conf)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1,
                      max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))]


def run_count(sandbox, count):
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda i: start_one(sandbox, 'c%d' % i),
                                range(count)))
    wall = time.monotonic() - t
    times = [s for ok, s, _ in results if ok]
    failures = [why for ok, _, why in results if not ok]
    sandbox.remove_all()
    return times, failures, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--counts', default='1,20,50',
                        help='comma-separated numbers of concurrent starts')
    parser.add_argument('--form', default='cli',
                        help='comma-separated: cli (kata-zun run -d), '
                        'zun (openstack appcontainer run)')
    parser.add_argument('--zun-logs', metavar='DIR',
                        help='copy the Zun services\' logs here at the end')
    parser.add_argument('--zun-cpu', type=float,
                        help='vCPUs of each Zun container (zun: 1)')
    parser.add_argument('--zun-cpu-allocation-ratio', type=float,
                        help="zun-compute's [compute] cpu_allocation_ratio "
                        "(zun: 16 vCPUs a host core)")
    parser.add_argument('--cold', action='store_true',
                        help='CLI form: do not build the template first')
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(',')]
    rows = []
    for form in args.form.split(','):
        if form == 'cli':
            sandbox = Sandbox()

            def prepare(s=sandbox):
                s.load_busybox()
                if not args.cold:
                    print('template of the shape ready after %.1f s'
                          % warm(s))
            count_of = (lambda n, s=sandbox: run_count(s, n))
        elif form == 'zun':
            import zun_starts  # benchmarks/zun_starts.py
            sandbox = zun_starts.ZunStarts(logs_to=args.zun_logs,
                                           cpu=args.zun_cpu,
                                           cpu_ratio=(
                                               args.zun_cpu_allocation_ratio))
            prepare, count_of = sandbox.start, sandbox.run_count
        else:
            parser.error('unknown form %r' % form)
        try:
            prepare()
            for count in counts:
                times, failures, wall = count_of(count)
                rows.append((form, count, times, failures, wall))
                for why in failures:
                    print('  failed start (%s, %d at once): %s' % (
                        form, count, why))
                sys.stdout.flush()
        finally:
            sandbox.close()
    print('%-5s %-8s %-12s %8s %8s %8s %10s' % (
        'form', 'at once', 'up/total', 'p50 s', 'p99 s', 'max s',
        'all up s'))
    for form, count, times, failures, wall in rows:
        if times:
            print('%-5s %-8d %-12s %8.2f %8.2f %8.2f %10.1f' % (
                form, count, '%d/%d' % (len(times), count),
                statistics.median(times), percentile(times, 99),
                max(times), wall))
        else:
            print('%-5s %-8d %-12s %8s %8s %8s %10.1f' % (
                form, count, '0/%d' % count, '-', '-', '-', wall))
    return 0


if __name__ == '__main__':
    sys.exit(main())
