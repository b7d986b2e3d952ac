"""The privileged functions refuse bad arguments before touching anything.

Run in-process (privsep client mode off) with netlink, ioctl, sysfs and
libnftables mocked out: nothing here needs or uses privileges.
"""

import subprocess
import sys
from unittest import mock

import fixtures
from oslotest import base

import kata_zun.privsep
from kata_zun.privsep import libnft
from kata_zun.privsep import linux_net

TAP = 'kzt0123456789ab'


class LinuxNetTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        ctx = kata_zun.privsep.sys_admin_pctxt
        ctx.set_client_mode(False)
        self.addCleanup(ctx.set_client_mode, True)
        self.netlink = mock.MagicMock()
        self.useFixture(fixtures.MockPatch(
            'kata_zun.agent.guestnet.Netlink', self.netlink))
        self.ioctl = self.useFixture(fixtures.MockPatch(
            'fcntl.ioctl')).mock
        self.open = self.useFixture(fixtures.MockPatch('os.open')).mock
        self.write = self.useFixture(fixtures.MockPatchObject(
            linux_net, '_write')).mock
        self.run = self.useFixture(fixtures.MockPatchObject(
            libnft, 'run', return_value=(0, '', ''))).mock
        self.list = self.useFixture(fixtures.MockPatchObject(
            libnft, 'list_rules', return_value=[])).mock

    def _untouched(self):
        self.netlink.assert_not_called()
        self.ioctl.assert_not_called()
        self.open.assert_not_called()
        self.write.assert_not_called()
        self.run.assert_not_called()

    def test_names(self):
        for good in (TAP, 'kz0', 'kz-test_1', 'kzb' + 'x' * 12):
            self.assertEqual(good, linux_net.check_link_name(good))
        for bad in ('eth0', 'lo', 'docker0', 'kz', 'kz0;rm', 'kz0 x',
                    'kz' + 'x' * 14, 'kzt012', 'kzt0123456789AB',
                    'kzt0123456789abc', '../kz0', 'kz0/..', '', None, 7,
                    'kz0\n'):
            self.assertRaises(ValueError, linux_net.check_link_name, bad)
        self.assertRaises(ValueError, linux_net.check_tap_name, 'kz0')
        self.assertRaises(ValueError, linux_net.check_bridge_name, TAP)

    def test_delete_link_only_ours(self):
        for bad in ('eth0', 'lo', 'kzt012', 'br0', 'kz0;x'):
            self.assertRaises(ValueError, linux_net.delete_link, bad)
        self._untouched()
        with mock.patch('socket.if_nametoindex', side_effect=OSError):
            self.assertFalse(linux_net.delete_link(TAP))
        with mock.patch('socket.if_nametoindex', return_value=7):
            self.assertTrue(linux_net.delete_link(TAP))
        self.netlink.return_value.__enter__.return_value.link_del.\
            assert_called_once_with(7)

    def test_create_tap_validates_first(self):
        for args in (('eth0', 'kz0', 1500), (TAP, 'eth0', 1500),
                     (TAP, 'kz0', 20), (TAP, 'kz0', 70000),
                     (TAP, 'kz0', '1500'), (TAP, 'kz0', True)):
            self.assertRaises(ValueError, linux_net.create_tap, *args)
        self.assertRaises(ValueError, linux_net.create_tap, TAP, 'kz0',
                          1500, owner=-1)
        self.assertRaises(ValueError, linux_net.create_tap, TAP, 'kz0',
                          1500, owner='root')
        self._untouched()

    def test_ensure_bridge_validates_first(self):
        for args in (('eth0', '10.88.0.1', 16, 1500),
                     ('kz0', '127.0.0.1', 8, 1500),
                     ('kz0', '224.0.0.1', 24, 1500),
                     ('kz0', '169.254.0.1', 16, 1500),
                     ('kz0', '10.88.0.0', 16, 1500),      # network address
                     ('kz0', '10.88.255.255', 16, 1500),  # broadcast
                     ('kz0', '10.88.0.1', 31, 1500),
                     ('kz0', '10.88.0.1/8', 16, 1500),
                     ('kz0', 'x', 16, 1500),
                     ('kz0', '10.88.0.1', 16, 0)):
            self.assertRaises(ValueError, linux_net.ensure_bridge, *args)
        self._untouched()

    def test_ruleset_check(self):
        good = ('add table inet kata_zun\n'
                'add rule inet kata_zun output ip daddr 127.0.0.1 tcp '
                'dport 1 dnat ip to 10.0.0.2:2 comment "kz:kz0:ab"\n')
        self.assertEqual(2, len(linux_net.check_ruleset(good)))
        for bad in ('flush ruleset',
                    'add table ip nat',
                    'delete table inet kata_zun',
                    'add table inet kata_zun2',
                    'add chain inet kata_zun x { type nat hook input '
                    'priority 0; policy accept; }',
                    'add chain inet kata_zun output { type nat hook output '
                    'priority 0; policy drop; }',
                    'add rule inet filter output accept comment "kz:x"',
                    'add rule inet kata_zun output accept',
                    'add rule inet kata_zun output accept; flush ruleset '
                    'comment "kz:x"',
                    'add rule inet kata_zun output jump x { } comment '
                    '"kz:x"',
                    'add rule inet kata_zun output accept comment "kz:x"; '
                    'flush ruleset',
                    'add rule inet kata_zun output accept comment "other"',
                    'include "/etc/nftables.conf"',
                    'add rule inet kata_zun output $x comment "kz:x"',
                    'x' * (linux_net.MAX_RULESET + 1), None):
            self.assertRaises(ValueError, linux_net.check_ruleset, bad)
            self.assertRaises(ValueError, linux_net.nft_apply, bad)
        self._untouched()
        self.list.assert_not_called()

    def test_tags_check(self):
        linux_net.check_tags(['kz:kz0:' + 'a' * 64, 'kz-br:kz0'])
        for bad in ('kz:x', ['x'], ['kz:a b'], ['kz:"x"'], [None],
                    ['kz:'], ['kz:' + 'a' * 101]):
            self.assertRaises(ValueError, linux_net.check_tags, bad)
            self.assertRaises(ValueError, linux_net.nft_apply, '', bad)
        self._untouched()

    def test_nft_apply_replaces_tagged_rules_in_one_transaction(self):
        self.list.return_value = [('prerouting', 4, 'kz:kz0:ab'),
                                  ('output', 5, 'kz:kz0:ab'),
                                  ('postrouting', 6, 'kz-br:kz0'),
                                  ('output', 7, 'kz:kz0:cd')]
        rule = ('add rule inet kata_zun output ip daddr 127.0.0.1 tcp '
                'dport 1 dnat ip to 10.0.0.2:2 comment "kz:kz0:ab"')
        self.assertEqual(2, linux_net.nft_apply(rule, ['kz:kz0:ab']))
        self.run.assert_called_once_with(
            'delete rule inet kata_zun prerouting handle 4\n'
            'delete rule inet kata_zun output handle 5\n' + rule + '\n')
        self.run.reset_mock()
        self.run.return_value = (1, '', 'Error: syntax')
        self.assertRaises(libnft.NftError, linux_net.nft_apply, rule)
        self.run.reset_mock()
        self.list.return_value = []
        self.assertEqual(0, linux_net.nft_apply('', ['kz:kz0:zz']))
        self.run.assert_not_called()

    def test_everything_is_an_entrypoint(self):
        ctx = kata_zun.privsep.sys_admin_pctxt
        for name in ('ensure_bridge', 'create_tap', 'delete_link',
                     'enable_ip_forward', 'nft_apply', 'nft_rules'):
            self.assertTrue(ctx.is_entrypoint(getattr(linux_net, name)),
                            name)


class ImportTestCase(base.BaseTestCase):

    def test_no_eventlet_unless_the_process_has_it(self):
        code = ('import sys, kata_zun.privsep; '
                'bad = [m for m in sys.modules if m.startswith("eventlet")]; '
                'import eventlet; '          # still importable afterwards
                'print(bad); sys.exit(1 if bad else 0)')
        proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', code],
                              capture_output=True, text=True)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
