"""The rootwrap filter admits exactly the privsep-helper command lines
oslo.privsep builds for our context, and nothing a local user could use
to make privsep-helper (root) read a configuration file of their own.

The filter file is loaded with oslo.rootwrap's own parser and filter
classes, like zun-rootwrap does.
"""

import configparser
import os
import tempfile
from unittest import mock

from oslo_rootwrap import wrapper
from oslotest import base

import kata_zun.privsep

FILTERS = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..',
                       'etc', 'kata_zun', 'rootwrap.d', 'kata-zun.filters')
ZUN_CONF = '/etc/zun/zun.conf'
KZ_CONF = '/etc/kata-zun/kata-zun.conf'


def _our_filters():
    """The filters of our file, built as wrapper.load_filters() does (but
    without the catch-all it appends: see test_catch_all_noted).
    """
    parser = configparser.RawConfigParser(strict=False)
    with open(FILTERS) as f:
        parser.read_file(f)
    built = []
    for name, value in parser.items('Filters'):
        flt = wrapper.build_filter(*[s.strip() for s in value.split(',')])
        if flt is None:
            raise AssertionError('filter %s does not load' % name)
        flt.name = name
        built.append(flt)
    return built


class RootwrapFilterTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.filters = _our_filters()
        self.ctx = kata_zun.privsep.sys_admin_pctxt
        self.sock = os.path.join(tempfile.mkdtemp(dir='/tmp'),
                                 'privsep.sock')
        self.addCleanup(os.rmdir, os.path.dirname(self.sock))

    def _argv(self, config_files):
        """The command oslo.privsep itself builds for our context (what
        follows "sudo zun-rootwrap /etc/zun/rootwrap.conf").
        """
        conf = mock.MagicMock(config_file=list(config_files),
                              config_dir=None)
        conf.__getitem__.return_value = mock.Mock(helper_command=None)
        with mock.patch('oslo_config.cfg.CONF', conf):
            argv = self.ctx.helper_command(self.sock)
        # helper_command() puts the root helper prefix ("sudo" unless
        # zun set it to "sudo zun-rootwrap <conf>") in front.
        return argv[argv.index('privsep-helper'):]

    def _accepted(self, argv):
        try:
            wrapper.match_filter(self.filters, argv)
        except wrapper.NoFilterMatched:
            return False
        except wrapper.FilterMatchNotExecutable:
            return True         # matched; privsep-helper not on PATH here
        return True

    def test_legitimate_command_lines(self):
        for files in ([ZUN_CONF], [ZUN_CONF, KZ_CONF]):
            argv = self._argv(files)
            self.assertEqual(['privsep-helper'], argv[:1])
            self.assertIn('kata_zun.privsep.sys_admin_pctxt', argv)
            self.assertTrue(self._accepted(argv), argv)

    def test_hostile_config_files_refused(self):
        for files in (['/etc/ssl/../../tmp/x.conf'],
                      ['/etc/zun/../../tmp/x.conf'],
                      ['/etc/zun/zun.conf/../../../tmp/x.conf'],
                      ['/tmp/x.conf'],
                      ['/etc/zun/zun.conf.d/x.conf'],
                      ['/etc/zun/zunXconf'],
                      ['/etc/zun/zun.conf\n'],
                      ['/etc/zun//zun.conf'],
                      ['/home/zun/zun.conf'],
                      ['/etc/passwd'],
                      [ZUN_CONF, '/tmp/x.conf'],
                      [ZUN_CONF, KZ_CONF, '/tmp/x.conf'],
                      ['/tmp/x.conf', ZUN_CONF],
                      [KZ_CONF, ZUN_CONF],
                      []):
            argv = self._argv(files)
            self.assertFalse(self._accepted(argv), argv)

    def test_hostile_context_and_socket_refused(self):
        good = self._argv([ZUN_CONF])
        i = good.index('--privsep_context') + 1
        j = good.index('--privsep_sock_path') + 1
        for index, value in (
                (i, 'os_brick.privileged.default'),
                (i, 'zun.common.privileged.default'),
                (i, 'kata_zun.privsep.other_pctxt'),
                (j, '/tmp/../etc/x/privsep.sock'),
                (j, '/tmp/tmpabcdefgh/../../run/x.sock'),
                (j, '/run/zun/privsep.sock'),
                (j, '/tmp/privsep.sock')):
            argv = list(good)
            argv[index] = value
            self.assertFalse(self._accepted(argv), argv)
        # Extra arguments (--config-dir, a log config) are refused.
        for extra in (['--config-dir', '/tmp'],
                      ['--log-config-append', '/tmp/x'],
                      ['--debug']):
            self.assertFalse(self._accepted(good + extra))
            self.assertFalse(self._accepted(good[:1] + extra + good[1:]))

    def test_catch_all_noted(self):
        """oslo.rootwrap adds a catch-all privsep-helper filter of its own
        (wrapper.load_filters): the README's security section says so.
        If this starts failing, oslo.rootwrap dropped it: update the
        README.
        """
        with tempfile.TemporaryDirectory() as empty:
            loaded = wrapper.load_filters([empty])
        names = [(f.name, type(f).__name__) for f in loaded]
        self.assertIn(('privsep-helper', 'CommandFilter'), names)
