from oslo_config import cfg

GROUP = cfg.OptGroup('kata_agent', title='Guest agent link options')

OPTS = [
    cfg.IntOpt('connect_timeout', default=30, min=1,
               help='Seconds from QEMU start until the agent must answer '
                    'the version handshake.'),
    cfg.IntOpt('request_timeout', default=30, min=1,
               help='Seconds a control request to the agent may take.'),
    cfg.IntOpt('max_frame_bytes', default=1024 * 1024, min=4096,
               max=16 * 1024 * 1024,
               help='Largest frame accepted from the guest. A bigger frame '
                    'closes the link.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
