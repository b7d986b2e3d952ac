from oslo_config import cfg

GROUP = cfg.OptGroup('kata_jail', title='What confines QEMU on the host')

OPTS = [
    cfg.BoolOpt('enabled', default=True,
                help='Run each sandbox\'s QEMU as a user of its own, '
                     'without capabilities, in its own mount, network, '
                     'IPC and UTS namespaces whose root holds only what '
                     'QEMU must read, with its disks, taps and sockets '
                     'passed as file descriptors, in a host cgroup with '
                     'memory, CPU and pids limits. Needs root. Turning it '
                     'off leaves QEMU with the privileges of the shim.'),
    cfg.IntOpt('uid_range_start', default=3000000, min=1000,
               max=2 ** 31 - 1,
               help='First uid (and gid) handed to sandbox QEMUs. Every '
                    'running sandbox gets one uid of the range for itself: '
                    'keep the range clear of real users and of subordinate '
                    'uid ranges.'),
    cfg.IntOpt('uid_range_size', default=65536, min=1, max=2 ** 24,
               help='How many uids the range holds: the most sandboxes '
                    'that can run on this host at once.'),
    cfg.StrOpt('lease_dir', default='/run/kata-zun-jail/uids',
               help='Where the uids of running sandboxes are leased. One '
                    'per host, shared by everything that starts sandboxes '
                    'there (the CLI, zun-compute), whatever their state '
                    'paths; on a tmpfs, so leases end with the boot.'),
    cfg.StrOpt('cgroup_parent', default='kata_zun',
               help='cgroup (relative to each hierarchy root) under which '
                    'every sandbox gets its own cgroup. It sits outside '
                    'the service cgroup of zun-compute, so stopping or '
                    'restarting zun-compute never kills a sandbox.'),
    cfg.IntOpt('memory_overhead_mb', default=256, min=32,
               help='Host memory QEMU may use on top of the guest RAM '
                    '(its own heap, device state and, under TCG, the '
                    'translation cache; see tcg_cache_mb). The sandbox '
                    'cgroup\'s memory limit is guest RAM plus this.'),
    cfg.IntOpt('tcg_cache_mb', default=64, min=16,
               help='Size of the TCG translation cache (QEMU\'s default '
                    'is 1 GiB per VM, which no memory limit could allow).'),
    cfg.BoolOpt('share_template_ram', default=True,
                help='Sandboxes restored from a VM template, jailed or '
                     'not, map the template\'s RAM as a sealed memfd '
                     'that no one can change (kept by one small holder '
                     'process per template), so that clones share its '
                     'pages until they write them; a jail then has a '
                     'read-only /proc showing only its own processes, '
                     'through which QEMU reopens the memfd. With false, '
                     'each clone loads the whole RAM into private memory '
                     'instead (no /proc, nothing shared, about as much '
                     'host memory as a cold boot). A clone never maps '
                     'the template\'s RAM file itself: QEMU would punch '
                     'holes in it for its guest\'s free page reports.'),
    cfg.IntOpt('pids_max', default=256, min=32,
               help='Threads and processes a sandbox\'s QEMU may have.'),
    cfg.ListOpt('qemu_data_dirs',
                default=['/usr/share/qemu', '/usr/share/seabios',
                         '/usr/lib/x86_64-linux-gnu/qemu'],
                help='Directories QEMU reads besides its libraries '
                     '(firmware, modules); each that exists is bound '
                     'read-only into the jail.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
