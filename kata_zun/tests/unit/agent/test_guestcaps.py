"""Capability masks, and confine() for real in a forked child."""

import ctypes
import os
import re

import fixtures
from oslotest import base

from kata_zun.agent import guestcaps
from kata_zun.tests import forked

DOCKER_DEFAULT = 0xA80425FB


def status_of_child(func):
    """Run ``func`` in a forked child, then read its /proc/self/status.

    :returns: {field: value} of the Cap*, NoNewPrivs and Seccomp lines.
    """
    def child():
        func(ctypes.CDLL(None, use_errno=True))
        with open('/proc/self/status', 'rb') as f:
            return f.read()
    code, data = forked.run(child)
    assert code == 0, data
    return dict(re.findall(r'^(Cap\w+|NoNewPrivs|Seccomp):\s*(\S+)$',
                           data.decode(), re.M))


class MaskTestCase(base.BaseTestCase):

    def test_docker_default_set(self):
        self.assertEqual(DOCKER_DEFAULT,
                         guestcaps.mask(guestcaps.DEFAULT_CAPS))
        self.assertEqual(14, len(set(guestcaps.DEFAULT_CAPS)))
        for name in ('SYS_ADMIN', 'SYS_MODULE', 'SYS_PTRACE', 'NET_ADMIN',
                     'SYS_RAWIO', 'SYS_TIME', 'DAC_READ_SEARCH', 'BPF'):
            self.assertNotIn(name, guestcaps.DEFAULT_CAPS)

    def test_numbers_match_this_hosts_kernel_headers(self):
        header = '/usr/include/linux/capability.h'
        if not os.path.exists(header):
            self.skipTest('no %s to compare with' % header)
        with open(header) as f:
            known = {m.group(1): int(m.group(2)) for m in
                     re.finditer(r'#define CAP_(\w+)\s+(\d+)\s*$', f.read(),
                                 re.M)}
        for name, number in guestcaps.CAPS.items():
            self.assertEqual(known[name], number, name)

    def test_bounding_set_is_cleared_whatever_the_kernel_knows(self):
        # Numbers past the kernel's last capability fail with EINVAL and
        # are skipped; none is left out below the interface's 64.
        self.assertEqual(64, guestcaps.CAP_LIMIT)
        self.assertLess(max(guestcaps.CAPS.values()), guestcaps.CAP_LIMIT)


class ConfineTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('capability sets can only be shown as root')

    def test_default(self):
        status = status_of_child(
            lambda libc: guestcaps.confine(libc, False))
        want = '%016x' % DOCKER_DEFAULT
        self.assertEqual({'CapInh': '0' * 16, 'CapPrm': want,
                          'CapEff': want, 'CapBnd': want,
                          'CapAmb': '0' * 16, 'NoNewPrivs': '1',
                          'Seccomp': '2'}, status)

    def test_extra_capability(self):
        status = status_of_child(
            lambda libc: guestcaps.confine(libc, False, ('SYS_ADMIN',)))
        want = '%016x' % (DOCKER_DEFAULT | 1 << 21)
        self.assertEqual(want, status['CapEff'])
        self.assertEqual(want, status['CapBnd'])

    def test_dropped_capabilities_do_not_come_back_after_setuid(self):
        def confine_then_nobody(libc):
            guestcaps.confine(libc, False)
            os.setgid(65534)
            os.setuid(65534)
        status = status_of_child(confine_then_nobody)
        self.assertEqual('0' * 16, status['CapEff'])
        self.assertEqual('0' * 16, status['CapPrm'])
        self.assertEqual('%016x' % DOCKER_DEFAULT, status['CapBnd'])

    def test_privileged_keeps_everything(self):
        mine = status_of_child(lambda libc: None)
        status = status_of_child(lambda libc: guestcaps.confine(libc, True))
        self.assertEqual(mine, status)
        self.assertEqual('0', status['Seccomp'])


class LastCapTestCase(base.BaseTestCase):

    def _file(self, text):
        path = os.path.join(self.useFixture(
            fixtures.TempDir()).path, 'cap_last_cap')
        with open(path, 'w') as f:
            f.write(text)
        return path

    def test_reads_the_kernels_value(self):
        self.assertEqual(40, guestcaps.last_cap(self._file('40\n')))

    def test_anything_else_means_every_number_of_the_interface(self):
        for text in ('', 'x', '-1', '64', '99999'):
            self.assertEqual(guestcaps.CAP_LIMIT - 1,
                             guestcaps.last_cap(self._file(text)), text)
        self.assertEqual(guestcaps.CAP_LIMIT - 1,
                         guestcaps.last_cap('/nonexistent/cap_last_cap'))

    def test_same_sets_when_only_the_kernels_caps_are_dropped(self):
        if os.geteuid() != 0:
            self.skipTest('capability sets can only be shown as root')
        last = guestcaps.last_cap()
        for extra in ((), ('SYS_ADMIN',)):
            self.assertEqual(
                status_of_child(
                    lambda libc: guestcaps.confine(libc, False, extra)),
                status_of_child(
                    lambda libc: guestcaps.confine(libc, False, extra,
                                                   last=last)))
