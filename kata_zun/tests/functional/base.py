"""Base for functional tests that drive the real CLI and boot real VMs.

Each test gets its own state and run directories and config file, and
shares the guest assets built by ``kata-zun guest build`` (tools/install.sh
builds them into the default state path).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import fixtures
from oslotest import base

DEFAULT_GUEST_DIR = '/var/lib/kata-zun/guest'
CLI_TIMEOUT = 180
# The discard port on loopback: nothing listens there.
CLOSED_REGISTRY = '127.0.0.1:9'
# ``accelerator = auto`` probes KVM once per run path (the verdict is
# cached there, keyed by the host's boot id, QEMU and kernel), and every
# test has a run path of its own: on a host without usable KVM that was
# a 15 s probe in nearly every test. The suite keeps the first verdict
# here and seeds each new run path with it; the probe itself stays real
# (the first test of a boot runs it; test_qemu_boot and the unit tests
# cover it).
SUITE_PROBE_CACHE = '/tmp/kata-zun-functional-accel-probe.json'
PROBE_CACHE_NAME = 'accel-probe.json'


def tail_file(path, size):
    """:returns: the end of a log file, for failure details."""
    from kata_zun.runtime import fileutils
    return fileutils.tail(path, size)


def processes_under(path):
    """:returns: pids of the processes whose command line names ``path``
        (the QEMUs and shims of one run path).
    """
    needle = path.encode()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def seed_probe_cache(run_path):
    """Give a new run path the suite's KVM probe verdict, if there is
    one (see :data:`SUITE_PROBE_CACHE`).
    """
    try:
        shutil.copyfile(SUITE_PROBE_CACHE,
                        os.path.join(run_path, PROBE_CACHE_NAME))
    except OSError:
        pass


def keep_probe_cache(run_path):
    """Keep a run path's KVM probe verdict for the suite's later tests,
    if the suite has none yet (written atomically: two workers).
    """
    src = os.path.join(run_path, PROBE_CACHE_NAME)
    if os.path.exists(SUITE_PROBE_CACHE) or not os.path.exists(src):
        return
    tmp = '%s.%d' % (SUITE_PROBE_CACHE, os.getpid())
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, SUITE_PROBE_CACHE)
    except OSError:
        pass


class Result(object):
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    @property
    def text(self):
        return self.out.decode('utf-8', 'replace')

    def __repr__(self):
        return 'Result(code=%s, out=%r, err=%r)' % (
            self.code, self.out[-2000:], self.err[-2000:])


class KataZunFunctionalTest(base.BaseTestCase):

    # --- network (issue 5)
    # Appended to the config file (after [kata_network] driver = none:
    # tests that are not about networking make no host bridge).
    extra_config = ''
    # Run the CLI through this, e.g. ('ip', 'netns', 'exec', NAME).
    cli_prefix = ()
    # --- end network

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(600, gentle=True))
        root = self.useFixture(fixtures.TempDir()).path
        self.state_path = os.path.join(root, 'state')
        os.makedirs(self.state_path)
        guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR', DEFAULT_GUEST_DIR)
        if not os.path.isdir(guest_dir):
            self.fail('guest assets missing in %s: run tools/install.sh' %
                      guest_dir)
        os.symlink(guest_dir, os.path.join(self.state_path, 'guest'))
        # Unix socket paths must stay short: not under the deep TempDir.
        self.run_path = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        self.addCleanup(self._cleanup_run_path)
        seed_probe_cache(self.run_path)
        self.conf_file = os.path.join(root, 'kata-zun.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[DEFAULT]\n'
                    'debug = True\n'
                    '[kata]\n'
                    'state_path = %s\n'
                    'run_path = %s\n'
                    'writable_layer_mb = 256\n'
                    # The suite's tests share the host's template store
                    # and use more shapes than the default keeps: no
                    # rebuild of a shape another test evicted.
                    'template_max_count = 12\n'
                    '[kata_hypervisor]\n'
                    'accelerator = %s\n'
                    '[kata_image]\n'
                    # Never reach out of this machine: an image missing
                    # locally is pulled from a closed loopback port unless
                    # a test starts a registry of its own.
                    'default_registry = %s\n' % (
                        self.state_path, self.run_path,
                        os.environ.get('KATA_ZUN_ACCEL', 'auto'),
                        CLOSED_REGISTRY))
            f.write('[kata_network]\ndriver = none\n' + self.extra_config)
        self.addCleanup(self._remove_all)

    def _cleanup_run_path(self):
        keep_probe_cache(self.run_path)
        shutil.rmtree(self.run_path, ignore_errors=True)

    def _remove_all(self):
        # Never leave VMs behind, whatever the test did.
        ids = self.kz('ps', '-a', '-q').text.split()
        if ids:
            self.kz('rm', '-f', *ids)

    def kz(self, *args, input=None, timeout=CLI_TIMEOUT, check=None):
        """Run the kata-zun CLI in a new process.

        :param check: expected exit code, or None not to check.
        :returns: a :class:`Result`.
        """
        argv = list(self.cli_prefix) + [
            sys.executable, '-m', 'kata_zun.cmd.cli',
            '--config-file', self.conf_file] + list(args)
        stdio = ({'input': input} if input is not None
                 else {'stdin': subprocess.DEVNULL})
        proc = subprocess.run(argv, capture_output=True, timeout=timeout,
                              **stdio)
        result = Result(proc)
        if check is not None:
            self.assertEqual(check, result.code, result)
        return result

    def load_busybox(self, tag='busybox:latest'):
        from kata_zun.image import busybox
        path = os.path.join(self.state_path, 'busybox.tar')
        busybox.write_docker_archive(path, repo_tags=(tag,))
        self.kz('load', '-i', path, check=0)
        os.unlink(path)
