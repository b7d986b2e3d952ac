"""The only code of kata-zun that runs as root.

One oslo.privsep context, :data:`sys_admin_pctxt`, keeps CAP_NET_ADMIN
and nothing else: every operation it exports (:mod:`.linux_net`) talks
netlink or nftables in-process, writes a few sysctl files owned by uid 0
and never executes a program.

Who starts the daemon: :func:`start`. When the caller is root already
(the standalone CLI here) the daemon is forked (``Method.FORK``: no
interpreter start, no sudo); otherwise oslo.privsep runs
``sudo privsep-helper --privsep_context kata_zun.privsep.sys_admin_pctxt``
(``[kata_zun_sys_admin] helper_command`` overrides it). In an
eventlet-patched process (zun-compute) running as root, the venv's
``privsep-helper`` is spawned instead of forking (see :func:`_forkable`).

oslo.privsep imports eventlet when it can (for its green-thread
support): 0.2-0.27 s and a deprecation warning per CLI run. A process
that has not imported eventlet itself (the CLI, the shim) does not use
it, so eventlet is hidden while oslo.privsep is imported and it takes
its own "eventlet is not installed" path; a process that uses eventlet
(zun-compute) gets the normal import. This package is imported lazily
by the network code that needs it, never by the shim.
"""

import logging
import os
import sys
import warnings

from oslo_config import cfg


def _import_oslo_privsep():
    hide = 'eventlet' not in sys.modules
    if hide:
        sys.modules['eventlet'] = None      # "import eventlet" fails
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from oslo_privsep import capabilities
            from oslo_privsep import priv_context
    finally:
        if hide and sys.modules.get('eventlet', 0) is None:
            del sys.modules['eventlet']
    return capabilities, priv_context


caps, priv_context = _import_oslo_privsep()

LOGGER_NAME = 'kata_zun.privsep.daemon'

sys_admin_pctxt = priv_context.PrivContext(
    'kata_zun',
    cfg_section='kata_zun_sys_admin',
    pypath=__name__ + '.sys_admin_pctxt',
    capabilities=[caps.CAP_NET_ADMIN],
    logger_name=LOGGER_NAME,
)


def _forkable():
    """False in an eventlet-patched process (zun-compute): a forked daemon
    would keep the parent's green threads running (AMQP heartbeats on
    the parent's sockets: seen corrupting zun-compute's RabbitMQ
    connection).
    """
    if 'eventlet' not in sys.modules or sys.modules['eventlet'] is None:
        return True
    from eventlet import patcher
    return not patcher.is_monkey_patched('socket')


def _helper():
    path = os.path.join(os.path.dirname(sys.executable), 'privsep-helper')
    return path if os.path.exists(path) else 'privsep-helper'


def start(ctx=None):
    """Start the privileged daemon now unless it runs already.

    Call it before taking any file lock: a forked daemon inherits the
    caller's open files, and with them its flock()s.

    :param ctx: another library's PrivContext (os-vif's) to start the
                same way; default: ours.
    """
    ctx = ctx or sys_admin_pctxt
    if not ctx.client_mode or ctx.channel is not None:
        return
    if not cfg.CONF.debug and ctx is sys_admin_pctxt:
        # The daemon's start-up chatter is INFO: keep CLI output clean.
        logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    if os.geteuid() != 0:
        ctx.start(priv_context.Method.ROOTWRAP)
        return
    if not _forkable():
        # Root already: a fresh privsep-helper process, without sudo.
        if not ctx.conf.helper_command:
            cfg.CONF.set_override('helper_command', _helper(),
                                  group=ctx.cfg_section)
        ctx.start(priv_context.Method.ROOTWRAP)
        return
    parent = os.getpid()
    try:
        ctx.start(priv_context.Method.FORK)
    finally:
        if os.getpid() != parent:
            # We are the forked daemon. It should end with os._exit() when
            # its channel closes, but with debug logging on, its last log
            # line goes to the closed channel and the BrokenPipeError
            # unwinds into the caller's stack: the daemon would go on
            # running the caller's code (error handling included: it once
            # removed a container). It must never leave here.
            _child_exit(sys.exc_info()[1])


def _child_exit(exc):
    try:
        if exc is not None and not isinstance(exc, OSError):
            import traceback
            os.write(2, ('kata-zun privsep daemon %d failed: %s' % (
                os.getpid(), traceback.format_exc())).encode()[-4000:])
    finally:
        os._exit(0 if exc is None or isinstance(exc, OSError) else 1)
