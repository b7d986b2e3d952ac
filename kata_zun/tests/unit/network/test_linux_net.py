"""The privileged functions refuse bad arguments before touching anything.

Run in-process (privsep client mode off) with netlink, ioctl, sysfs and
libnftables mocked out: nothing here needs or uses privileges.
"""

import os
import subprocess
import sys
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun.network import nftrules
from kata_zun.network import ports
import kata_zun.privsep
from kata_zun.privsep import libnft
from kata_zun.privsep import linux_net

TAP = 'kzt0123456789ab'
CID = 'ab' * 32
OTHER = 'cd' * 32
ENTRYPOINTS = ('ensure_bridge', 'create_tap', 'delete_link',
               'enable_ip_forward', 'nat_publish', 'nat_unpublish',
               'nft_rules')


class _PrivBase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        ctx = kata_zun.privsep.sys_admin_pctxt
        ctx.set_client_mode(False)
        self.addCleanup(ctx.set_client_mode, True)
        # What the daemon reads from the caller's configuration files.
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(bridge='kz0', subnet='10.88.0.0/16',
                        group='kata_network')
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


class LinuxNetTestCase(_PrivBase):

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

    def test_nat_publish_writes_the_rules_in_one_transaction(self):
        self.list.return_value = [('prerouting', 4, 'kz:kz0:' + CID),
                                  ('output', 5, 'kz:kz0:' + CID),
                                  ('postrouting', 6, 'kz-br:kz0'),
                                  ('output', 7, 'kz:kz0:' + OTHER)]
        mappings = ports.parse_all(['8080:80', '127.0.0.1:53:53/udp',
                                    '10.88.0.1:81:80'])
        self.assertEqual(3, linux_net.nat_publish(
            'kz0', '10.88.0.0/16', CID, '10.88.0.2', mappings))
        text = self.run.call_args[0][0]
        self.assertEqual('\n'.join(
            ['delete rule inet kata_zun prerouting handle 4',
             'delete rule inet kata_zun output handle 5',
             'delete rule inet kata_zun postrouting handle 6'] +
            nftrules.base_ruleset() +
            nftrules.bridge_rules('kz0', '10.88.0.0/16') +
            nftrules.port_rules('kz0', CID, '10.88.0.2', mappings)) + '\n',
            text)
        self.assertIn('fib daddr type local tcp dport 8080 dnat ip to '
                      '10.88.0.2:80 comment "kz:kz0:%s"' % CID, text)
        self.run.reset_mock()
        self.run.return_value = (1, '', 'Error: syntax')
        self.assertRaises(libnft.NftError, linux_net.nat_publish, 'kz0',
                          '10.88.0.0/16', CID, '10.88.0.2', [])

    def test_nat_unpublish_deletes_only_that_container(self):
        self.list.return_value = [('prerouting', 4, 'kz:kz0:' + CID),
                                  ('postrouting', 6, 'kz-br:kz0'),
                                  ('output', 7, 'kz:kz0:' + OTHER)]
        self.assertEqual(1, linux_net.nat_unpublish('kz0', CID))
        self.run.assert_called_once_with(
            'delete rule inet kata_zun prerouting handle 4\n')
        self.run.reset_mock()
        self.list.return_value = []
        self.assertEqual(0, linux_net.nat_unpublish('kz0', CID))
        self.run.assert_not_called()
        # A lease of a bridge configured before: its rules can go.
        self.assertEqual(0, linux_net.nat_unpublish('kzold', CID))
        for bad in (('eth0', CID), ('kz0', 'x'), ('kz0', CID + ' x'),
                    ('kz0"; flush ruleset; #', CID), ('kz0', None)):
            self.assertRaises(ValueError, linux_net.nat_unpublish, *bad)

    def test_everything_is_an_entrypoint(self):
        ctx = kata_zun.privsep.sys_admin_pctxt
        for name in ENTRYPOINTS:
            self.assertTrue(ctx.is_entrypoint(getattr(linux_net, name)),
                            name)


