"""kata-zun-shim: the per-sandbox daemon (see kata_zun.shim.server).

Started by the runtime as ``python -m kata_zun.cmd.shim``; it daemonizes
at once so whoever started it can exit or restart without touching the
sandbox, and reports readiness (``ok`` or an error line) on --ready-fd.
"""

import argparse
import logging as std_logging
from logging import handlers
import os
import shutil
import sys
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun.hypervisor import base
from kata_zun.volume import devices as volume_devices

LOG = logging.getLogger(__name__)
CONF = conf.CONF


def _daemonize(log_path):
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir('/')
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o600)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)


def _cap_log(path, max_bytes):
    """Send the log records that went to stdout/stderr (shim.log) to a
    size-rotated shim.log instead: one rotated file is kept, so neither
    the guest nor a client can fill the host's disk through the shim's
    log. (stdout and stderr stay on the first shim.log for the rare
    lines written without the logging module, e.g. a crash's traceback.)
    """
    root = std_logging.getLogger()
    for handler in list(root.handlers):
        stream = getattr(handler, 'stream', None)
        if isinstance(handler, std_logging.StreamHandler) and \
                not isinstance(handler, std_logging.FileHandler) and \
                stream in (sys.stdout, sys.stderr):
            capped = handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=1)
            capped.setFormatter(handler.formatter)
            capped.setLevel(handler.level)
            root.removeHandler(handler)
            root.addHandler(capped)


def _report(fd, text):
    """Tell our starter how the boot went.

    :returns: False if nobody reads any more (the starter was killed or
        gave up waiting), True otherwise.
    """
    if fd is None:
        return True
    try:
        os.write(fd, text.encode('utf-8', 'replace')[:4000])
        return True
    except OSError as exc:
        LOG.warning('cannot report to the starter: %s', exc)
        return False
    finally:
        os.close(fd)


def boot_error(shim, exc):
    """:returns: why a boot failed, as the record and the user see it:
        a QEMU that died says so (the link to its agent then only says
        "connection reset").
    """
    status = shim.vm.poll() if shim.vm is not None else None
    if status is None:
        return str(exc)
    return 'the VM exited during its boot (QEMU status %s): %s' % (status,
                                                                   exc)


def _abandon(shim, run_dir):
    LOG.error('sandbox %s: its starter went away during the boot: '
              'stopping the VM', shim.cid)
    shim.vm.stop(0)
    shim.save_state(status='created', shim_pid=None, vm_pid=None,
                    error='the start was abandoned: the process that '
                    'started the container went away while its VM booted')
    shutil.rmtree(run_dir, ignore_errors=True)


def vm_config(shim, run_dir):
    from kata_zun.guest import builder
    assets = builder.find()
    shim.save_state(guest_version=assets.version)
    vm = shim.config['vm']
    # --- network (issue 5): the tap the runtime made before this boot
    from kata_zun import network
    attachment = network.read_attachment(shim.state_dir) or {}
    nics = tuple(base.Nic(n['tap'], n['mac'],
                          checksum_offload=n.get('checksum_offload') is not
                          False)
                 for n in attachment.get('nics') or ())
    # Networks that can be attached and detached while the container runs
    # (Zun's) put every NIC in a hotplug slot.
    from kata_zun.hypervisor.qemu import argv as qargv
    pci_slots = qargv.MAX_PCI_SLOTS if attachment.get('hotplug') else 0
    # --- end network
    # --- volumes (issue 11): each block volume is one more disk
    volume_disks = volume_devices.disks(shim.config.get('volumes'))
    shared_dirs = volume_devices.shared_dirs(shim.config.get('volumes'))
    return base.VMConfig(
        name=base.vm_name(shim.cid), vcpus=vm['vcpus'],
        memory_mb=vm['memory_mb'], kernel=assets.kernel,
        initrd=assets.initrd, run_dir=run_dir,
        console_log=os.path.join(shim.state_dir, 'console.log'),
        disks=(base.Disk(shim.config['image']['block_image'],
                         shim.config['agent_spec']['image_serial'],
                         read_only=True),
               base.Disk(os.path.join(shim.state_dir, 'rw.img'),
                         shim.config['agent_spec']['layer_serial'])) +
        volume_disks,
        nics=nics, pci_slots=pci_slots, cpu_quota=shim.config.get('cpus'),
        cpuset_cpus=tuple(vm.get('cpuset_cpus') or ()),
        cpuset_mems=tuple(vm.get('cpuset_mems') or ()),
        shared_dirs=shared_dirs)


def pod_vm_config(shim, run_dir):
    """The VM of a pod: two disks per container (image, writable
    layer), the pod's volumes once, its network's NICs.
    """
    from kata_zun.guest import builder
    from kata_zun import network
    assets = builder.find()
    shim.save_state(guest_version=assets.version)
    attachment = network.read_attachment(shim.state_dir) or {}
    nics = tuple(base.Nic(n['tap'], n['mac'])
                 for n in attachment.get('nics') or ())
    disks = []
    for m in shim.members:
        spec = m.config['agent_spec']
        disks.append(base.Disk(m.config['image']['block_image'],
                               spec['image_serial'], read_only=True))
        disks.append(base.Disk(os.path.join(m.dir, 'rw.img'),
                               spec['layer_serial']))
    volumes = shim.config.get('volumes')
    vm = shim.config['vm']
    return base.VMConfig(
        name=base.vm_name(shim.cid), vcpus=vm['vcpus'],
        memory_mb=vm['memory_mb'], kernel=assets.kernel,
        initrd=assets.initrd, run_dir=run_dir,
        console_log=os.path.join(shim.state_dir, 'console.log'),
        disks=tuple(disks) + volume_devices.disks(volumes), nics=nics,
        pci_slots=0, cpu_quota=None,
        shared_dirs=volume_devices.shared_dirs(volumes))


