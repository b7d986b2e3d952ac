"""The Zun form of ``parallel_starts.py``: N ``openstack appcontainer
run`` at once through a real zun-api and zun-compute (with this driver)
on keystone and placement, with the Neutron stand-in of the functional
tests (:mod:`kata_zun.tests.functional.zun_env`: no real Neutron).

A container's start time runs from launching its ``openstack`` command
to the first look (one ``appcontainer list`` a second, through the API)
that shows it ``Running``: the figures include the client's start-up
and are accurate to about a second. A container that goes to ``Error``
is a failure, with Zun's status reason.
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time

import isolated  # benchmarks/isolated.py

#: Seconds a whole count may take before what is not up is a failure.
COUNT_TIMEOUT = 1800
POLL = 1.0


class ZunStarts(object):
    """A Zun environment of its own (temporary work, state and run paths).
    """

    def __init__(self, logs_to=None, cpu=None, cpu_ratio=None):
        from kata_zun.tests.functional import zun_env
        #: Where the services' logs are copied when the benchmark ends.
        self.logs_to = logs_to
        #: ``appcontainer run --cpu`` (zun's default is 1 vCPU: placement
        #: holds 16 per host core, 32 on a 2-core host).
        self.cpu = cpu
        self.iso = isolated.Isolated('kzzun')
        self.env = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(self.iso.root, 'zun'), driver='kata',
            extra_conf={
                # zun's default disk (10 GB a container) would make
                # placement refuse most of 50 on this host's disk: a
                # busybox needs far less.
                'DEFAULT': {'default_disk': '1'},
                # VCPU capacity in placement: 16 per host core by default
                # (32 here); zun claims at least 1 a container.
                'compute': ({'cpu_allocation_ratio': str(cpu_ratio)}
                            if cpu_ratio else {}),
                'kata': {'state_path': self.iso.state,
                         'run_path': self.iso.run},
                # Nothing leaves this machine.
                'kata_image': {'default_registry': '127.0.0.1:9'}})
        self.client = None

    def start(self):
        self.env.start()
        from kata_zun.image import busybox
        archive = os.path.join(self.iso.root, 'busybox.tar')
        busybox.write_docker_archive(archive)
        r = self._kz('load', '-i', archive)
        if r.returncode:
            raise SystemExit('load failed: %s' % r.stderr)
        self.client = self.env.zun_client()
        # zun's default project quota (20 vCPUs, 40 containers) refuses
        # most of 50 starts at the API, before any host is asked: these
        # figures are the host's, so the project may start what it asks.
        code, out, err = self.env.openstack(
            'token', 'issue', '-f', 'value', '-c', 'project_id')
        if code:
            raise SystemExit('token issue failed: %s' % err)
        code, out, err = self.env.openstack(
            'appcontainer', 'quota', 'update', '--containers', '1000',
            '--cpu', '1000', '--memory', str(1024 * 1024), '--disk',
            '100000', out.strip())
        if code:
            raise SystemExit('quota update failed: %s' % err)

    def _kz(self, *args):
        return subprocess.run(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.env.conf_path] + list(args), capture_output=True,
            text=True, timeout=900, stdin=subprocess.DEVNULL)

    def _launch(self, name):
        cpu = ('--cpu', str(self.cpu)) if self.cpu else ()
        code, out, err = self.env.openstack(
            'appcontainer', 'run', '--name', name, '--image-pull-policy',
            'ifnotpresent', *cpu, 'busybox', 'sleep', '3600', timeout=600)
        return code, err.strip()[-300:]

    def run_count(self, count):
        """Start ``count`` containers at once, wait for each to be up or
        failed, then delete them all.

        :returns: (start times of those up, failure reasons, wall time)
        """
        names = ['z%d-%d' % (count, i) for i in range(count)]
        t0 = time.monotonic()
        launched = {}
        failures = {}
        up = {}
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            futures = {pool.submit(self._launch, n): n for n in names}
            for name in names:
                launched[name] = t0
            while len(up) + len(failures) < count:
                if time.monotonic() - t0 > COUNT_TIMEOUT:
                    for name in names:
                        if name not in up:
                            failures.setdefault(
                                name, 'not up after %d s' % COUNT_TIMEOUT)
                    break
                for future, name in list(futures.items()):
                    if future.done():
                        del futures[future]
                        code, err = future.result()
                        if code:
                            failures[name] = 'openstack: %s' % err
                now = time.monotonic()
                for c in self.client.containers.list():
                    if c.name not in launched or c.name in up or \
                            c.name in failures:
                        continue
                    if c.status == 'Running':
                        up[c.name] = now - launched[c.name]
                    elif c.status == 'Error':
                        failures[c.name] = 'Error: %s' % (
                            c.status_reason or '')[:300]
                time.sleep(POLL)
        wall = time.monotonic() - t0
        self.delete_all()
        return list(up.values()), list(failures.values()), wall

    def delete_all(self, timeout=300):
        """Delete every container (running ones stopped, those in Error
        forced) and wait, at most ``timeout`` s, until Zun lists none.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.client.containers.list()
            if not left:
                return
            for c in left:
                if c.status == 'Deleting':
                    continue
                for kwargs in ({'force': True, 'stop': True},
                               {'force': True}):
                    try:
                        self.client.containers.delete(c.uuid, **kwargs)
                        break
                    except Exception as exc:   # the next look retries
                        why = exc
                else:
                    print('  delete %s (%s): %s' % (c.name, c.status, why))
            time.sleep(5)
        print('  Zun still lists %d containers after %d s' % (
            len(self.client.containers.list()), timeout))

    def close(self):
        try:
            if self.client is not None:
                self.delete_all()
        finally:
            try:
                if self.logs_to:
                    shutil.copytree(self.env.log_dir, self.logs_to,
                                    dirs_exist_ok=True)
                    print('  service logs copied to %s' % self.logs_to)
                self.env.stop()
            finally:
                # Whatever zun left: no VM outlives the benchmark.
                ids = self._kz('ps', '-a', '-q').stdout.split()
                if ids:
                    self._kz('rm', '-f', *ids)
                self.iso.close()
