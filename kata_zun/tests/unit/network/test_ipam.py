import os

import fixtures
from oslotest import base

from kata_zun.network import base as net_base
from kata_zun.network import ipam

CID1 = 'a' * 64
CID2 = 'b' * 64
CID3 = 'c' * 64


class IpamTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def _ipam(self, subnet='10.213.0.0/29'):
        return ipam.Ipam(self.dir, 'kzt0', subnet)

    def test_names(self):
        self.assertEqual('kzt0123456789ab', ipam.tap_name('0123456789ab' +
                                                          'f' * 52))
        self.assertEqual(15, len(ipam.tap_name(CID1)))
        self.assertEqual('02:6b:0a:58:00:02', ipam.mac_for('10.88.0.2'))

    def test_allocate_persist_no_duplicates_after_restart(self):
        leases = self._ipam()
        data = leases.load()
        first = leases.allocate(data, CID1, 'one')
        self.assertEqual('10.213.0.2', first['ip'])   # .1 is the bridge
        self.assertEqual(ipam.tap_name(CID1), first['tap'])
        self.assertEqual(first, leases.allocate(data, CID1))
        leases.save(data)
        # A new process (new object) reads the file: no duplicate.
        again = self._ipam()
        data = again.load()
        self.assertEqual('10.213.0.3', again.allocate(data, CID2)['ip'])
        again.save(data)
        self.assertEqual({CID1, CID2},
                         set(self._ipam().load()['leases']))

    def test_round_robin_and_full(self):
        leases = self._ipam()            # /29: .2 to .6 for containers
        data = leases.load()
        ids = ['%012x' % i + '0' * 52 for i in range(1, 6)]
        got = [leases.allocate(data, cid)['ip'] for cid in ids]
        self.assertEqual(['10.213.0.%d' % i for i in range(2, 7)], got)
        self.assertRaises(net_base.NetworkError, leases.allocate, data,
                          '%012x' % 99 + '0' * 52)
        self.assertIsNotNone(leases.release(data, ids[1]))   # .3 free
        self.assertIsNone(leases.release(data, ids[1]))
        self.assertEqual('10.213.0.3',
                         leases.allocate(data, '%012x' % 99 + '0' * 52)['ip'])
        leases.release(data, ids[3])                          # .5 free
        leases.release(data, ids[0])                          # .2 free
        # Round robin: after .3 comes .5, not the lower .2.
        self.assertEqual('10.213.0.5',
                         leases.allocate(data, '%012x' % 98 + '0' * 52)['ip'])

    def test_subnet_change_refused_while_leased(self):
        leases = self._ipam()
        data = leases.load()
        leases.allocate(data, CID1)
        leases.save(data)
        other = self._ipam('10.214.0.0/24')
        exc = self.assertRaises(net_base.NetworkError, other.load)
        self.assertIn('aaaaaaaaaaaa', str(exc))
        data = leases.load()
        leases.release(data, CID1)
        leases.save(data)
        self.assertEqual('10.214.0.0/24', other.load()['subnet'])

    def test_tap_name_clash_refused(self):
        leases = self._ipam()
        data = leases.load()
        leases.allocate(data, '0123456789ab' + '0' * 52)
        self.assertRaises(net_base.NetworkError, leases.allocate, data,
                          '0123456789ab' + '1' * 52)

    def test_lock_and_files(self):
        with ipam.locked(os.path.join(self.dir, 'net')):
            self.assertTrue(os.path.exists(os.path.join(self.dir, 'net',
                                                        '.lock')))
        leases = ipam.Ipam(os.path.join(self.dir, 'net'), 'kzb1',
                           '10.1.0.0/24')
        data = leases.load()
        leases.allocate(data, CID3)
        leases.save(data)
        files = ipam.lease_files(os.path.join(self.dir, 'net'))
        self.assertEqual([leases.path], files)
        loaded = ipam.Ipam.from_file(files[0])
        self.assertEqual(('kzb1', '10.1.0.1'),
                         (loaded.bridge, loaded.gateway))
