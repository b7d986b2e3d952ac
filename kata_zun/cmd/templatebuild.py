"""kata-zun's background VM template builder.

A sandbox whose shape has no VM template yet boots cold and starts this
(:func:`kata_zun.hypervisor.qemu.clone.build_in_background`) so that the
next sandboxes of the shape restore one: the first start of a shape is a
cold boot, never a wait for a template build.

``python -m kata_zun.cmd.templatebuild --config-file F --spec JSON``
(started by :func:`spawn`, in a session of its own) builds the template
the spec names (:func:`kata_zun.hypervisor.qemu.clone.build_now`) unless
another build runs on this host. It logs to ``build.log`` in ``[kata]
template_dir`` (capped), and leaves nothing if it dies: its QEMU dies
with it, the store's garbage collection removes its build directory.
"""

import argparse
import json
import os
import subprocess
import sys
import threading

from oslo_config import cfg
from oslo_log import log as logging

from kata_zun import conf

LOG = logging.getLogger(__name__)
CONF = conf.CONF

LOG_NAME = 'build.log'
# build.log is cut when it grows past this at a builder's start.
LOG_MAX_BYTES = 256 * 1024
# A spec is a few hundred bytes: anything near this is not ours.
SPEC_MAX_BYTES = 16 * 1024


def spawn(spec):
    """Start a detached builder for ``spec`` and return at once.

    The builder is a session of its own (the starter's end does not
    touch it); a thread of the starter reaps it, so no zombie stays with
    a long-lived starter. Its output goes to ``build.log``, cut at
    :data:`LOG_MAX_BYTES`.

    :param spec: :func:`kata_zun.hypervisor.qemu.clone.build_spec`.
    :returns: True if it was started.
    """
    from kata_zun.hypervisor import template
    argv = [sys.executable, '-m', 'kata_zun.cmd.templatebuild',
            '--spec', json.dumps(spec, sort_keys=True)]
    try:
        files = list(CONF.config_file or ())
    except cfg.NoSuchOptError:      # CONF never parsed a command line
        files = list(CONF.default_config_files or ())
    for path in files:
        argv += ['--config-file', path]
    log_path = os.path.join(template.Store().root, LOG_NAME)
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(log_fd).st_size > LOG_MAX_BYTES:
                os.ftruncate(log_fd, 0)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=log_fd, stderr=log_fd,
                                    close_fds=True, start_new_session=True)
        finally:
            os.close(log_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        LOG.warning('cannot start a VM template build: %s', exc)
        return False
    threading.Thread(target=proc.wait, name='template-build-reaper',
                     daemon=True).start()
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(prog='kata-zun-templatebuild')
    parser.add_argument('--config-file', action='append', default=[])
    parser.add_argument('--spec', required=True)
    args = parser.parse_args(argv)
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=args.config_file)
    from kata_zun.hypervisor import template
    store = template.Store()
    try:
        store.ensure_root()
    except template.TemplateError as exc:
        print(exc, file=sys.stderr)
        return 1
    # The config may be zun.conf: never write into zun-compute's log.
    for opt in ('log_file', 'log_dir'):
        CONF.set_override(opt, None)
    CONF.set_override('use_syslog', False)
    logging.setup(CONF, 'kata-zun-templatebuild')
    if CONF.kata_jail.enabled:
        # Like a shim: the template's RAM holder, which the build starts,
        # must outlive zun-compute's service.
        from kata_zun.jail import cgroup
        cgroup.leave_starter(CONF.kata_jail.cgroup_parent, LOG)
    try:
        if len(args.spec) > SPEC_MAX_BYTES:
            raise ValueError('template spec is too long')
        spec = json.loads(args.spec)
        if not isinstance(spec, dict) or \
                not isinstance(spec.get('digest'), str):
            raise ValueError('template spec is not an object with a digest')
        from kata_zun.hypervisor.qemu import clone
        from kata_zun.hypervisor.qemu import vm as qemu_vm
        config = clone.config_from_spec(spec, store.root)
        built = clone.build_now(qemu_vm.QemuHypervisor(templates=True),
                                config, spec['digest'])
    except Exception:
        LOG.exception('VM template build failed')
        return 1
    if built is None:
        LOG.info('VM template %s not built: another build runs',
                 spec['digest'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
