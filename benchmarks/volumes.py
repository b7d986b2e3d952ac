#!/usr/bin/env python3
"""Volume I/O figures of kata-zun, side by side with the host.

One VM, one privileged busybox container with two volumes: a block volume
from a raw image file (``--mount type=block,source=FILE``: virtio-blk, an
ext4 made by the guest) and a shared directory (``-v DIR:/share``:
virtio-fs through a sandboxed virtiofsd). In each, sequentially:

* write: ``dd if=/dev/zero bs=1M conv=fsync`` (the time includes the
  flush to the host);
* read: the same file after the guest dropped its page cache
  (``echo 3 > /proc/sys/vm/drop_caches``). QEMU's disk and virtiofsd both
  go through the host's page cache, which still holds the file: that is
  the path measured, not the host's disk.

Then the same busybox ``dd`` on the host, in the same directories: write
with fsync, read with the host cache warm (what the guest paths get) and
read with ``iflag=direct`` (the host's device, the floor of a cold read).
Guest timings come from the guest's /proc/uptime around dd (exec overhead
excluded, 10 ms resolution); host timings from a monotonic clock around
dd. Medians of ``--runs`` runs made in this one invocation::

    .venv/bin/python benchmarks/volumes.py [--mb 256] [--runs 3]

It prints figures and ratios; it asserts nothing.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import isolated  # benchmarks/isolated.py

BUSYBOX = '/bin/busybox'
GUEST_MEMORY_MB = 512


def cli(conf_file, *args):
    return subprocess.run([os.path.join(os.path.dirname(sys.executable),
                                        'kata-zun'),
                           '--config-file', conf_file] + list(args),
                          check=True, timeout=600, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


def guest_round(conf_file, name, path, mb):
    """:returns: (write seconds, read seconds) measured in the guest."""
    script = (
        'up() { cut -d" " -f1 /proc/uptime; }; rm -f %(f)s; sync; '
        'echo 3 > /proc/sys/vm/drop_caches; a=$(up); '
        'dd if=/dev/zero of=%(f)s bs=1048576 count=%(mb)d conv=fsync '
        '2>/dev/null; b=$(up); echo 3 > /proc/sys/vm/drop_caches; '
        'c=$(up); dd if=%(f)s of=/dev/null bs=1048576 2>/dev/null; d=$(up); '
        'echo $a $b $c $d' % {'f': path, 'mb': mb})
    out = cli(conf_file, 'exec', name, 'sh', '-c', script).stdout.split()
    a, b, c, d = (float(x) for x in out)
    return b - a, d - c


def host_round(path, mb):
    """:returns: (write, warm read, direct read) seconds on the host."""
    def dd(*args):
        start = time.monotonic()
        subprocess.run([BUSYBOX, 'dd', 'bs=1048576'] + list(args),
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        return time.monotonic() - start
    if os.path.exists(path):
        os.unlink(path)
    write = dd('if=/dev/zero', 'of=' + path, 'count=%d' % mb, 'conv=fsync')
    warm = dd('if=' + path, 'of=/dev/null')
    direct = dd('if=' + path, 'of=/dev/null', 'iflag=direct')
    os.unlink(path)
    return write, warm, direct


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--mb', type=int, default=256)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    iso = isolated.Isolated('kz-bench-vol-',
                            '[kata]\nwritable_layer_mb = 256\n'
                            '[kata_agent]\nconnect_timeout = 120\n')
    tmp, conf_file = iso.root, iso.conf
    image = os.path.join(tmp, 'block.img')
    with open(image, 'wb') as f:
        f.truncate((args.mb * 2 + 256) * 1024 * 1024)
    share = os.path.join(tmp, 'share')
    os.makedirs(share)
    try:
        from kata_zun.image import busybox
        archive = os.path.join(tmp, 'busybox.tar')
        busybox.write_docker_archive(archive)
        cli(conf_file, 'load', '-i', archive)
        cli(conf_file, 'run', '-d', '--name', 'bench', '--privileged',
            '--memory', str(GUEST_MEMORY_MB), '--mount',
            'type=block,source=%s,target=/blk' % image,
            '-v', '%s:/share' % share, 'busybox', 'sleep', '3600')
        block = [guest_round(conf_file, 'bench', '/blk/f', args.mb)
                 for _ in range(args.runs)]
        shared = [guest_round(conf_file, 'bench', '/share/f', args.mb)
                  for _ in range(args.runs)]
        cli(conf_file, 'rm', '-f', 'bench')
        host = [host_round(os.path.join(share, 'f'), args.mb)
                for _ in range(args.runs)]

        med = statistics.median

        def rate(seconds):
            return args.mb * 1048576 / seconds / 1e6

        host_w = rate(med(h[0] for h in host))
        host_r = rate(med(h[1] for h in host))
        print('kata-zun volume I/O (%d MiB sequential, bs 1 MiB, busybox '
              'dd, %d runs, medians, MB/s)' % (args.mb, args.runs))
        print('%-50s %9s %9s' % ('', 'write', 'read'))
        for label, rows in (
                ('block volume in the VM (virtio-blk, ext4)', block),
                ('shared directory in the VM (virtio-fs)', shared)):
            w = rate(med(r[0] for r in rows))
            r = rate(med(r[1] for r in rows))
            print('%-50s %9.1f %9.1f   (%.2fx / %.2fx host)' % (
                label, w, r, w / host_w, r / host_r))
        print('%-50s %9.1f %9.1f' % (
            'host, same directory (read: page cache warm)', host_w, host_r))
        print('%-50s %9s %9.1f' % (
            'host, read with iflag=direct (device)', '',
            rate(med(h[2] for h in host))))
        return 0
    finally:
        subprocess.run([sys.executable, '-m', 'kata_zun.cmd.cli',
                        '--config-file', conf_file, 'rm', '-f', 'bench'],
                       capture_output=True)
        iso.close()


if __name__ == '__main__':
    sys.exit(main())
