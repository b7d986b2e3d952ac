"""What a user may ask of a container, checked before anything is made.

The CLI, the Zun driver and pods all create containers from what a user
typed or sent through Zun's API: every field is bounded and checked here,
before a record, a disk or a VM exists, so that a refusal leaves
nothing behind.
"""

import os
import re

from kata_zun import exception

ENV_RE = re.compile(r'^[^=\0]+=[^\0]*$')
HOSTNAME_RE = re.compile(r'^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})\Z')
RESTART_POLICIES = ('no', 'on-failure', 'always', 'unless-stopped')
# The smallest memory limit a container may have, in MiB.
MIN_MEMORY_MB = 6
# The most vCPUs a VM may have, whatever the host has.
MAX_VCPUS = 64


def parse_restart_policy(value):
    """Parse Docker's ``--restart``: no, always, unless-stopped,
    on-failure[:N].

    :returns: {'name': ..., 'max_retries': N}
    :raises: InvalidInput
    """
    name, sep, count = (value or 'no').partition(':')
    if name not in RESTART_POLICIES or (sep and (
            name != 'on-failure' or not count.isdigit())):
        raise exception.InvalidInput(reason='invalid restart policy %r '
                                     '(no, always, unless-stopped, '
                                     'on-failure[:N])' % value)
    return {'name': name, 'max_retries': int(count or 0)}


# What a user may put in one container's record: far above real use,
# far below what would make records, frames or the guest's execve choke
# (Linux allows 2 MiB of argv and environment together).
MAX_ENV_BYTES = 512 * 1024
MAX_ARGV_BYTES = 512 * 1024
MAX_LABEL_BYTES = 64 * 1024


def cpuset_plan(cpus, mems):
    """The (CPUs, nodes) plan of a pinning request, or None.

    :raises: InvalidInput
    """
    if cpus in (None, '', (), []) and mems in (None, '', (), []):
        return None
    from kata_zun.jail import cpuset
    topology = cpuset.read_topology()
    if cpus in (None, '', (), []):
        cpus = topology.cpus
    return cpuset.plan(cpus, mems or None, topology)


def check_sizes(what, items, limit):
    """Refuse ``items`` whose encoded size, all together, is over
    ``limit`` bytes.

    :raises: InvalidInput
    """
    total = 0
    for item in items:
        total += len(str(item).encode('utf-8', 'surrogatepass')) + 1
    if total > limit:
        raise exception.InvalidInput(reason='%s too large: %d bytes (at '
                                     'most %d)' % (what, total, limit))


def host_cpus():
    return os.cpu_count() or 1


def host_memory_mb():
    """:returns: the host's memory in MiB, or None if unknown."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_limits(memory_mb, cpus):
    """Check a memory limit (MiB) and a CPU limit; None is no change.

    A VM with more vCPUs than the host has only competes with itself
    (and under TCG may never boot).

    :raises: InvalidInput
    """
    if memory_mb is not None and memory_mb < MIN_MEMORY_MB:
        raise exception.InvalidInput(reason='memory limit must be at '
                                     'least %d MiB' % MIN_MEMORY_MB)
    most = min(MAX_VCPUS, host_cpus())
    if cpus is not None and not 0 < cpus <= most:
        raise exception.InvalidInput(
            reason='cpus must be in (0, %d]: this host has %d CPUs'
            % (most, host_cpus()))


def check_env(env):
    """:raises: InvalidInput unless every entry is ``KEY=VALUE``."""
    for item in env:
        if not ENV_RE.match(item):
            raise exception.InvalidInput(reason='invalid environment '
                                         'entry %r (want KEY=VALUE)' % item)


def command_line(image_config, command, entrypoint):
    """The argv a container runs: Docker's rules for Entrypoint and Cmd.

    :param entrypoint: replaces the image's Entrypoint (an empty list
        clears it; None keeps it); ``command`` then replaces its Cmd.
    :raises: InvalidInput when nothing is left to run.
    """
    if entrypoint is not None:
        ep = list(entrypoint)
        cmd = list(command) if command else []
    else:
        ep = list(image_config.get('Entrypoint') or [])
        cmd = (list(command) if command
               else list(image_config.get('Cmd') or []))
    argv = ep + cmd
    if not argv:
        raise exception.InvalidInput(reason='no command specified')
    return argv


def merge_env(base, extra):
    """:returns: ``base`` with ``extra``'s entries added, a key of
        ``extra`` replacing the same key of ``base`` in its place.
    """
    merged = {}
    order = []
    for item in list(base) + list(extra):
        key = item.partition('=')[0]
        if key not in merged:
            order.append(key)
        merged[key] = item
    return [merged[k] for k in order]
