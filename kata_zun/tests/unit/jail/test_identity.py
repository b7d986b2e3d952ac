"""uid leases: never two sandboxes on one uid, never a uid in use."""

import json
import os

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.jail import identity


class LeaseTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).join('uids')
        self.running = set()
        self.useFixture(fixtures.MockPatch(
            'kata_zun.jail.identity.uids_in_use',
            side_effect=lambda: set(self.running)))

    def test_lowest_free_uid_each_time(self):
        self.assertEqual(5000, identity.lease(self.dir, 'a', 5000, 3))
        self.assertEqual(5001, identity.lease(self.dir, 'b', 5000, 3))
        identity.release(self.dir, 5000, 'a')
        self.assertEqual(5000, identity.lease(self.dir, 'c', 5000, 3))
        self.assertEqual(0o700, os.stat(self.dir).st_mode & 0o777)

    def test_exhausted_range_is_a_clear_error(self):
        identity.lease(self.dir, 'a', 5000, 2)
        identity.lease(self.dir, 'b', 5000, 2)
        exc = self.assertRaises(exception.JailError, identity.lease,
                                self.dir, 'c', 5000, 2)
        self.assertIn('no free uid', str(exc))

    def test_a_uid_some_process_runs_as_is_skipped(self):
        # Another user's process (or a QEMU whose lease vanished).
        self.running = {5000}
        self.assertEqual(5001, identity.lease(self.dir, 'a', 5000, 3))

    def test_stale_lease_is_taken_over(self):
        # A shim that died: its pid runs no more (or is another process).
        with self._mkdir_open('5000') as f:
            json.dump({'sandbox': 'dead', 'pid': 2 ** 22 + 7,
                       'started': 1, 'boot_id': 'x'}, f)
        self.assertEqual(5000, identity.lease(self.dir, 'a', 5000, 3))

    def test_live_lease_is_respected(self):
        identity.lease(self.dir, 'a', 5000, 3)          # held by us
        self.assertEqual(5001, identity.lease(self.dir, 'b', 5000, 3))

    def test_garbage_lease_files_are_stale(self):
        self._mkdir_open('5000').close()
        with self._mkdir_open('5001') as f:
            f.write('x' * 100000)
        self.assertEqual(5000, identity.lease(self.dir, 'a', 5000, 3))
        self.assertEqual(5001, identity.lease(self.dir, 'b', 5000, 3))

    def test_a_lease_being_written_is_never_seen_half_written(self):
        # Regression: the lease was created empty (O_EXCL) and written
        # afterwards; a second shim leasing in between read it empty,
        # took it for stale, removed it and got the same uid.
        real_write = os.write
        other = []

        def write(fd, data):
            if not other:       # the first shim is about to write
                other.append(None)
                other[0] = identity.lease(self.dir, 'b', 5000, 3)
            return real_write(fd, data)
        with fixtures.MockPatchObject(identity.os, 'write', write):
            first = identity.lease(self.dir, 'a', 5000, 3)
        self.assertNotEqual(first, other[0])
        self.assertEqual({'a', 'b'}, {
            json.load(open(os.path.join(self.dir, str(uid))))['sandbox']
            for uid in (first, other[0])})
        self.assertEqual(sorted(str(u) for u in (first, other[0])),
                         sorted(os.listdir(self.dir)))

    def test_a_shim_killed_while_leasing_leaves_no_lease(self):
        # SIGKILL (or ENOSPC) between creating the lease and writing it:
        # no empty lease file is left for anyone to read.
        def write(fd, data):
            raise OSError(28, 'No space left on device')
        with fixtures.MockPatchObject(identity.os, 'write', write):
            self.assertRaises(OSError, identity.lease, self.dir, 'a',
                              5000, 3)
        self.assertEqual([], os.listdir(self.dir))
        self.assertEqual(5000, identity.lease(self.dir, 'b', 5000, 3))

    def _stale(self, uid):
        with self._mkdir_open(str(uid)) as f:
            json.dump({'sandbox': 'dead', 'pid': 2 ** 22 + 7,
                       'started': 1, 'boot_id': 'x'}, f)

    def _holders(self):
        return {name: json.load(open(os.path.join(self.dir, name)))[
            'sandbox'] for name in os.listdir(self.dir)}

    def test_two_takeovers_of_one_stale_lease_only_one_wins(self):
        # Regression: both judged the lease stale; the second one then
        # removed the lease the first had just published in its place,
        # published its own, and both sandboxes ran as one uid.
        self._stale(5000)
        real_alive = identity._holder_alive
        other = []

        def alive(lease):
            verdict = real_alive(lease)
            if not other and lease.get('sandbox') == 'dead':
                # 'a' has judged the lease stale: 'b' takes it over now.
                other.append(None)
                other[0] = identity.lease(self.dir, 'b', 5000, 3)
            return verdict
        with fixtures.MockPatchObject(identity, '_holder_alive', alive):
            first = identity.lease(self.dir, 'a', 5000, 3)
        self.assertNotEqual(first, other[0])
        self.assertEqual({str(first): 'a', str(other[0]): 'b'},
                         self._holders())

    def test_a_lease_replaced_before_the_lock_is_not_removed(self):
        # 'a' opened the stale lease; before it locked it, the lease was
        # released and 'b' leased the uid: 'a' must leave b's lease.
        self._stale(5000)
        real_flock = identity.fcntl.flock
        other = []

        def flock(fd, op):
            if not other:
                other.append(None)
                identity.release(self.dir, 5000, 'dead')
                other[0] = identity.lease(self.dir, 'b', 5000, 3)
            return real_flock(fd, op)
        with fixtures.MockPatchObject(identity.fcntl, 'flock', flock):
            first = identity.lease(self.dir, 'a', 5000, 3)
        self.assertEqual(5000, other[0])
        self.assertEqual(5001, first)
        self.assertEqual({'5000': 'b', '5001': 'a'}, self._holders())

    def test_release_only_by_its_holder(self):
        uid = identity.lease(self.dir, 'a', 5000, 3)
        identity.release(self.dir, uid, 'someone-else')
        self.assertTrue(os.path.exists(os.path.join(self.dir, str(uid))))
        identity.release(self.dir, uid, 'a')
        self.assertFalse(os.path.exists(os.path.join(self.dir, str(uid))))

    def _mkdir_open(self, name):
        os.makedirs(self.dir, exist_ok=True)
        return open(os.path.join(self.dir, name), 'w')


class UidsInUseTestCase(base.BaseTestCase):

    def test_reads_proc(self):
        self.assertIn(os.geteuid(), identity.uids_in_use())
