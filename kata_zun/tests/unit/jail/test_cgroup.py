"""Sandbox cgroups on v1 and v2 layouts (a directory tree stands in for
the cgroup file systems; the real ones are used by test_jail).
"""

import os

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.jail import cgroup


def _read(path):
    with open(path) as f:
        return f.read()


class DetectTestCase(base.BaseTestCase):

    def _mounts(self, text):
        path = self.useFixture(fixtures.TempDir()).join('mounts')
        with open(path, 'w') as f:
            f.write(text)
        return path

    def test_v2_at_the_root(self):
        mounts = self._mounts('cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n')
        self.assertEqual(('v2', '/sys/fs/cgroup'),
                         cgroup.detect(mounts, fallback=None))

    def test_hybrid_uses_v1_controllers(self):
        # This machine: v1 controllers plus an empty unified mount.
        mounts = self._mounts(
            'tmpfs /sys/fs/cgroup tmpfs rw 0 0\n'
            'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n'
            'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n'
            'cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n'
            'cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n')
        self.assertEqual(('v1', {'cpu': '/sys/fs/cgroup/cpu,cpuacct',
                                 'memory': '/sys/fs/cgroup/memory',
                                 'pids': '/sys/fs/cgroup/pids'}),
                         cgroup.detect(mounts, fallback=None))

    def test_hierarchies_from_proc_cgroup(self):
        path = self._mounts('9:name=systemd:/\n8:pids:/\n'
                            '2:cpu,cpuacct:/\n1:memory:/x\n0::/\n')
        self.assertEqual(([['pids'], ['cpu', 'cpuacct'], ['memory']],
                          True), cgroup._hierarchies(path))

    def test_missing_controller_is_an_error(self):
        mounts = self._mounts(
            'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n')
        exc = self.assertRaises(exception.JailError, cgroup.detect, mounts,
                                fallback=None)
        self.assertIn('cpu, pids', str(exc))


class CgroupV1TestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.points = {c: os.path.join(self.root, c)
                       for c in ('memory', 'pids')}
        self.points['cpu'] = os.path.join(self.root, 'cpu,cpuacct')

    def test_create_limits_and_destroy(self):
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v1', self.points))
        group.create(320 << 20, 0.5, 256)
        memory = os.path.join(self.points['memory'], 'kata_zun', 'kz-1',
                              'vmm')
        self.assertEqual(str(320 << 20),
                         _read(memory + '/memory.limit_in_bytes'))
        cpu = os.path.join(self.points['cpu'], 'kata_zun', 'kz-1', 'vmm')
        self.assertEqual('50000', _read(cpu + '/cpu.cfs_quota_us'))
        self.assertEqual('100000', _read(cpu + '/cpu.cfs_period_us'))
        self.assertEqual({'memory': 320 << 20, 'cpu': 0.5, 'pids': 256},
                         group.limits())
        self.assertEqual(3, len(group.procs_files('vmm')))
        # A real cgroupfs removes the control files with the directory.
        for directory in group.directories():
            vmm = os.path.join(directory, 'vmm')
            for name in os.listdir(vmm):
                os.unlink(os.path.join(vmm, name))
        self.assertTrue(group.destroy())
        for directory in group.directories():
            self.assertFalse(os.path.exists(directory))

    def test_no_cpu_limit_is_no_quota(self):
        group = cgroup.for_sandbox('kata_zun', 'kz-2', ('v1', self.points))
        group.create(1 << 30, None, 64)
        self.assertIsNone(group.limits()['cpu'])

    def test_names_cannot_leave_the_parent(self):
        for bad in ('../x', 'a/b', '', '.hidden', 'x' * 200):
            self.assertRaises(exception.JailError, cgroup.for_sandbox,
                              'kata_zun', bad, ('v1', self.points))
        self.assertRaises(exception.JailError, cgroup.for_sandbox,
                          '..', 'kz-1', ('v1', self.points))


