"""Masked and read-only paths; the agent's pids limit and spec checks."""

import os

import fixtures
from oslotest import base

from kata_zun.agent import guest
from kata_zun.agent import guestroot


class Recorder(object):
    def __init__(self):
        self.calls = []

    def __call__(self, source, target, fstype, flags=0, data=None):
        self.calls.append((source, target, fstype, flags, data))


class PathsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        for d in ('proc/acpi', 'proc/sys', 'proc/irq', 'sys/firmware',
                  'dev'):
            os.makedirs(os.path.join(self.root, d))
        for f in ('proc/kcore', 'proc/keys', 'proc/sysrq-trigger',
                  'dev/null'):
            open(os.path.join(self.root, f), 'w').close()
        # An image cannot steer a mask elsewhere with a symlink.
        os.symlink('/etc', os.path.join(self.root, 'proc/timer_list'))

    def test_docker_lists(self):
        self.assertEqual(
            {'/proc/asound', '/proc/acpi', '/proc/kcore', '/proc/keys',
             '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats',
             '/proc/sched_debug', '/proc/scsi', '/sys/firmware',
             '/sys/devices/virtual/powercap'},
            set(guestroot.MASKED_PATHS))
        self.assertEqual({'/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys',
                          '/proc/sysrq-trigger'},
                         set(guestroot.READONLY_PATHS))

    def test_files_get_dev_null_and_directories_an_empty_tmpfs(self):
        mount = Recorder()
        done = guestroot.mask_paths(self.root, mount)
        self.assertEqual(['/proc/acpi', '/proc/kcore', '/proc/keys',
                          '/sys/firmware'], done)
        by_target = {c[1][len(self.root):]: c for c in mount.calls}
        self.assertEqual(set(done), set(by_target))
        for path in ('/proc/kcore', '/proc/keys'):
            source, _, fstype, flags, _ = by_target[path]
            self.assertEqual(self.root + '/dev/null', source)
            self.assertEqual(guestroot.MS_BIND, flags)
        for path in ('/proc/acpi', '/sys/firmware'):
            _, _, fstype, flags, _ = by_target[path]
            self.assertEqual('tmpfs', fstype)
            self.assertTrue(flags & guestroot.MS_RDONLY)

    def test_readonly_is_a_bind_then_a_read_only_remount(self):
        mount = Recorder()
        done = guestroot.readonly_paths(self.root, mount)
        self.assertEqual(['/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
                         done)
        self.assertEqual(2 * len(done), len(mount.calls))
        for i, path in enumerate(done):
            bind, remount = mount.calls[2 * i:2 * i + 2]
            self.assertEqual((self.root + path, self.root + path),
                             bind[:2])
            self.assertTrue(bind[3] & guestroot.MS_BIND)
            self.assertEqual(self.root + path, remount[1])
            for flag in (guestroot.MS_BIND, guestroot.MS_REMOUNT,
                         guestroot.MS_RDONLY):
                self.assertTrue(remount[3] & flag)


class FakeContainer(object):
    def __init__(self, cgroup):
        self.cgroup = cgroup


class AgentLimitsTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cg = self.useFixture(fixtures.TempDir()).path
        self.c = FakeContainer(self.cg)

    def pids_max(self):
        with open(os.path.join(self.cg, 'pids.max')) as f:
            return f.read()

    def test_pids_limit(self):
        guest.Agent._apply_limits(None, self.c, {'pids_limit': 128})
        self.assertEqual('128', self.pids_max())
        guest.Agent._apply_limits(None, self.c, {'pids_limit': 0})
        self.assertEqual('max', self.pids_max())
        # An update without it leaves the limit alone.
        guest.Agent._apply_limits(None, self.c, {'cpus': None})
        self.assertEqual('max', self.pids_max())
        for bad in (-1, 'many', True):
            self.assertRaises(guest.OpError, guest.Agent._apply_limits,
                              None, self.c, {'pids_limit': bad})

    def test_privileged_must_be_a_boolean(self):
        self.assertIs(False, guest._bool({}, 'privileged'))
        self.assertIs(True, guest._bool({'privileged': True}, 'privileged'))
        for bad in (1, 'yes', None, []):
            self.assertRaises(guest.OpError, guest._bool,
                              {'privileged': bad}, 'privileged')


class ResolveTestCase(base.BaseTestCase):
    """The one resolver of container paths (volume targets, archives):
    whatever links a hostile image holds, the result stays inside the
    root and nothing is created outside it.
    """

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(tmp, 'rootfs')
        self.outside = os.path.join(tmp, 'outside')
        os.makedirs(os.path.join(self.root, 'etc'))
        os.makedirs(self.outside)
        open(os.path.join(self.root, 'etc/passwd'), 'w').close()

    def _link(self, name, target):
        os.symlink(target, os.path.join(self.root, name))

    def test_dotdot_and_absolute_links_stay_in_the_root(self):
        self._link('abs', self.outside)
        self._link('rel', '../../../outside')
        self._link('up', '../../../../..')
        self.assertEqual('/', guestroot.resolve(self.root, '/../../..'))
        self.assertEqual('/etc/passwd',
                         guestroot.resolve(self.root, 'x/../../etc/passwd'))
        self.assertEqual(self.outside + '/f',
                         guestroot.resolve(self.root, '/abs/f'))
        self.assertEqual('/outside', guestroot.resolve(self.root, '/rel'))
        self.assertEqual('/etc', guestroot.resolve(self.root, '/up/etc'))

    def test_final_link_followed_only_when_asked(self):
        self._link('pw', '/etc/passwd')
        self.assertEqual('/pw', guestroot.resolve(self.root, '/pw',
                                                  follow_final=False))
        self.assertEqual('/etc/passwd', guestroot.resolve(self.root, '/pw'))
        # In the middle a link is always followed.
        self._link('e', 'etc')
        self.assertEqual('/etc/passwd', guestroot.resolve(
            self.root, '/e/passwd', follow_final=False))

    def test_loops_and_non_directories_are_bounded_errors(self):
        self._link('a', '/b')
        self._link('b', '/a')
        self.assertRaises(guestroot.ResolveError, guestroot.resolve,
                          self.root, '/a/x')
        self.assertRaises(guestroot.ResolveError, guestroot.resolve,
                          self.root, '/etc/passwd/x')
        self.assertRaises(guestroot.ResolveError, guestroot.resolve,
                          self.root, '/etc/passwd/x', create='dir')

    def test_nothing_is_created_unless_asked_and_never_outside(self):
        self.assertEqual('/new/dir',
                         guestroot.resolve(self.root, '/new/dir'))
        self.assertFalse(os.path.lexists(os.path.join(self.root, 'new')))
        self._link('abs', self.outside)
        self.assertEqual(self.outside + '/d/f', guestroot.resolve(
            self.root, '/abs/d/f', create='file'))
        self.assertTrue(os.path.isfile(
            os.path.join(self.root, self.outside.lstrip('/'), 'd/f')))
        self.assertEqual(self.outside + '/d/g', guestroot.resolve(
            self.root, '/abs/d/g', create='dir'))
        self.assertTrue(os.path.isdir(
            os.path.join(self.root, self.outside.lstrip('/'), 'd/g')))
        self.assertEqual([], os.listdir(self.outside))

    def test_creation_failure_is_a_resolve_error(self):
        # A name longer than NAME_MAX: ENAMETOOLONG, whoever we are.
        for create in ('file', 'dir'):
            exc = self.assertRaises(guestroot.ResolveError,
                                    guestroot.resolve, self.root,
                                    '/etc/' + 'x' * 300, create=create)
            self.assertIn('cannot create', str(exc))