class HostileCallerTestCase(_PrivBase):
    """A compromised unprivileged caller calls the privileged functions
    directly. Whatever it passes, nothing outside table inet kata_zun,
    no other bridge and no address outside the configured subnet is
    touched: a ValueError, before any netlink, ioctl, sysfs or nftables
    call.
    """

    RULE = ('add rule inet kata_zun prerouting tcp dport 22 dnat ip to '
            '192.0.2.1:22 comment "kz:kz0:x"')
    HOSTILE_TEXT = (RULE, 'flush ruleset', 'add table ip evil',
                    'kz0"; flush ruleset; #', '10.88.0.2 accept',
                    '10.88.0.0/16 oifname "eth0" accept')

    def setUp(self):
        # Both bridges exist (made before os.open is mocked).
        self.sys_net = self.useFixture(fixtures.TempDir()).path
        for bridge in ('kz0', 'kzother'):
            os.makedirs(os.path.join(self.sys_net, bridge, 'bridge'))
        super().setUp()
        self.useFixture(fixtures.MockPatchObject(linux_net, 'SYS_NET',
                                                 self.sys_net))
        self.useFixture(fixtures.MockPatch('socket.if_nametoindex',
                                           return_value=7))

    def _refused(self, func, *args, **kwargs):
        self.assertRaises(ValueError, getattr(linux_net, func), *args,
                          **kwargs)
        self._untouched()
        self.list.assert_not_called()

    def test_no_entrypoint_takes_rule_text(self):
        # Every entrypoint, every position, every arity: no text given
        # reaches nftables (main's nft_apply ran it).
        for name in dir(linux_net):
            func = getattr(linux_net, name)
            if not kata_zun.privsep.sys_admin_pctxt.is_entrypoint(func):
                continue
            for text in self.HOSTILE_TEXT:
                for arity in range(1, 6):
                    for pos in range(arity):
                        args = ['kz0'] * arity
                        args[pos] = text
                        try:
                            func(*args)
                        except (ValueError, TypeError):
                            pass
                        self.run.assert_not_called()

    def test_no_other_bridge(self):
        self._refused('ensure_bridge', 'kzother', '10.88.0.1', 16, 1500)
        self._refused('create_tap', TAP, 'kzother', 1500)
        self._refused('delete_link', 'kzother')
        self._refused('nat_publish', 'kzother', '10.88.0.0/16', CID,
                      '10.88.0.2', [])

    def test_no_other_subnet(self):
        self._refused('ensure_bridge', 'kz0', '10.99.0.1', 16, 1500)
        self._refused('ensure_bridge', 'kz0', '10.88.0.9', 16, 1500)
        self._refused('ensure_bridge', 'kz0', '10.88.0.1', 24, 1500)
        for subnet in ('10.0.0.0/8', '10.88.0.0/24', '0.0.0.0/0', None,
                       '10.88.0.0/16 accept'):
            self._refused('nat_publish', 'kz0', subnet, CID, '10.88.0.2',
                          [])

    def test_no_forward_to_a_non_guest_address(self):
        for guest in ('192.0.2.1', '127.0.0.1', '10.88.0.0', '10.88.0.1',
                      '10.88.255.255', '8.8.8.8', '10.88.0.2:22', None,
                      '10.88.0.2 ; flush ruleset'):
            self._refused('nat_publish', 'kz0', '10.88.0.0/16', CID, guest,
                          [])

    def test_no_hostile_mapping(self):
        good = {'proto': 'tcp', 'host_ip': '0.0.0.0', 'host_port': 8080,
                'container_port': 80}
        for change in ({'proto': 'icmp'}, {'proto': 'tcp dport 1 accept'},
                       {'host_ip': '10.88.0.7'},     # another guest's
                       {'host_ip': '224.0.0.1'},
                       {'host_ip': '255.255.255.255'},
                       {'host_ip': '0.0.0.0 accept'},
                       {'host_ip': '1.2.3.4/0'},
                       {'host_port': 0}, {'host_port': 65536},
                       {'host_port': '80; flush ruleset'},
                       {'host_port': True}, {'container_port': -1},
                       {'container_port': 1.5}, {'extra': 1}):
            mapping = dict(good, **change)
            self._refused('nat_publish', 'kz0', '10.88.0.0/16', CID,
                          '10.88.0.2', [mapping])
        for mappings in ('8080:80', [['tcp', '0.0.0.0', 1, 1]],
                         [good] * (linux_net.MAX_MAPPINGS + 1), None):
            self._refused('nat_publish', 'kz0', '10.88.0.0/16', CID,
                          '10.88.0.2', mappings)

    def test_no_hostile_container_id(self):
        for cid in ('x', CID + '"', CID[:-1] + ' ', 'kz0', '', None,
                    CID + '" accept comment "'):
            self._refused('nat_publish', 'kz0', '10.88.0.0/16', cid,
                          '10.88.0.2', [])

    def test_unusable_configuration_refused(self):
        self.cfg.config(bridge='eth0', group='kata_network')
        self._refused('ensure_bridge', 'eth0', '10.88.0.1', 16, 1500)
        self.cfg.config(bridge='kz0', subnet='0.0.0.0/0',
                        group='kata_network')
        self._refused('nat_publish', 'kz0', '0.0.0.0/0', CID, '10.88.0.2',
                      [])


class ImportTestCase(base.BaseTestCase):

    def test_no_eventlet_unless_the_process_has_it(self):
        code = ('import sys, kata_zun.privsep; '
                'bad = [m for m in sys.modules if m.startswith("eventlet")]; '
                'import eventlet; '          # still importable afterwards
                'print(bad); sys.exit(1 if bad else 0)')
        proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', code],
                              capture_output=True, text=True)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
