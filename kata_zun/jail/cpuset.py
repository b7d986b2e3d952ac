"""Dedicated host CPUs and NUMA nodes for one VM (``cpuset``).

Zun's ``cpu_policy=dedicated`` claims host CPUs and a NUMA node for a
container; the standalone CLI takes Docker's ``--cpuset-cpus`` and
``--cpuset-mems``. :func:`plan` checks such a request against the host's
topology and completes it: without nodes given, the VM's memory goes to
the nodes of its CPUs. The plan is enforced on the host, never by the
guest: QEMU starts with that CPU affinity (all its threads inherit it)
and, jailed, in a cgroup whose ``cpuset`` holds the CPUs and nodes (QEMU
cannot widen it, and its memory is allocated on those nodes only).
"""

import os
import re

from kata_zun import exception

SYS_CPU = '/sys/devices/system/cpu'
SYS_NODE = '/sys/devices/system/node'
MAX_CPU = 4095
MAX_LIST_CHARS = 4096
_LIST_RE = re.compile(r'^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$')


def _invalid(why):
    return exception.InvalidInput(reason='cpuset: %s' % why)


def parse_list(text, what='CPU list'):
    """Parse a kernel-style list (``0-3,8``).

    :param text: the list as a string, or an iterable of ints.
    :param what: what it is, for error messages.
    :returns: a sorted tuple of distinct ints.
    :raises: InvalidInput
    """
    if not isinstance(text, str):
        try:
            items = list(text)
        except TypeError:
            raise _invalid('bad %s %r' % (what, text))
        if len(items) > MAX_CPU + 1 or any(
                isinstance(i, bool) or not isinstance(i, int) or
                not 0 <= i <= MAX_CPU for i in items):
            raise _invalid('bad %s %r' % (what, text))
        items = sorted(set(items))
        return tuple(items)
    text = text.strip()
    if len(text) > MAX_LIST_CHARS or not _LIST_RE.fullmatch(text):
        raise _invalid('bad %s %r (want e.g. 0-3,8)' % (what, text[:64]))
    found = set()
    for part in text.split(','):
        first, _, last = part.partition('-')
        first, last = int(first), int(last or first)
        if first > last or last > MAX_CPU:
            raise _invalid('bad range %r in %s' % (part, what))
        found.update(range(first, last + 1))
    return tuple(sorted(found))


def format_list(items):
    """:returns: the kernel-style list of ints (``0-3,8``)."""
    items = sorted(set(items))
    parts = []
    start = prev = None
    for i in items + [None]:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append('%d' % start if start == prev
                         else '%d-%d' % (start, prev))
        start = prev = i
    return ','.join(parts)


class Topology(object):
    """The host's online CPUs and its NUMA nodes' CPUs."""

    def __init__(self, cpus, nodes):
        """:param cpus: the online CPU ids.
        :param nodes: {node id: CPU ids}; empty for a host without NUMA.
        """
        self.cpus = tuple(sorted(cpus))
        self.nodes = {int(n): tuple(sorted(c)) for n, c in nodes.items()}

    def node_of(self, cpu):
        for node, cpus in self.nodes.items():
            if cpu in cpus:
                return node
        return None


def _read(path):
    with open(path) as f:
        return f.read(MAX_LIST_CHARS).strip()


def read_topology(cpu_dir=SYS_CPU, node_dir=SYS_NODE):
    """:returns: this host's :class:`Topology`.
    :raises: InvalidInput if /sys cannot tell.
    """
    try:
        cpus = parse_list(_read(os.path.join(cpu_dir, 'online')),
                          'online CPU list')
    except OSError as exc:
        raise _invalid('cannot read the host CPUs: %s' % exc)
    nodes = {}
    try:
        names = os.listdir(node_dir)
    except OSError:
        names = []
    for name in names:
        if not re.fullmatch(r'node[0-9]+', name):
            continue
        try:
            text = _read(os.path.join(node_dir, name, 'cpulist'))
        except OSError:
            continue
        nodes[int(name[4:])] = parse_list(text) if text else ()
    return Topology(cpus, nodes)


def plan(cpus, mems=None, topology=None):
    """Check a pinning request and complete it.

    :param cpus: host CPU ids (a list string or ints); must be online.
    :param mems: NUMA node ids, or None: the nodes of ``cpus``.
    :param topology: a :class:`Topology` (default: this host's).
    :returns: (cpus, mems) as sorted tuples; mems is () on a host
        without NUMA information.
    :raises: InvalidInput
    """
    topology = topology or read_topology()
    cpus = parse_list(cpus)
    if not cpus:
        raise _invalid('no CPU given')
    offline = [c for c in cpus if c not in topology.cpus]
    if offline:
        raise _invalid('CPUs %s are not online on this host (online: %s)'
                       % (format_list(offline),
                          format_list(topology.cpus)))
    if mems is None or mems == '':
        mems = tuple(sorted({topology.node_of(c) for c in cpus} - {None}))
    else:
        mems = parse_list(mems, 'NUMA node list')
        if not mems:
            raise _invalid('no NUMA node given')
        missing = [m for m in mems if m not in topology.nodes]
        if missing:
            raise _invalid('NUMA nodes %s do not exist on this host '
                           '(nodes: %s)' % (format_list(missing),
                                            format_list(topology.nodes)))
    return cpus, mems


def needs_memory_binding(mems, topology=None):
    """Whether ``mems`` restricts anything on this host (it has NUMA
    nodes outside them).

    :returns: bool.
    """
    topology = topology or read_topology()
    return bool(mems) and bool(set(topology.nodes) - set(mems))