class CgroupV2TestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(self.root, 'cgroup.controllers'), 'w') as f:
            f.write('cpuset cpu io memory pids\n')
        open(os.path.join(self.root, 'cgroup.subtree_control'), 'w').close()
        # A real cgroupfs fills new directories with their control files.
        real_makedirs = os.makedirs

        def makedirs(path, *args, **kwargs):
            real_makedirs(path, *args, **kwargs)
            for name, text in (('cgroup.controllers',
                                'cpu memory pids\n'),
                               ('cgroup.subtree_control', '')):
                if not os.path.exists(os.path.join(path, name)):
                    with open(os.path.join(path, name), 'w') as f:
                        f.write(text)
        self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.jail.cgroup.os.makedirs', makedirs))

    def test_create_enables_controllers_and_limits(self):
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v2', self.root))
        group.create(300 << 20, 1.5, 128)
        self.assertEqual('+memory +cpu +pids',
                         _read(self.root + '/cgroup.subtree_control'))
        vmm = os.path.join(self.root, 'kata_zun', 'kz-1', 'vmm')
        self.assertEqual(str(300 << 20), _read(vmm + '/memory.max'))
        self.assertEqual('0', _read(vmm + '/memory.swap.max'))
        self.assertEqual('150000 100000', _read(vmm + '/cpu.max'))
        self.assertEqual({'memory': 300 << 20, 'cpu': 1.5, 'pids': 128},
                         group.limits())
        self.assertEqual([vmm + '/cgroup.procs'], group.procs_files('vmm'))

    def test_missing_controller(self):
        with open(os.path.join(self.root, 'cgroup.controllers'), 'w') as f:
            f.write('cpu memory\n')
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v2', self.root))
        exc = self.assertRaises(exception.JailError, group.create,
                                1 << 30, None, 64)
        self.assertIn('pids', str(exc))

    def test_shims_leave_for_their_own_cgroup(self):
        cgroup.join_shims('kata_zun', 1234, ('v2', self.root))
        self.assertEqual('1234', _read(os.path.join(
            self.root, 'kata_zun', 'shims', 'cgroup.procs')))

    def test_leaving_the_starter_never_fails_the_daemon(self):
        from unittest import mock
        log = mock.Mock()
        with mock.patch.object(os, 'geteuid', return_value=1000), \
                mock.patch.object(cgroup, 'join_shims') as join:
            cgroup.leave_starter('kata_zun', log)
        join.assert_not_called()               # only root can move it
        with mock.patch.object(os, 'geteuid', return_value=0), \
                mock.patch.object(cgroup, 'join_shims',
                                  side_effect=exception.JailError(
                                      reason='no room')) as join:
            cgroup.leave_starter('kata_zun', log)
        join.assert_called_once_with('kata_zun')
        self.assertIn('no room', str(log.warning.call_args))


