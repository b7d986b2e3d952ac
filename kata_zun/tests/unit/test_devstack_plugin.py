"""The DevStack plugin (devstack/), run under bash phase by phase.

DevStack sources ``devstack/settings`` and then ``devstack/plugin.sh``
with the mode and phase as arguments (``stack install``, ``stack
post-config``, ``stack extra``...; ``unstack`` from unstack.sh, ``clean``
from clean.sh). These tests do the same in a temporary directory, with a
minimal stand-in for the DevStack and zun functions and variables the
plugin uses (``iniset``, ``install_package``, ``setup_develop``,
``get_python_exec_prefix``, ``is_service_enabled``, ``sudo``,
``$SYSTEMD_DIR``, ``$ZUN_CONF``...), a fake ``kata-zun`` and a fake
``systemctl`` that record their command lines, and assert what the plugin
leaves behind: zun.conf options, directories, the rootwrap filter, the
systemd drop-in of zun-compute and the commands it ran. What is not run
here: a real DevStack, its systemd units and a real zun-compute.
"""

import configparser
import os
import shlex
import stat
import subprocess
import sys
import tempfile
import textwrap

from oslotest import base

from kata_zun.cmd import cli
from kata_zun.conf import opts

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..',
                                    '..'))
SEP = '\x1f'

# The DevStack (functions-common, inifile) and zun (lib/zun) parts the
# plugin calls, reduced to what it needs; every call is logged.
STANDIN = textwrap.dedent(r'''
    function _log {
        local IFS=$'\x1f'
        echo "$*" >> "$KZ_TEST_LOG"
    }
    function sudo { _log sudo "$@"; "$@"; }
    function echo_summary { _log echo_summary "$@"; }
    function install_package { _log install_package "$@"; }
    function pip_install { _log pip_install "$@"; }
    function setup_develop { _log setup_develop "$@"; }
    function get_python_exec_prefix { echo "$KZ_TEST_VENV/bin"; }
    function is_service_enabled {
        local service
        for service in "$@"; do
            [[ ",$ENABLED_SERVICES," == *",$service,"* ]] && return 0
        done
        return 1
    }
    function iniset {
        local sudo_flag=""
        if [[ "$1" == "-sudo" ]]; then
            sudo_flag=-sudo
            shift
        fi
        _log iniset $sudo_flag "$@"
        "$KZ_TEST_PYTHON" - "$@" <<'EOP'
    import configparser
    import sys
    path, section, option, value = sys.argv[1:5]
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read(path)
    if section != 'DEFAULT' and not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, option, value)
    with open(path, 'w') as f:
        parser.write(f)
    EOP
    }
    SYSTEMD_DIR=$KZ_TEST_ROOT/etc/systemd/system
    ZUN_CONF_DIR=$KZ_TEST_ROOT/etc/zun
    ZUN_CONF=$ZUN_CONF_DIR/zun.conf
''')

# Stand-ins for programs the plugin runs: they log their argv.
FAKE_KATA_ZUN = textwrap.dedent(r'''
    #!/bin/bash
    (IFS=$'\x1f'; echo "kata-zun${IFS}$*") >> "$KZ_TEST_LOG"
    if [[ " $* " == *" ps -a -q "* ]]; then
        printf '%s\n' $KZ_TEST_IDS
    fi
    exit "${KZ_TEST_KATA_ZUN_RC:-0}"
''').lstrip()
FAKE_SYSTEMCTL = textwrap.dedent(r'''
    #!/bin/bash
    (IFS=$'\x1f'; echo "systemctl${IFS}$*") >> "$KZ_TEST_LOG"
''').lstrip()


class DevStackPluginTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='kz-devstack-')
        self.addCleanup(subprocess.call, ['rm', '-rf', self.tmp])
        self.root = os.path.join(self.tmp, 'root')
        self.dest = os.path.join(self.tmp, 'opt', 'stack')
        os.makedirs(self.dest)
        # DevStack clones the plugin to $DEST/<name of enable_plugin>.
        os.symlink(REPO, os.path.join(self.dest, 'kata-zun'))
        self.venv = os.path.join(self.tmp, 'venv')
        self.bin = os.path.join(self.tmp, 'bin')
        for directory, name, text in (
                (os.path.join(self.venv, 'bin'), 'kata-zun', FAKE_KATA_ZUN),
                (self.bin, 'systemctl', FAKE_SYSTEMCTL)):
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, name)
            with open(path, 'w') as f:
                f.write(text)
            os.chmod(path, 0o755)
        os.makedirs(os.path.join(self.root, 'etc', 'zun'))
        self.zun_conf = os.path.join(self.root, 'etc', 'zun', 'zun.conf')
        with open(self.zun_conf, 'w') as f:
            f.write('[DEFAULT]\ndebug = True\n')
        self.log = os.path.join(self.tmp, 'calls.log')
        self.state = os.path.join(self.root, 'var', 'lib', 'kata-zun')
        self.run_path = os.path.join(self.root, 'run', 'kata-zun')
        self.env = {
            'PATH': self.bin + ':' + os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': self.tmp,
            'DEST': self.dest,
            'HOST_IP': '192.0.2.10',
            'STACK_USER': 'stack',
            'ENABLED_SERVICES': 'key,zun-api,zun-compute,zun-wsproxy',
            'KATA_ZUN_STATE_PATH': self.state,
            'KATA_ZUN_RUN_PATH': self.run_path,
            'KZ_TEST_ROOT': self.root,
            'KZ_TEST_LOG': self.log,
            'KZ_TEST_VENV': self.venv,
            'KZ_TEST_PYTHON': sys.executable,
        }
        self.standin = os.path.join(self.tmp, 'standin.sh')
        with open(self.standin, 'w') as f:
            f.write(STANDIN)

    # ------------------------------------------------------------ helpers
    def run_phases(self, *phases, env=None, check=True):
        """Source settings and then plugin.sh once per phase, in one bash
        with errexit, as stack.sh, unstack.sh and clean.sh do.

        :param phases: argument strings, e.g. ``'stack install'``.
        :returns: the CompletedProcess.
        """
        plugin = os.path.join(self.dest, 'kata-zun', 'devstack')
        lines = ['set -o errexit', 'source %s' % shlex.quote(self.standin),
                 'source %s' % shlex.quote(os.path.join(plugin, 'settings'))]
        lines += ['source %s %s' % (shlex.quote(os.path.join(plugin,
                                                             'plugin.sh')),
                                    phase) for phase in phases]
        proc = subprocess.run(['bash', '-c', '\n'.join(lines)],
                              env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, timeout=60)
        if check:
            self.assertEqual(0, proc.returncode,
                             'stdout: %s\nstderr: %s' % (proc.stdout,
                                                         proc.stderr))
        # Everything done as root stayed in the temporary tree (the
        # stand-in's $SYSTEMD_DIR, $ZUN_CONF_DIR and state paths).
        for call in self.calls('sudo'):
            for arg in call[2:]:
                if arg.startswith('/') and arg != '/':
                    self.assertTrue(arg.startswith(self.tmp + '/'),
                                    'root outside the test tree: %s' % call)
        return proc

    def calls(self, name=None):
        """:returns: the logged calls (lists of argv), of ``name`` only
        when given.
        """
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            calls = [line.rstrip('\n').split(SEP) for line in f]
        return [c for c in calls if name is None or c[0] == name]

    def kata_zun_calls(self):
        """:returns: the argv (after ``kata-zun``) of every kata-zun run,
        checking that each ran through sudo by its full path.
        """
        exe = os.path.join(self.venv, 'bin', 'kata-zun')
        sudo = [c[1:] for c in self.calls('sudo') if c[1] == exe]
        runs = [c[1:] for c in self.calls('kata-zun')]
        self.assertEqual([s[1:] for s in sudo], runs,
                         'kata-zun must run as root, by full path')
        return runs

    def zun_conf_options(self):
        """:returns: {(section, option): value} of zun.conf, [DEFAULT]
        as a section like the others (not merged into each).
        """
        parser = configparser.RawConfigParser(strict=False,
                                              default_section='\x00')
        parser.optionxform = str
        parser.read(self.zun_conf)
        return {(section, key): value for section in parser.sections()
                for key, value in parser.items(section, raw=True)}

    def assertParses(self, argv):
        """The real CLI accepts the command line the plugin runs."""
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit:
            self.fail('kata-zun rejects %r' % (argv,))

    # -------------------------------------------------------------- tests
    def test_stack_install(self):
        self.run_phases('stack pre-install', 'stack install')
        packages = self.calls('install_package')
        self.assertEqual(1, len(packages))
        for pkg in ('qemu-system-x86', 'qemu-utils', 'linux-image-cloud-amd64',
                    'busybox-static', 'erofs-utils', 'e2fsprogs', 'lz4',
                    'cpio', 'iproute2', 'nftables'):
            self.assertIn(pkg, packages[0][1:])
        # Every package the plugin installs is a compute-host package of
        # bindep.txt (none of the test-only ones).
        with open(os.path.join(REPO, 'bindep.txt')) as f:
            host = {line.split()[0] for line in f
                    if line.strip() and not line.startswith('#') and
                    'test' not in line}
        self.assertLessEqual(set(packages[0][1:]), host)
        self.assertEqual([['setup_develop',
                           os.path.join(self.dest, 'kata-zun')]],
                         self.calls('setup_develop'))
        # Nothing configured or run yet.
        self.assertEqual([], self.calls('iniset'))
        self.assertEqual([], self.calls('kata-zun'))

    def test_stack_post_config(self):
        self.run_phases('stack install', 'stack post-config')
        options = self.zun_conf_options()
        expected = {
            ('DEFAULT', 'container_driver'): 'kata',
            ('DEFAULT', 'capsule_driver'): 'kata',
            ('DEFAULT', 'debug'): 'True',       # zun's own, kept
            ('volume', 'fstype'): 'ext4',
            ('kata', 'state_path'): self.state,
            ('kata', 'run_path'): self.run_path,
            ('kata_hypervisor', 'accelerator'): 'auto',
            ('kata_hypervisor', 'machine_type'): 'microvm',
            ('kata_console', 'listen_port'): '2377',
            ('docker', 'docker_remote_api_port'): '2377',
        }
        self.assertEqual(expected, options)
        # Every [kata*] option the plugin sets exists in kata-zun.
        known = {(group.name if hasattr(group, 'name') else group, o.name)
                 for group, group_opts in opts.list_opts()
                 for o in group_opts}
        for section, key in options:
            if section.startswith('kata'):
                self.assertIn((section, key), known)

        for path in (self.state, self.run_path):
            st = os.stat(path)
            self.assertTrue(stat.S_ISDIR(st.st_mode))
            self.assertEqual(0o700, stat.S_IMODE(st.st_mode))
            self.assertEqual(0, st.st_uid)

        # The rootwrap filter, next to zun's, identical to ours.
        installed = os.path.join(self.root, 'etc', 'zun', 'rootwrap.d',
                                 'kata-zun.filters')
        with open(installed) as f, open(os.path.join(
                REPO, 'etc', 'kata_zun', 'rootwrap.d',
                'kata-zun.filters')) as g:
            self.assertEqual(g.read(), f.read())
        self.assertEqual(0o644, stat.S_IMODE(os.stat(installed).st_mode))

        # zun-compute's unit (devstack@zun-compute) runs it as root.
        dropin = os.path.join(self.root, 'etc', 'systemd', 'system',
                              'devstack@zun-compute.service.d',
                              'kata-zun.conf')
        unit = configparser.RawConfigParser(strict=False)
        unit.optionxform = str
        unit.read(dropin)
        self.assertEqual({'User': 'root',
                          'Environment': 'GRPC_ENABLE_FORK_SUPPORT=0'},
                         dict(unit.items('Service')))
        self.assertEqual([['systemctl', 'daemon-reload']],
                         self.calls('systemctl'))

        # The guest assets are built at configuration time, as root.
        runs = self.kata_zun_calls()
        self.assertEqual([['--config-file', self.zun_conf, 'guest',
                           'build']], runs)
        for argv in runs:
            self.assertParses(argv)

    def test_console_tls(self):
        self.run_phases('stack post-config', env={
            'KATA_ZUN_CONSOLE_TLS_CERT': '/etc/zun/console.pem',
            'KATA_ZUN_CONSOLE_TLS_KEY': '/etc/zun/console.key',
            'KATA_ZUN_CONSOLE_TLS_CA': '/etc/zun/ca.pem',
            'KATA_ZUN_CONSOLE_PORT': '2399'})
        options = self.zun_conf_options()
        self.assertEqual('/etc/zun/console.pem',
                         options[('kata_console', 'tls_cert_file')])
        self.assertEqual('/etc/zun/console.key',
                         options[('kata_console', 'tls_key_file')])
        self.assertEqual('/etc/zun/ca.pem',
                         options[('kata_console', 'tls_ca_file')])
        self.assertEqual('2399', options[('kata_console', 'listen_port')])
        self.assertEqual('https://192.0.2.10:2399',
                         options[('docker', 'docker_remote_api_url')])

    def test_stack_extra_checks_the_host(self):
        self.run_phases('stack extra')
        runs = self.kata_zun_calls()
        self.assertEqual([['--config-file', self.zun_conf, 'check']], runs)
        self.assertParses(runs[0])

    def test_failed_check_fails_the_stack(self):
        proc = self.run_phases('stack extra', 'stack test-config',
                               env={'KZ_TEST_KATA_ZUN_RC': '1'},
                               check=False)
        self.assertNotEqual(0, proc.returncode)
        # stack.sh stopped at the failed check: no phase after it ran.
        self.assertEqual([['kata-zun', '--config-file', self.zun_conf,
                           'check']], self.calls('kata-zun'))

    def test_unstack(self):
        self.run_phases('stack install', 'stack post-config', 'stack extra')
        open(self.log, 'w').close()
        self.run_phases('unstack', env={'KZ_TEST_IDS': 'aaaa bbbb'})
        runs = self.kata_zun_calls()
        self.assertEqual([['--config-file', self.zun_conf, 'ps', '-a', '-q'],
                          ['--config-file', self.zun_conf, 'rm', '-f',
                           'aaaa', 'bbbb']], runs)
        for argv in runs:
            self.assertParses(argv)
        self.assertFalse(os.path.exists(os.path.join(
            self.root, 'etc', 'zun', 'rootwrap.d', 'kata-zun.filters')))
        self.assertFalse(os.path.exists(os.path.join(
            self.root, 'etc', 'systemd', 'system',
            'devstack@zun-compute.service.d', 'kata-zun.conf')))
        self.assertEqual([['systemctl', 'daemon-reload']],
                         self.calls('systemctl'))
        # unstack keeps the state (images, guest assets) for the next
        # stack.sh; zun.conf is zun's to remove.
        self.assertTrue(os.path.isdir(self.state))

    def test_unstack_without_containers(self):
        self.run_phases('unstack')
        self.assertEqual([['--config-file', self.zun_conf, 'ps', '-a',
                           '-q']], self.kata_zun_calls())
        self.assertEqual([], self.calls('systemctl'))

    def test_clean_removes_the_state(self):
        self.run_phases('stack post-config')
        with open(os.path.join(self.state, 'marker'), 'w') as f:
            f.write('x')
        self.run_phases('clean')
        self.assertFalse(os.path.exists(self.state))
        self.assertFalse(os.path.exists(self.run_path))

    def test_clean_refuses_root(self):
        proc = self.run_phases('clean', env={'KATA_ZUN_RUN_PATH': '/'},
                               check=False)
        self.assertNotEqual(0, proc.returncode)
        self.assertIn("refusing to remove '/'", proc.stderr)
        # Nothing removed at all, the state path neither.
        self.assertEqual([], [c for c in self.calls('sudo')
                              if c[1:3] == ['rm', '-rf']])

    def test_nothing_without_zun_compute(self):
        self.run_phases('stack install', 'stack post-config', 'stack extra',
                        'unstack', 'clean',
                        env={'ENABLED_SERVICES': 'key,zun-api'})
        self.assertEqual([], [c for c in self.calls()
                              if c[0] != 'echo_summary'])
        self.assertEqual({('DEFAULT', 'debug'): 'True'},
                         self.zun_conf_options())
