#!/usr/bin/env python3
"""Data-plane figures (exec round trip, stdout guest -> host), A/B.

In one run, interleaved so that both sides see the same host load:

- the floor: the same kernel and initrd with the agent replaced by a
  minimal one (a few lines of Python on the virtio-serial port): its
  exec of ``/bin/true`` (``posix_spawn`` + ``waitpid``) round trip and
  its raw stream of zeros to the host;
- kata-zun as checked out here (``new``);
- optionally kata-zun from another source tree (``--base DIR``, e.g. an
  older commit exported with ``git archive``): each side runs in its own
  worker process with its own state path, guest assets found for its own
  agent sources (``kata-zun guest build`` must have run for both).

Rounds alternate floor, base, new; each round makes ``--execs`` exec
round trips (API: connect, exec, wait for the exit event) and one stdout
stream of ``--stream-mb`` MB through the API, every byte counted. It
prints medians (and p90 of exec) and the load average; it asserts
nothing::

    .venv/bin/python benchmarks/dataplane.py [--base /tmp/kz-base]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

FLOOR_AGENT = b'''import os
def port():
    for p in os.listdir('/sys/class/virtio-ports'):
        with open('/sys/class/virtio-ports/%s/name' % p) as f:
            if f.read().strip() == 'agent.0':
                return '/dev/' + p
fd = os.open(port(), os.O_RDWR)
os.write(fd, b'R')
zeros = bytes(1 << 20)
while True:
    cmd = os.read(fd, 64)
    if cmd[:1] == b'x':
        pid = os.posix_spawn('/bin/busybox', ['true'], {})
        os.waitpid(pid, 0)
        os.write(fd, b'x')
    elif cmd[:1] == b's':
        left = int(cmd[1:])
        view = memoryview(zeros)
        while left:
            left -= os.write(fd, view[:min(left, len(zeros))])
    else:
        os.sync()
        import ctypes
        ctypes.CDLL('libc.so.6').reboot(0x4321FEDC)
'''


# ------------------------------------------------------------------ floor

class Floor(object):
    """A VM running the minimal agent (see :data:`FLOOR_AGENT`)."""

    def __init__(self, tmp):
        from kata_zun import conf
        from kata_zun.guest import builder
        from kata_zun.guest import cpio
        from kata_zun.hypervisor import base
        from kata_zun.hypervisor.qemu import accel as qemu_accel
        from kata_zun.hypervisor.qemu import argv as qemu_argv
        CONF = conf.CONF
        assets = builder.find()
        initrd = os.path.join(tmp, 'floor-agent.cpio')
        # A second archive after the real one: the kernel unpacks both,
        # the later main.py wins.
        shutil.copyfile(assets.initrd, initrd)
        with open(initrd, 'ab') as f:
            w = cpio.NewcWriter(f)
            w.add_bytes('opt/kata-agent/main.py', FLOOR_AGENT, 0o644)
            w.close()
        self.run_dir = tempfile.mkdtemp(prefix='kzf', dir='/tmp')
        config = base.VMConfig(
            name='floor', vcpus=1,
            memory_mb=CONF.kata_hypervisor.default_memory_mb,
            kernel=assets.kernel, initrd=initrd, run_dir=self.run_dir,
            console_log=os.path.join(self.run_dir, 'con.log'))
        accel = qemu_accel.choose(assets.kernel)
        argv = qemu_argv.build_argv(config, getattr(accel, 'name', accel),
                                    CONF.kata_hypervisor.machine_type,
                                    CONF.kata_hypervisor.cpu_model,
                                    CONF.kata_hypervisor.qemu_path)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _qmp, agent_path = qemu_argv.socket_paths(self.run_dir)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(agent_path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(120)
        if self.sock.recv(1) != b'R':
            raise RuntimeError('floor agent did not greet')

    def execs(self, n):
        times = []
        for _ in range(n):
            start = time.monotonic()
            self.sock.sendall(b'x')
            if self.sock.recv(1) != b'x':
                raise RuntimeError('floor agent: bad exec answer')
            times.append(time.monotonic() - start)
        return times

    def stream(self, size):
        start = time.monotonic()
        self.sock.sendall(b's%d' % size)
        got = 0
        while got < size:
            data = self.sock.recv(1 << 20)
            if not data:
                raise RuntimeError('floor agent went away')
            got += len(data)
        return got, time.monotonic() - start

    def close(self):
        try:
            self.sock.sendall(b'q')
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


# ----------------------------------------------------------------- worker

def worker(conf_file):
    """Serve ``exec N`` / ``stream BYTES`` / ``quit`` lines on stdin with
    one JSON line each on stdout, against a running container ``bench``.
    """
    sys.path.insert(0, HERE)
    import coldstart
    from kata_zun import conf
    from oslo_log import log as logging
    CONF = conf.CONF
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=[conf_file])
    from kata_zun.image import busybox
    archive = os.path.join(os.path.dirname(conf_file), 'busybox.tar')
    busybox.write_docker_archive(archive)
    cli = [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
           conf_file]
    subprocess.run(cli + ['load', '-i', archive], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(cli + ['run', '-d', '--name', 'bench', 'busybox',
                          'sleep', '36000'], check=True,
                   stdout=subprocess.DEVNULL)
    from kata_zun.runtime import manager
    rt = manager.Runtime()
    print(json.dumps({'ready': True}), flush=True)
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(' ')
            if cmd == 'exec':
                out = coldstart.exec_round_trips(rt, 'bench', int(arg))
            elif cmd == 'stream':
                out = coldstart.stdout_throughput(rt, 'bench', int(arg))
            else:
                break
            print(json.dumps(out), flush=True)
    finally:
        subprocess.run(cli + ['rm', '-f', 'bench'], capture_output=True)


class Worker(object):
    def __init__(self, name, src, iso):
        self.name = name
        env = dict(os.environ)
        if src:
            env['PYTHONPATH'] = src
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--worker',
             iso.conf], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, cwd=src or os.path.dirname(HERE), text=True)
        self.ask_ready = True

    def ask(self, line):
        if self.ask_ready:
            self._reply()
            self.ask_ready = False
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError('worker %s died' % self.name)
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write('quit\n')
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--worker')
    parser.add_argument('--base', help='source tree of the base version')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--execs', type=int, default=10)
    parser.add_argument('--stream-mb', type=int, default=100)
    parser.add_argument('--no-floor', action='store_true')
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    import isolated  # benchmarks/isolated.py
    from kata_zun import conf
    from oslo_log import log as logging
    logging.register_options(conf.CONF)
    conf.CONF([], project='kata-zun')
    sides = [('new', None)]
    if args.base:
        sides.insert(0, ('base', os.path.abspath(args.base)))
    isos, workers = [], []
    tmp = tempfile.mkdtemp(prefix='kz-dp-')
    floor = None
    size = args.stream_mb * 1000 * 1000
    results = {'floor': ([], [])}
    loads = []
    try:
        for name, src in sides:
            iso = isolated.Isolated('kz-dp-%s-' % name,
                                    '[kata]\nwritable_layer_mb = 256\n')
            isos.append(iso)
            workers.append(Worker(name, src, iso))
            results[name] = ([], [])
        if not args.no_floor:
            floor = Floor(tmp)
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            if floor:
                results['floor'][0].extend(floor.execs(args.execs))
                results['floor'][1].append(floor.stream(size))
            for w in workers:
                results[w.name][0].extend(w.ask('exec %d' % args.execs))
                results[w.name][1].append(w.ask('stream %d' % size))
    finally:
        for w in workers:
            w.close()
        if floor:
            floor.close()
        for iso in isos:
            iso.close()
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    print('data plane, %d rounds interleaved (floor, %s), load average '
          'during the run %.1f-%.1f (2 cores)' % (
              args.rounds, ', '.join(n for n, _ in sides), min(loads),
              max(loads)))
    for name in ['floor'] + [n for n, _ in sides]:
        execs, streams = results[name]
        if not execs:
            continue
        # Per round (exec median, MB/s): how steady the comparison was.
        print('%-6s rounds: %s' % (name, '  '.join(
            '%.1f ms %.0f MB/s' % (
                med(execs[i * args.execs:(i + 1) * args.execs]) * 1000,
                got / t / 1e6) for i, (got, t) in enumerate(streams))))
        ok = all(got == size for got, _ in streams)
        print('%-6s exec true round trip %7.2f ms (p90 %7.2f ms)   '
              'stdout %6.1f MB/s%s' % (
                  name, med(execs) * 1000,
                  sorted(execs)[int(len(execs) * 0.9) - 1] * 1000,
                  med(got / t / 1e6 for got, t in streams),
                  '' if ok else '  BYTES LOST'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
