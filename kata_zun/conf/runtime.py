from oslo_config import cfg

GROUP = cfg.OptGroup('kata', title='kata-zun runtime options')

OPTS = [
    cfg.StrOpt('state_path', default='/var/lib/kata-zun',
               help='Directory for state that must survive restarts: '
                    'sandbox records, writable layers, images, logs and '
                    'built guest assets.'),
    cfg.StrOpt('run_path', default='/run/kata-zun',
               help='Directory for runtime sockets (shim API, QMP, agent '
                    'link). Paths must stay short: unix socket paths are '
                    'limited to 107 bytes.'),
    cfg.IntOpt('shim_start_timeout', default=900, min=1,
               help='Last-resort bound, in seconds, on waiting for a shim '
                    'to boot its VM and report the container created. '
                    'The shim itself gives up on a VM that stops making '
                    'progress ([kata_agent] connect_timeout and '
                    'boot_cpu_budget), however long a busy host makes a '
                    'boot; this only bounds a shim that hangs.'),
    cfg.BoolOpt('shim_forkserver', default=True,
                help='Start shims by forking them from a server that has '
                     'imported their code (one per run_path, started on '
                     'the first shim start, exiting after 10 idle '
                     'minutes or when the installed code changes), '
                     'instead of starting a new Python each time: the '
                     'shims then share that code\'s memory, and a start '
                     'saves the imports\' CPU time. Each shim still gets '
                     'its starter\'s command line, environment, umask, '
                     'resource limits, working directory and output. '
                     'When the server cannot serve a start, the shim is '
                     'started on its own.'),
    cfg.BoolOpt('memory_admission', default=True,
                help='Refuse a sandbox start that would not fit in the '
                     'host\'s available memory (MemAvailable, less '
                     'host_memory_reserve_mb and what the starts in '
                     'flight may still touch) with an "insufficient '
                     'resources" error, instead of letting it boot and '
                     'the host run out of memory. A start that fits once '
                     'the starts in flight are done waits for them.'),
    cfg.IntOpt('host_memory_reserve_mb', default=512, min=0,
               help='Host memory, in MiB, that sandbox starts leave free '
                    'for the host itself (like Nova\'s '
                    'reserved_host_memory_mb); see memory_admission.'),
    cfg.IntOpt('stop_timeout', default=10, min=0,
               help='Default seconds between SIGTERM and SIGKILL on stop.'),
    cfg.IntOpt('console_log_max_bytes', default=1024 * 1024, min=4096,
               help='Most bytes of guest console output kept per sandbox '
                    '(console.log, then console.log.1 with the output '
                    'before it): a guest cannot fill the host disk.'),
    cfg.IntOpt('events_log_max_bytes', default=1024 * 1024, min=4096,
               help='Size at which the host\'s event log (events.log in '
                    'state_path, what "kata-zun events" reads) is '
                    'rotated; one rotated file is kept, so the log takes '
                    'at most twice this on disk.'),
    cfg.IntOpt('log_max_bytes', default=100 * 1024 * 1024, min=4096,
               help='Size at which a container log file is rotated (one '
                    'rotated file is kept).'),
    cfg.IntOpt('shim_log_max_bytes', default=1024 * 1024, min=4096,
               help='Size at which a sandbox shim\'s own log (shim.log) '
                    'is rotated; one rotated file is kept, so a shim '
                    'takes at most twice this on disk for its log.'),
    cfg.IntOpt('log_read_max_bytes', default=16 * 1024 * 1024, min=4096,
               help='Most bytes of container output one logs request '
                    'returns through Zun (zun-compute holds them in '
                    'memory): the newest output is returned, preceded '
                    'by a line telling that older output was left out.'),
    cfg.IntOpt('archive_max_bytes', default=256 * 1024 * 1024,
               min=1024 * 1024,
               help='Largest archive a copy out of a container (Zun\'s '
                    'get_archive) returns; zun-compute holds it in '
                    'memory. A bigger one is refused with an error.'),
    cfg.IntOpt('writable_layer_mb', default=2048, min=16,
               help='Size of a container\'s sparse writable layer (its '
                    'root file system inside the VM) when none is asked '
                    'for (`kata-zun run --storage-opt size=SIZE`). '
                    'Containers made by Zun always ask: `--disk`, or '
                    'Zun\'s [DEFAULT] default_disk.'),
    cfg.IntOpt('pids_limit', default=4096, min=0, max=4194304,
               help='Default number of processes (and threads) a '
                    'container may have, enforced in its cgroup inside '
                    'the guest; 0 means no limit. `kata-zun run '
                    '--pids-limit` overrides it.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
