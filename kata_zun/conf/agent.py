from oslo_config import cfg

from kata_zun.agent import protocol

GROUP = cfg.OptGroup('kata_agent', title='Guest agent link options')

OPTS = [
    cfg.IntOpt('connect_timeout', default=30, min=1,
               help='While a sandbox boots and its container is set up, '
                    'the seconds over which its QEMU must get at least 2 '
                    'percent of a CPU (else it makes no progress). The '
                    'wait itself has no fixed length: on a busy host a '
                    'boot takes longer and is still awaited.'),
    cfg.FloatOpt('boot_cpu_budget', default=120.0, min=1.0,
                 help='CPU seconds a sandbox\'s QEMU may use from its '
                      'start until the container is set up (a boot needs '
                      'a few under TCG): a guest that spins instead of '
                      'answering is stopped.'),
    cfg.IntOpt('request_timeout', default=30, min=1,
               help='Seconds a control request to the agent may take.'),
    cfg.IntOpt('max_frame_bytes', default=1024 * 1024,
               # The guest agent sends a process's output in frames of
               # up to this size: a smaller limit would close the link
               # (and lose the container) on the first large output.
               min=protocol.MAX_AGENT_STREAM_FRAME,
               max=16 * 1024 * 1024,
               help='Largest frame accepted from the guest. A bigger frame '
                    'closes the link. At least %d bytes: the guest agent '
                    'sends process output in frames of up to %d KiB plus '
                    'a %d-byte process handle.'
                    % (protocol.MAX_AGENT_STREAM_FRAME,
                       protocol.OUTPUT_READ // 1024, protocol.HANDLE.size)),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
