"""Pinning plans against host topologies (fake ones: this machine has a
single NUMA node; test_jail pins a real VM).
"""

import os

import fixtures
from oslotest import base

from kata_zun import exception
from kata_zun.jail import cpuset

# Two nodes of four CPUs each; CPU 7 offline.
TWO_NODES = cpuset.Topology(range(7), {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)})


class ListTestCase(base.BaseTestCase):

    def test_parse_and_format(self):
        self.assertEqual((0, 1, 2, 3, 8), cpuset.parse_list('0-3,8'))
        self.assertEqual((1, 3), cpuset.parse_list([3, 1, 3]))
        self.assertEqual('0-3,8,10-11',
                         cpuset.format_list({0, 1, 2, 3, 8, 10, 11}))
        self.assertEqual('5', cpuset.format_list([5]))
        self.assertEqual('', cpuset.format_list([]))

    def test_hostile_lists(self):
        for bad in ('3-1', '0-99999', '1,,2', '-1', 'a', '0 1', '1-',
                    ','.join(['1'] * 3000), [True], ['x'], [-1], [5000],
                    None):
            self.assertRaises(exception.InvalidInput, cpuset.parse_list,
                              bad)


class PlanTestCase(base.BaseTestCase):

    def test_nodes_follow_the_cpus(self):
        self.assertEqual(((4, 5), (1,)), cpuset.plan('4-5', None,
                                                     TWO_NODES))
        self.assertEqual(((3, 4), (0, 1)), cpuset.plan([3, 4], None,
                                                       TWO_NODES))

    def test_nodes_given(self):
        self.assertEqual(((0,), (1,)), cpuset.plan('0', '1', TWO_NODES))

    def test_refusals(self):
        for cpus, mems in (('7', None), ('9', None), ('0', '2'), ('', None),
                           ('0', [])):
            self.assertRaises(exception.InvalidInput, cpuset.plan, cpus,
                              mems, TWO_NODES)
        exc = self.assertRaises(exception.InvalidInput, cpuset.plan, '6-7',
                                None, TWO_NODES)
        self.assertIn('7 are not online', str(exc))

    def test_memory_binding_only_where_several_nodes(self):
        self.assertTrue(cpuset.needs_memory_binding((1,), TWO_NODES))
        self.assertFalse(cpuset.needs_memory_binding((0, 1), TWO_NODES))
        one = cpuset.Topology((0, 1), {0: (0, 1)})
        self.assertFalse(cpuset.needs_memory_binding((0,), one))
        self.assertFalse(cpuset.needs_memory_binding((), TWO_NODES))

    def test_read_topology(self):
        root = self.useFixture(fixtures.TempDir()).path
        cpu, node = os.path.join(root, 'cpu'), os.path.join(root, 'node')
        for path, text in (('cpu/online', '0-7\n'),
                           ('node/node0/cpulist', '0-3\n'),
                           ('node/node1/cpulist', '4-7\n'),
                           ('node/possible', '0-1\n')):
            os.makedirs(os.path.dirname(os.path.join(root, path)),
                        exist_ok=True)
            with open(os.path.join(root, path), 'w') as f:
                f.write(text)
        topology = cpuset.read_topology(cpu, node)
        self.assertEqual(tuple(range(8)), topology.cpus)
        self.assertEqual({0: (0, 1, 2, 3), 1: (4, 5, 6, 7)},
                         topology.nodes)
        self.assertEqual(1, topology.node_of(6))