class CpusetTestCase(base.BaseTestCase):
    """Sandboxes pinned to CPUs and NUMA nodes (issue 15)."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        real_makedirs = os.makedirs
        self.files = {}

        def makedirs(path, *args, **kwargs):
            real_makedirs(path, *args, **kwargs)
            for name, text in self.files.items():
                if not os.path.exists(os.path.join(path, name)):
                    with open(os.path.join(path, name), 'w') as f:
                        f.write(text)
        self.useFixture(fixtures.MonkeyPatch(
            'kata_zun.jail.cgroup.os.makedirs', makedirs))

    def _v1(self):
        points = {c: os.path.join(self.root, c)
                  for c in ('memory', 'pids', 'cpu', 'cpuset')}
        os.makedirs(points['cpuset'])
        for name, text in (('cpuset.cpus', '0-7'), ('cpuset.mems', '0-1')):
            with open(os.path.join(points['cpuset'], name), 'w') as f:
                f.write(text)
        # A new v1 cpuset group starts with no CPUs and no nodes.
        self.files = {'cpuset.cpus': '', 'cpuset.mems': ''}
        return points

    def test_v1_detects_the_cpuset_hierarchy(self):
        path = self.useFixture(fixtures.TempDir()).join('mounts')
        with open(path, 'w') as f:
            f.write('cgroup /c/cpu cgroup rw,cpu 0 0\n'
                    'cgroup /c/cpuset cgroup rw,cpuset 0 0\n'
                    'cgroup /c/memory cgroup rw,memory 0 0\n'
                    'cgroup /c/pids cgroup rw,pids 0 0\n')
        self.assertEqual('/c/cpuset', cgroup.detect(path, fallback=None)[1][
            'cpuset'])

    def test_v1_pinned_sandbox(self):
        points = self._v1()
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v1', points))
        group.create(1 << 30, 2, 64, cpuset=((2, 3), (1,)))
        upper = os.path.join(points['cpuset'], 'kata_zun')
        # The upper levels copy their parent's, the leaf is pinned.
        for level in (upper, os.path.join(upper, 'kz-1')):
            self.assertEqual('0-7', _read(level + '/cpuset.cpus'))
            self.assertEqual('0-1', _read(level + '/cpuset.mems'))
        self.assertEqual(('2-3', '1'), group.cpuset())
        self.assertIn(os.path.join(upper, 'kz-1', 'vmm', 'cgroup.procs'),
                      group.procs_files('vmm'))
        self.assertEqual(4, len(group.procs_files('vmm')))
        self.assertIn(os.path.join(upper, 'kz-1'), group.directories())

    def test_v1_no_nodes_given_inherits_them(self):
        points = self._v1()
        group = cgroup.for_sandbox('kata_zun', 'kz-2', ('v1', points))
        group.create(1 << 30, None, 64, cpuset=((0,), ()))
        self.assertEqual(('0', '0-1'), group.cpuset())

    def test_v1_unpinned_sandbox_stays_out_of_cpuset(self):
        points = self._v1()
        group = cgroup.for_sandbox('kata_zun', 'kz-3', ('v1', points))
        group.create(1 << 30, None, 64)
        self.assertEqual(3, len(group.procs_files('vmm')))
        self.assertFalse(os.path.exists(os.path.join(points['cpuset'],
                                                     'kata_zun')))

    def test_v1_without_cpuset_hierarchy_refuses(self):
        points = self._v1()
        del points['cpuset']
        group = cgroup.for_sandbox('kata_zun', 'kz-4', ('v1', points))
        exc = self.assertRaises(exception.JailError, group.create,
                                1 << 30, None, 64, cpuset=((0,), ()))
        self.assertIn('cpuset', str(exc))

    def test_v2_pinned_sandbox(self):
        with open(os.path.join(self.root, 'cgroup.controllers'), 'w') as f:
            f.write('cpuset cpu io memory pids\n')
        open(os.path.join(self.root, 'cgroup.subtree_control'), 'w').close()
        self.files = {'cgroup.controllers': 'cpuset cpu memory pids\n',
                      'cgroup.subtree_control': ''}
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v2', self.root))
        group.create(1 << 30, None, 64, cpuset=((1, 2, 3, 5), (0,)))
        self.assertEqual('+memory +cpu +pids +cpuset',
                         _read(self.root + '/cgroup.subtree_control'))
        self.assertEqual(('1-3,5', '0'), group.cpuset())

    def test_v2_without_cpuset_controller_refuses(self):
        with open(os.path.join(self.root, 'cgroup.controllers'), 'w') as f:
            f.write('cpu memory pids\n')
        open(os.path.join(self.root, 'cgroup.subtree_control'), 'w').close()
        self.files = {'cgroup.controllers': 'cpu memory pids\n',
                      'cgroup.subtree_control': ''}
        group = cgroup.for_sandbox('kata_zun', 'kz-1', ('v2', self.root))
        exc = self.assertRaises(exception.JailError, group.create,
                                1 << 30, None, 64, cpuset=((0,), ()))
        self.assertIn('cpuset', str(exc))


class MemoryHeadroomTestCase(base.BaseTestCase):
    """The parent cgroup's room under its memory limit (a directory tree
    stands in for the cgroup file systems).
    """

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def _files(self, directory, **files):
        os.makedirs(directory, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(directory, name.replace('_', '.', 1)),
                      'w') as f:
                f.write(text)

    def test_v2_limit_less_working_set(self):
        self._files(os.path.join(self.root, 'kz'), memory_max='1073741824\n',
                    memory_current='536870912\n',
                    memory_stat='anon 1\ninactive_file 104857600\n'
                                'active_file 5\n')
        # 1 GiB - (512 MiB - 100 MiB of reclaimable file pages).
        self.assertEqual((1024 - 412) * 1024 * 1024, cgroup.memory_headroom(
            'kz', layout=('v2', self.root)))

    def test_v2_no_limit_or_no_parent_yet(self):
        self._files(os.path.join(self.root, 'kz'), memory_max='max\n',
                    memory_current='5\n')
        self.assertIsNone(cgroup.memory_headroom('kz', ('v2', self.root)))
        self.assertIsNone(cgroup.memory_headroom('other', ('v2', self.root)))

    def test_v1_limit_and_its_no_limit_value(self):
        memory = os.path.join(self.root, 'memory')
        self._files(os.path.join(memory, 'kz'),
                    memory_limit_in_bytes='209715200\n',
                    memory_usage_in_bytes='314572800\n',
                    memory_stat='cache 1\ntotal_inactive_file 0\n')
        # Over its limit (reclaiming): no room, never a negative one.
        self.assertEqual(0, cgroup.memory_headroom(
            'kz', ('v1', {'memory': memory})))
        self._files(os.path.join(memory, 'kz'),
                    memory_limit_in_bytes='9223372036854771712\n')
        self.assertIsNone(cgroup.memory_headroom(
            'kz', ('v1', {'memory': memory})))

    def test_unreadable_values_and_bad_names(self):
        self._files(os.path.join(self.root, 'kz'), memory_max='junk\n',
                    memory_current='5\n')
        self.assertIsNone(cgroup.memory_headroom('kz', ('v2', self.root)))
        # No memory.stat: nothing counted as reclaimable.
        self._files(os.path.join(self.root, 'kz'), memory_max='100\n')
        self.assertEqual(95, cgroup.memory_headroom('kz', ('v2', self.root)))
        self.assertRaises(exception.JailError, cgroup.memory_headroom,
                          '../x', ('v2', self.root))
