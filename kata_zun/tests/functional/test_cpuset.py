"""Dedicated CPUs: every thread of a real VM's QEMU on the claimed CPUs.

Through the CLI (``--cpuset-cpus``, as with Docker) and through the Zun
driver with what zun-compute's resource claim leaves on a container with
``cpu_policy=dedicated`` (``container.cpuset``, zun's own object). The
kernel's view is read: ``Cpus_allowed_list`` of every task of QEMU and
its sandbox's ``cpuset`` cgroup.

(zun 18's claim itself cannot run here: ``claim_cpuset_mem_for_container``
calls ``set()`` on the scheduler's integer NUMA node id and raises
TypeError, whatever the driver; the driver is therefore given the claim's
result directly, in a zun-compute-like process of its own.)
"""

import json
import os
import subprocess
import sys

from kata_zun import conf
from kata_zun.jail import cgroup
from kata_zun.jail import cpuset
from kata_zun.tests.functional import base

CONF = conf.CONF

# zun-compute's part, in a process of its own (the driver reads the
# test's configuration file): create and start a container as zun-compute
# does after a dedicated claim of CPU argv[2].
_DRIVER_SCRIPT = """
import json, sys, types, uuid
from kata_zun import conf
conf.CONF([], project='kata-zun', default_config_files=[sys.argv[1]])
from zun.common import context
from zun import objects
from kata_zun import driver
ctx = context.get_admin_context()
d = driver.KataDriver()
# No zun database here: the container has no volume to bind at start.
d._bind_volumes = lambda context, container: None
cpu = int(sys.argv[2])
c = types.SimpleNamespace(
    uuid=str(uuid.uuid4()), runtime=None, entrypoint=None,
    command=['sleep', '1000'], workdir=None, environment={}, memory=None,
    restart_policy=None, cpu=1.0, hostname=None, auto_remove=False,
    labels={}, healthcheck=None, privileged=False, disk=None, tty=False,
    interactive=False, host=None, security_groups=None,
    cpu_policy='dedicated',
    cpuset=objects.container.Cpuset(cpuset_cpus={cpu}, cpuset_mems={0}),
    save=lambda context: None)
d.create(ctx, c, {'repo': 'busybox', 'tag': 'latest'}, [], {})
d.start(ctx, c)
print(json.dumps({'id': c.container_id, 'status': c.status,
                  'reason': c.status_reason}))
"""


def _allowed_lists(pid):
    """:returns: {tid: Cpus_allowed_list} of every thread of ``pid``."""
    found = {}
    for tid in os.listdir('/proc/%d/task' % pid):
        with open('/proc/%d/task/%s/status' % (pid, tid)) as f:
            for line in f:
                if line.startswith('Cpus_allowed_list:'):
                    found[tid] = line.split(':', 1)[1].strip()
    return found


class CpusetTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.fail('needs root (the jail and its cgroups)')
        self.topology = cpuset.read_topology()
        # The last CPU: the least likely to be anyone's default.
        self.cpu = self.topology.cpus[-1]
        self.load_busybox()

    def _inspect(self, name):
        info = json.loads(self.kz('inspect', name, check=0).out)
        return info[0] if isinstance(info, list) else info

    def _assert_pinned(self, name, cpus):
        info = self._inspect(name)
        pid = info['State']['VMPid']
        want = cpuset.format_list(cpus)
        allowed = _allowed_lists(pid)
        # vCPU threads, the I/O thread, RCU and worker threads: all.
        self.assertGreater(len(allowed), 1)
        self.assertEqual({want}, set(allowed.values()), allowed)
        group = cgroup.for_sandbox(CONF.kata_jail.cgroup_parent,
                                   'kz-' + info['Id'][:12])
        self.assertEqual(want, group.cpuset()[0])
        return info

    def test_cli_cpuset_cpus(self):
        self.kz('run', '-d', '--name', 'p1', '--cpuset-cpus',
                str(self.cpu), 'busybox', 'sleep', '1000', check=0)
        info = self._assert_pinned('p1', [self.cpu])
        # One vCPU per dedicated CPU.
        self.assertEqual(1, info['VM']['vcpus'])
        self.assertEqual(b'1\n', self.kz('exec', 'p1', 'nproc',
                                         check=0).out)
        # Threads the guest makes QEMU start later are pinned too.
        self.kz('exec', 'p1', 'sh', '-c', 'dd if=/dev/zero of=/tmp/x '
                'bs=1M count=8 && sync', check=0)
        self._assert_pinned('p1', [self.cpu])
        self.kz('rm', '-f', 'p1', check=0)
        self.assertIsNone(cgroup.for_sandbox(
            CONF.kata_jail.cgroup_parent,
            'kz-' + info['Id'][:12]).cpuset())

    def test_cli_refuses_what_the_host_cannot_give(self):
        for args in (('--cpuset-cpus', '4095'), ('--cpuset-cpus', '1-0'),
                     ('--cpuset-cpus', '0', '--cpuset-mems', '7'),
                     ('--cpuset-cpus', '0;rm')):
            r = self.kz('run', '--rm', *(args + ('busybox', 'true')))
            self.assertEqual(125, r.code, r)
            self.assertIn(b'cpuset', r.err)
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)

    def test_driver_dedicated_claim(self):
        proc = subprocess.run(
            [sys.executable, '-c', _DRIVER_SCRIPT, self.conf_file,
             str(self.cpu)], capture_output=True, text=True, timeout=300)
        self.assertEqual(0, proc.returncode, proc.stderr[-4000:])
        created = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual('Running', created['status'], created)
        self._assert_pinned(created['id'], [self.cpu])
