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
    cfg.IntOpt('shim_start_timeout', default=60, min=1,
               help='Seconds to wait for a shim to boot its VM and report '
                    'the container created.'),
    cfg.IntOpt('stop_timeout', default=10, min=0,
               help='Default seconds between SIGTERM and SIGKILL on stop.'),
    cfg.IntOpt('log_max_bytes', default=100 * 1024 * 1024, min=4096,
               help='Size at which a container log file is rotated (one '
                    'rotated file is kept).'),
    cfg.IntOpt('writable_layer_mb', default=2048, min=16,
               help='Size of the sparse per-container writable layer.'),
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