def main(argv=None):
    parser = argparse.ArgumentParser(prog='kata-zun-shim')
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('--run-dir', required=True)
    parser.add_argument('--ready-fd', type=int)
    parser.add_argument('--config-file', action='append', default=[])
    parser.add_argument('--foreground', action='store_true')
    parser.add_argument('--pod', action='store_true',
                        help='the state dir is a pod\'s')
    args = parser.parse_args(argv)
    if not args.foreground:
        _daemonize(os.path.join(args.state_dir, 'shim.log'))
    # The starter's shim_start_timeout runs from about here (its child
    # has just exited): admission's wait is measured from here too.
    started = time.monotonic()
    logging.register_options(CONF)
    CONF([], project='kata-zun', default_config_files=args.config_file)
    # The config may be zun.conf: never write into zun-compute's log file,
    # our stderr is the sandbox's shim.log.
    for opt in ('log_file', 'log_dir'):
        CONF.set_override(opt, None)
    CONF.set_override('use_syslog', False)
    logging.setup(CONF, 'kata-zun-shim')
    if not args.foreground:
        _cap_log(os.path.join(args.state_dir, 'shim.log'),
                 CONF.kata.shim_log_max_bytes)
    if CONF.kata_jail.enabled:
        from kata_zun.jail import cgroup
        cgroup.leave_starter(CONF.kata_jail.cgroup_parent, LOG)

    from kata_zun.hypervisor.qemu import vm as qemu_vm
    from kata_zun.shim import server

    ready_fd = args.ready_fd
    shim_args = dict(max_frame=CONF.kata_agent.max_frame_bytes,
                     agent_timeout=CONF.kata_agent.connect_timeout,
                     boot_cpu_budget=CONF.kata_agent.boot_cpu_budget,
                     log_max_bytes=CONF.kata.log_max_bytes,
                     stop_timeout=CONF.kata.stop_timeout)
    if args.pod:
        from kata_zun.shim import pod
        shim = pod.PodShim(args.state_dir, args.run_dir,
                           qemu_vm.QemuHypervisor(
                               templates=CONF.kata.vm_templating),
                           os.path.join(CONF.kata.state_path, 'containers'),
                           **shim_args)
        make_config = pod_vm_config
    else:
        shim = server.Shim(args.state_dir, args.run_dir,
                           qemu_vm.QemuHypervisor(
                               templates=CONF.kata.vm_templating),
                           **shim_args)
        make_config = vm_config
    from kata_zun import exception
    from kata_zun.runtime import admission
    try:
        config = make_config(shim, args.run_dir)
        # Held until the boot is done: then MemAvailable shows what this
        # VM took, and the next start is judged on that.
        with admission.Ledger().reservation(
                config.name, started=started) as reservation:
            shim.boot(config, reservation=reservation)
    except exception.InsufficientResources as exc:
        # Nothing ran (admission refuses before any QEMU runs): the
        # container stays created, and can be started once the host has
        # room (as Docker keeps a container whose start failed).
        LOG.warning('sandbox %s not started: %s', shim.cid, exc)
        shim.save_state(status='created', shim_pid=None, vm_pid=None,
                        error=str(exc))
        _report(ready_fd, admission.REFUSED + str(exc))
        return 1
    except Exception as exc:
        LOG.exception('sandbox %s failed to start', shim.cid)
        message = boot_error(shim, exc)
        console = os.path.join(args.state_dir, 'console.log')
        shim.save_state(status='exited', exit_code=255, error=message)
        if shim.vm is not None:
            shim.vm.stop(0)
        _report(ready_fd, 'error: %s (guest console: %s)' % (message,
                                                             console))
        return 1
    if not _report(ready_fd, 'ok\n'):
        # Our starter went away while the VM booted (killed, or past its
        # shim_start_timeout): it told its user the start failed, and
        # nobody would start this container or know its VM runs. Stop
        # the VM (which releases its jail) and say so in the record.
        _abandon(shim, args.run_dir)
        return 1
    try:
        if args.pod:
            shim.start_pod()
        shim.serve()
    except Exception:
        LOG.exception('sandbox %s: shim failed', shim.cid)
        if shim.vm is not None:
            shim.vm.stop(0)
        shim.save_state(status='exited', exit_code=255,
                        error='the sandbox shim failed; see shim.log')
        return 1
    finally:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    # A restart (kata_zun.runtime.manager.Runtime.restart) keeps it.
    if shim.config.get('auto_remove') and not os.path.exists(
            os.path.join(args.state_dir, 'restarting')):
        shutil.rmtree(args.state_dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
