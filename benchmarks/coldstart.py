#!/usr/bin/env python3
"""Start-up and I/O figures of kata-zun, side by side with the floor.

The floor is a bare QEMU boot of the very same kernel, same machine type
and accelerator, with a busybox-only initrd whose /init powers off at once:
nothing kata-zun does can be faster than that. Figures are medians of
``--runs`` runs made in this one invocation (no stored numbers)::

    .venv/bin/python benchmarks/coldstart.py [--runs 5]

It prints figures and ratios; it asserts nothing.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun import conf
from kata_zun.guest import builder
from kata_zun.guest import cpio
from kata_zun.hypervisor import base
from kata_zun.hypervisor.qemu import accel as qemu_accel
from kata_zun.hypervisor.qemu import argv as qemu_argv

import isolated  # benchmarks/isolated.py

CONF = conf.CONF


def floor_initrd(path):
    with open(path, 'wb') as f:
        w = cpio.NewcWriter(f)
        for d in ('bin', 'dev', 'proc', 'sys'):
            w.add_dir(d)
        w.add_chardev('dev/console', 5, 1)
        w.add_file('bin/busybox', '/bin/busybox', 0o755)
        w.add_symlink('bin/sh', 'busybox')
        w.add_bytes('init', b'#!/bin/sh\n/bin/busybox poweroff -f\n',
                    0o755)
        w.close()


def bare_boot(assets, tmp, accel, pci_slots=0):
    initrd = os.path.join(tmp, 'floor.cpio')
    if not os.path.exists(initrd):
        floor_initrd(initrd)
    run_dir = tempfile.mkdtemp(prefix='kzb', dir='/tmp')
    try:
        config = base.VMConfig(
            name='floor', vcpus=1, memory_mb=CONF.kata_hypervisor.
            default_memory_mb, kernel=assets.kernel, initrd=initrd,
            run_dir=run_dir, console_log=os.path.join(run_dir, 'con.log'),
            pci_slots=pci_slots)
        argv = qemu_argv.build_argv(config, accel,
                                    CONF.kata_hypervisor.machine_type,
                                    CONF.kata_hypervisor.cpu_model,
                                    CONF.kata_hypervisor.qemu_path)
        start = time.monotonic()
        subprocess.run(argv, check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.monotonic() - start
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def floor(tmp, runs):
    """The floor of the guest assets in use: ``runs`` bare boots.

    :returns: (the accelerator's name, seconds of each boot)
    """
    assets = builder.find()
    accel = qemu_accel.choose(assets.kernel)
    name = getattr(accel, 'name', accel)
    return name, [bare_boot(assets, tmp, name) for _ in range(runs)]


def cli(conf_file, *args, stdout=subprocess.DEVNULL):
    # The benchmark's own interpreter, as every other CLI run of the
    # benchmarks: the CLI under test is the tree the benchmark imports.
    return subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                           '--config-file', conf_file] + list(args),
                          check=True, timeout=300, stdout=stdout,
                          stderr=subprocess.PIPE)


def load_busybox(conf_file, where):
    """Load a busybox image made from the host's busybox-static (no
    registry), writing its archive in the directory ``where``.
    """
    from kata_zun.image import busybox
    archive = os.path.join(where, 'busybox.tar')
    busybox.write_docker_archive(archive)
    cli(conf_file, 'load', '-i', archive)


def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def exec_round_trips(rt, ref, n):
    times = []
    for _ in range(n):
        start = time.monotonic()
        client, handle, _err = rt.exec_client(ref, ['true'])
        with client:
            while True:
                done = [f for f in client.read_frames(30)
                        if f.type == protocol.EVENT]
                if done:
                    break
        times.append(time.monotonic() - start)
    return times


def stdout_throughput(rt, ref, size):
    client, handle, _err = rt.exec_client(
        ref, ['dd', 'if=/dev/zero', 'bs=1000000',
              'count=%d' % (size // 1000000)])
    got = 0
    start = time.monotonic()
    with client:
        while True:
            for f in client.read_frames(30):
                if f.type == protocol.STDOUT:
                    got += len(f.payload) - protocol.HANDLE.size
                elif f.type == protocol.EVENT:
                    elapsed = time.monotonic() - start
                    return got, elapsed


def data_plane(conf_file, execs, size):
    """Exec round trips and one stdout stream through the API, in a
    sandbox of their own (``bench``, removed after).

    :returns: (exec round trip seconds, stdout bytes received, seconds
        the stream took)
    """
    cli(conf_file, 'run', '-d', '--name', 'bench', 'busybox', 'sleep',
        '3600')
    try:
        from kata_zun.runtime import manager
        rt = manager.Runtime()
        rtt = exec_round_trips(rt, 'bench', execs)
        got, elapsed = stdout_throughput(rt, 'bench', size)
    finally:
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', conf_file, 'rm', '-f', 'bench'],
                       capture_output=True)
    return rtt, got, elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--stream-mb', type=int, default=50)
    args = parser.parse_args()
    # No network: the floor has none either (networking adds its own
    # set-up time, measured separately by the network tests).
    iso = isolated.Isolated('kz-bench-',
                            '[kata]\nwritable_layer_mb = 256\n')
    tmp, conf_file = iso.root, iso.conf
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[conf_file])
    try:
        assets = builder.find()
        accel = qemu_accel.choose(assets.kernel)
        name = getattr(accel, 'name', accel)
        load_busybox(conf_file, tmp)

        floor = [bare_boot(assets, tmp, name) for _ in range(args.runs)]
        # What NIC hotplug costs at boot: the VMs of Zun's Neutron
        # networks get a PCIe host bridge and root ports.
        slots = [bare_boot(assets, tmp, name, qemu_argv.MAX_PCI_SLOTS)
                 for _ in range(args.runs)]
        run = [timed(lambda: cli(conf_file, 'run', '--rm', 'busybox',
                                 'true'))[0] for _ in range(args.runs)]
        py_start = [timed(lambda: subprocess.run(
            [sys.executable, '-c', 'import kata_zun.cmd.cli'],
            check=True))[0] for _ in range(args.runs)]

        cli(conf_file, 'run', '-d', '--name', 'bench', 'busybox', 'sleep',
            '3600')
        from kata_zun.runtime import manager
        rt = manager.Runtime()
        rtt = exec_round_trips(rt, 'bench', max(args.runs, 20))
        cli_exec = [timed(lambda: cli(conf_file, 'exec', 'bench',
                                      'true'))[0] for _ in range(args.runs)]
        size = args.stream_mb * 1000 * 1000
        got, elapsed = stdout_throughput(rt, 'bench', size)
        cli(conf_file, 'rm', '-f', 'bench')

        med = statistics.median
        print('kata-zun benchmarks (accelerator: %s, machine: %s, %d runs, '
              'medians)' % (name, CONF.kata_hypervisor.machine_type,
                            args.runs))
        print('%-46s %8.3f s' % ('floor: bare QEMU boot -> /init -> '
                                 'poweroff', med(floor)))
        print('%-46s %8.3f s  (%.2fx floor)' % (
            'floor + %d NIC hotplug slots (PCIe)' % qemu_argv.MAX_PCI_SLOTS,
            med(slots), med(slots) / med(floor)))
        print('%-46s %8.3f s  (%.2fx floor)' % (
            'kata-zun run --rm busybox true (CLI wall)', med(run),
            med(run) / med(floor)))
        print('%-46s %8.3f s' % ('  of which: CLI python start-up',
                                 med(py_start)))
        print('%-46s %8.2f ms (p90 %.2f ms)' % (
            'exec round trip (API, exec true)', med(rtt) * 1000,
            sorted(rtt)[int(len(rtt) * 0.9) - 1] * 1000))
        print('%-46s %8.3f s' % ('kata-zun exec bench true (CLI wall)',
                                 med(cli_exec)))
        print('%-46s %8.1f MB/s (%d bytes)' % (
            'stdout throughput guest -> host', got / elapsed / 1e6, got))
        sys.stdout.flush()
        return 0 if got == size else 1
    finally:
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', conf_file, 'rm', '-f', 'bench'],
                       capture_output=True)
        iso.close()


if __name__ == '__main__':
    sys.exit(main())
