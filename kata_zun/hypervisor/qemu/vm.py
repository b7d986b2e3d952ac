"""QEMU implementation of :mod:`kata_zun.hypervisor.base`.

QEMU runs as a child of its owner (the sandbox shim) and is killed by the
kernel if the owner dies (``PR_SET_PDEATHSIG``), so a VM never outlives the
process that tracks it. Note the signal follows the *thread* that forked:
start VMs from the main thread (eventlet green threads all are).
"""

import ctypes
import os
import select
import signal
import socket
import subprocess
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base
from kata_zun.hypervisor.qemu import accel
from kata_zun.hypervisor.qemu import argv as qargv
from kata_zun.hypervisor.qemu import handles
from kata_zun.hypervisor.qemu import qmp
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

QEMU_LOG = 'qemu.log'
QEMU_LOG_MAX_BYTES = 256 * 1024
START_TIMEOUT = 30
QUIT_GRACE = 3
_PR_SET_PDEATHSIG = 1
_prctl = []


def _child_setup(prctl, parent):
    # Runs in the child between fork and exec.
    if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent:
        # The owner died before prctl took effect: nobody will stop us.
        os.kill(os.getpid(), signal.SIGKILL)


def spawn(argv, log, pass_fds=(), jail=None, cpus=()):
    """Start a QEMU child that dies with its owner.

    :param argv: the command line, program first.
    :param log: file object that receives QEMU's stdout and stderr.
    :param pass_fds: descriptors QEMU inherits.
    :param jail: a :class:`kata_zun.jail.launch.Jail` to confine QEMU in,
        or None.
    :param cpus: host CPU ids QEMU runs on (every thread it makes
        inherits the affinity), or () for any.
    :returns: the :class:`subprocess.Popen`.
    :raises: OSError if QEMU cannot be started.
    """
    if not _prctl:
        # Resolved in the parent: no dlopen between fork and exec.
        _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
    parent = os.getpid()
    if jail is not None:
        def confine():
            jail.child_setup(parent)
    else:
        def confine():
            _child_setup(_prctl[0], parent)

    def setup():
        if cpus:
            os.sched_setaffinity(0, cpus)
        confine()
    # QEMU gets no environment of ours (zun-compute's may hold
    # credentials).
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        close_fds=True, pass_fds=pass_fds, start_new_session=False,
        env={'PATH': '/usr/bin:/bin'}, preexec_fn=setup)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _wait_exit(pid, timeout):
    """Wait up to ``timeout`` seconds for process ``pid`` (a child) to
    exit, without reaping it (select: green under eventlet).

    :returns: False if it could not wait (no pidfd here): the caller
        waits its own way.
    """
    fd = fileutils.open_pidfd(pid)
    if fd is None:                         # no pidfd, or gone already
        return False
    try:
        select.select([fd], [], [], max(0.0, timeout))
    finally:
        os.close(fd)
    return True


class QemuVM(base.VM):
    """A running QEMU; QMP stays connected for the VM's life."""

    def __init__(self, proc, config, accelerator, log_path, qmp_socket,
                 agent_socket, machine_type='microvm', jail=None,
                 drains=(), helpers=()):
        self._proc = proc
        self.jail = jail
        self._drains = drains
        # virtiofsd daemons (kata_zun.volume.virtiofs): they exit when
        # QEMU does.
        self._helpers = helpers
        self.config = config
        self.accel = accelerator
        self.log_path = log_path
        self.qmp_socket = qmp_socket
        self._agent_socket = agent_socket
        self._qmp = qmp.QMPClient(qmp_socket)
        # NIC hotplug: slot -> NetDevice in it; slot -> id of a device
        # the guest has not let go of yet (the slot is not free).
        self._machine_type = machine_type
        self._slots = {}
        self._leaving = {}
        self._generation = 0
        if config.pci_slots:
            self._slots = {dev.slot: dev for dev in
                           qargv.boot_nics(config, machine_type)}

    @property
    def pid(self):
        """:returns: the host pid of QEMU."""
        return self._proc.pid

    @property
    def agent_socket(self):
        """:returns: the host unix socket of the ``agent.0`` port."""
        return self._agent_socket

    def connect(self, timeout):
        """Wait until QEMU answers on QMP.

        :param timeout: seconds.
        :returns: None
        :raises: kata_zun.exception.HypervisorError with the tail of
            qemu.log if QEMU exits first, or on timeout.
        """
        try:
            self._qmp.connect(timeout,
                              retry_while=lambda: self._proc.poll() is None)
        except qmp.QMPError as exc:
            if not isinstance(exc, qmp.QMPTimeout):
                # A reset or refused socket often means QEMU is exiting:
                # give it a moment to become reapable, to say why.
                self.wait(1.0)
            if self._proc.poll() is not None:
                for drain in self._drains:
                    drain.join(2)       # QEMU's last words
                raise exception.HypervisorError(
                    reason='QEMU exited with status %s: %s' % (
                        self._proc.returncode,
                        fileutils.tail(self.log_path, 2000)))
            raise exception.HypervisorError(
                reason='QEMU did not answer on QMP within %s s: %s'
                % (timeout, exc))

    def execute(self, cmd, args=None, timeout=10.0, fds=()):
        """Run a QMP command, reconnecting once if the session was lost.

        :param cmd: QMP command name.
        :param args: dict of arguments or None.
        :param timeout: seconds.
        :param fds: file descriptors passed with the command.
        :returns: the command's return value.
        :raises: kata_zun.hypervisor.qemu.qmp.QMPError (a HypervisorError)
        """
        if not self._qmp.connected:
            self._qmp.connect(min(timeout, 5.0))
        return self._qmp.execute(cmd, args, timeout, fds)

    def query_status(self):
        """:returns: QMP ``query-status``, e.g. {'status': 'running',
            'running': True, ...}.
        :raises: kata_zun.exception.HypervisorError
        """
        return self.execute('query-status')

    def pause(self):
        """Stop the vCPUs.

        :returns: None
        :raises: kata_zun.exception.HypervisorError
        """
        self.execute('stop')

    def resume(self):
        """Restart the vCPUs.

        :returns: None
        :raises: kata_zun.exception.HypervisorError
        """
        self.execute('cont')

    def _free_slot(self):
        """:returns: a free hotplug slot, or None."""
        def free():
            used = set(self._slots) | set(self._leaving)
            return [s for s in range(self.config.pci_slots)
                    if s not in used]
        slots = free()
        if not slots and self._leaving:
            # Devices the guest has let go of since: their slots are free.
            present = {child.get('name') for child in self.execute(
                'qom-list', {'path': '/machine/peripheral'})}
            for slot, device_id in list(self._leaving.items()):
                if device_id not in present:
                    del self._leaving[slot]
            slots = free()
        return slots[0] if slots else None

    def add_nic(self, nic):
        """Hotplug a virtio-net-pci NIC on ``nic.tap`` into a free slot.

        :param nic: a :class:`kata_zun.hypervisor.base.Nic`.
        :returns: None
        :raises: kata_zun.exception.NicHotplugError
        """
        if not self.config.pci_slots:
            raise exception.NicHotplugError(
                reason='VM %s was started without hotplug slots'
                % self.config.name)
        if any(d.tap == nic.tap for d in self._slots.values()):
            raise exception.NicHotplugError(
                reason='tap %s is already plugged' % nic.tap)
        try:
            slot = self._free_slot()
            if slot is None:
                raise exception.NicHotplugError(
                    reason='all %d NIC slots are taken'
                    % self.config.pci_slots)
            self._generation += 1
            dev = qargv.NetDevice(slot, nic.tap, nic.mac, self._machine_type,
                                  slot=slot, generation=self._generation,
                                  checksum_offload=nic.checksum_offload)
            self._netdev_add(dev)
            try:
                self.execute('device_add', dev.device_add_args())
            except BaseException:
                self._netdev_del(dev)
                raise
        except (qmp.QMPError, exception.HypervisorError) as exc:
            if isinstance(exc, exception.NicHotplugError):
                raise
            raise exception.NicHotplugError(
                reason='cannot add a NIC on %s: %s' % (nic.tap, exc))
        self._slots[slot] = dev
        LOG.debug('VM %s: NIC %s on %s in slot %d', self.config.name,
                  nic.mac, nic.tap, slot)

    def _netdev_add(self, dev):
        """Open the tap here and hand QEMU the descriptor (a jailed QEMU
        cannot open a tap), then make the netdev on it.
        """
        fd = handles.open_tap(dev.tap)
        name = 'fd-' + dev.netdev_id
        try:
            self.execute('getfd', {'fdname': name}, fds=(fd,))
        finally:
            os.close(fd)
        try:
            self.execute('netdev_add', dev.netdev_add_args(fd_name=name))
        except BaseException:
            try:
                self.execute('closefd', {'fdname': name})
            except qmp.QMPError:
                pass
            raise

    def _netdev_del(self, dev):
        try:
            self.execute('netdev_del', {'id': dev.netdev_id})
        except qmp.QMPCommandError as exc:
            if 'not found' not in exc.desc:
                raise

    def remove_nic(self, tap):
        """Cut ``tap`` from the VM and ask the guest to drop its NIC.

        :param tap: the host tap of a NIC in a hotplug slot.
        :returns: True if the device is gone from the guest (the agent
            powered its slot off first), False if the guest was asked
            (``device_del``) and has not let go yet.
        :raises: kata_zun.exception.NicHotplugError
        """
        found = [(s, d) for s, d in self._slots.items() if d.tap == tap]
        if not found:
            raise exception.NicHotplugError(
                reason='VM %s has no removable NIC on %s'
                % (self.config.name, tap))
        slot, dev = found[0]
        gone = False
        try:
            try:
                self.execute('device_del', {'id': dev.device_id})
            except qmp.QMPCommandError as exc:
                if exc.error_class != 'DeviceNotFound':
                    raise
                gone = True
            # Whatever the guest does with the device, it is cut from the
            # tap now (QEMU closes the tap fd).
            self._netdev_del(dev)
        except qmp.QMPError as exc:
            raise exception.NicHotplugError(
                reason='cannot remove the NIC on %s: %s' % (tap, exc))
        del self._slots[slot]
        if not gone:
            self._leaving[slot] = dev.device_id
        LOG.debug('VM %s: NIC on %s removed from slot %d (%s)',
                  self.config.name, tap, slot,
                  'gone' if gone else 'guest asked to let go')
        return gone

    def poll(self):
        """:returns: QEMU's exit status, or None while it runs."""
        return self._proc.poll()

    def wait(self, timeout=None):
        """Wait for QEMU to exit.

        :param timeout: seconds, or None for ever.
        :returns: the exit status, or None on timeout.
        """
        if (timeout is not None and self._proc.poll() is None and
                _wait_exit(self._proc.pid, timeout)):
            # Popen.wait(timeout) polls, up to 50 ms apart: a stop that
            # waits for the guest's power-off would lose that much per
            # sandbox. A pidfd wakes us when QEMU exits.
            return self._proc.poll()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """Kill QEMU at once and reap it.

        :returns: None
        """
        if self._proc.poll() is None:
            self._proc.kill()
        self.stop(0)

    def stop(self, timeout):
        """Wait for the guest to power off, then quit QEMU, then kill it.

        QEMU is always reaped and its sockets removed.

        :param timeout: seconds allowed for a guest power-off.
        :returns: None
        """
        try:
            if self.wait(timeout) is None:
                try:
                    self.execute('quit', timeout=QUIT_GRACE)
                except qmp.QMPError:
                    pass    # QEMU may close the socket before answering
                if self.wait(QUIT_GRACE) is None:
                    LOG.warning('QEMU %s (%s) ignored quit, killing it',
                                self.pid, self.config.name)
                    self._proc.kill()
        finally:
            self._proc.wait()
            self._qmp.close()
            _unlink(self.qmp_socket)
            _unlink(self._agent_socket)
            for drain in self._drains:
                # QEMU is gone: its log sockets have hit EOF.
                drain.join(5)
            for helper in self._helpers:
                helper.stop()
            if self.jail is not None:
                self.jail.release()
                self.jail = None


def cold_cost_mib(config):
    """:returns: MiB a cold boot of ``config`` may touch before it is
        done: its sandbox cgroup's limit (guest RAM plus QEMU's own). A
        booting guest kernel touches most of its RAM (measured: ~470 of
        608 MiB per VM with 50 booting at once).
    """
    return config.memory_mb + CONF.kata_jail.memory_overhead_mb


class QemuHypervisor(base.Hypervisor):
    """Starts QEMU VMs as children of the calling process."""

    def __init__(self, qemu_path=None, machine_type=None, cpu_model=None,
                 start_timeout=START_TIMEOUT, jailed=None, templates=False):
        """:param qemu_path: QEMU binary (default from config).
        :param machine_type: 'microvm' or 'q35' (default from config).
        :param cpu_model: ``-cpu`` model (default from config).
        :param start_timeout: seconds until QEMU must answer on QMP.
        :param jailed: override ``[kata_jail] enabled``.
        :param templates: start VMs from VM templates when their shape
            allows (the caller's policy: the shim passes ``[kata]
            vm_templating``; the VM must run kata-zun's agent).
        """
        hv = CONF.kata_hypervisor
        self.qemu_path = qemu_path or hv.qemu_path
        self.machine_type = machine_type or hv.machine_type
        self.cpu_model = cpu_model or hv.cpu_model
        self.start_timeout = start_timeout
        self.jailed = (CONF.kata_jail.enabled if jailed is None
                       else jailed)
        self.templates = templates

    def start(self, config, admit=None):
        """Start a VM: restored from a VM template when this hypervisor
        was made with ``templates`` and the VM's shape allows it (see
        :mod:`kata_zun.hypervisor.qemu.clone`), else (or when the
        template cannot be used: a warning) booted cold. Either way the
        caller gets the same kind of VM, its agent about to say HELLO.

        :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
        :param admit: see :meth:`kata_zun.hypervisor.base.Hypervisor.start`.
        :returns: a :class:`QemuVM` whose agent socket accepts connections.
        :raises: kata_zun.exception.HypervisorError (JailError when QEMU
            cannot be confined), or what ``admit`` raises
        """
        if self.templates:
            from kata_zun.hypervisor.qemu import clone
            vm = clone.try_restore(self, config, admit)
            if vm is not None:
                return vm
        if admit is not None:
            admit(cold_cost_mib(config))
        return self.launch(config)

    def launch(self, config, memory=None, incoming=False, jailed=None):
        """Run QEMU for one VM.

        The VM's sockets, disks and taps are opened here and inherited
        by QEMU; with the jail on (``[kata_jail] enabled``), QEMU runs
        confined (see :mod:`kata_zun.jail`).

        :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
        :param memory: the RAM argv part (None: a private memfd).
        :param incoming: wait for a device state instead of booting.
        :param jailed: override ``[kata_jail] enabled`` (a template
            build runs our own guest only, unjailed).
        :returns: a :class:`QemuVM` answering on QMP.
        :raises: kata_zun.exception.HypervisorError (JailError when QEMU
            cannot be confined)
        """
        jailed = self.jailed if jailed is None else jailed
        qmp_path, agent_path = qargv.socket_paths(config.run_dir)
        os.makedirs(config.run_dir, mode=0o700, exist_ok=True)
        chosen = accel.choose(config.kernel, self.qemu_path, self.cpu_model,
                              self.machine_type)
        if jailed and os.geteuid() != 0:
            raise exception.JailError(
                reason='the jail needs root (the shim runs as uid %d); '
                'run it as root or set [kata_jail] enabled = false'
                % os.geteuid())
        if not self.jailed and config.cpuset_mems:
            from kata_zun.jail import cpuset
            if cpuset.needs_memory_binding(config.cpuset_mems):
                # Only the jail's cgroup (cpuset.mems) binds QEMU's memory.
                raise exception.HypervisorError(
                    reason='binding guest memory to NUMA nodes %s needs '
                    'the jail ([kata_jail] enabled = true, as root)'
                    % cpuset.format_list(config.cpuset_mems))
        jail = None
        vmh = None
        drains = []
        try:
            kernel, initrd = config.kernel, config.initrd
            qemu_path = self.qemu_path
            # RAM handed over as a descriptor (a clone's sealed
            # template RAM) is reached through /proc/self/fd.
            memory_fds = tuple(memory.fds()) if memory else ()
            if jailed:
                from kata_zun.jail import launch
                jail = launch.prepare(
                    config.name, os.path.join(config.run_dir, 'jail'),
                    config.kernel, config.initrd, config.memory_mb,
                    config.cpu_quota, chosen.name,
                    cpuset=((config.cpuset_cpus, config.cpuset_mems)
                            if config.cpuset_cpus else None),
                    own_proc=bool(memory_fds))
                kernel, initrd = jail.root.kernel, jail.root.initrd
                qemu_path = jail.root.qemu
            # virtiofsd daemons join the sandbox's cgroup with QEMU.
            vmh = handles.VMHandles.open(
                config, qmp_path, agent_path,
                cgroup_procs=jail.cgroup.procs_files('vmm') if jail else ())
            fds = vmh.for_argv(kernel, initrd)
            cmd = qargv.build_argv(
                config, chosen.name, self.machine_type, self.cpu_model,
                qemu_path, handles=fds,
                tcg_cache_mb=CONF.kata_jail.tcg_cache_mb, memory=memory,
                incoming=incoming)
            log_path = os.path.join(config.run_dir, QEMU_LOG)
            LOG.debug('Starting VM %s: %s', config.name, cmd)
            started = time.monotonic()
            # QEMU's own messages go through a capped log too: some are
            # triggered by the guest.
            log_host, log_vm = socket.socketpair()
            try:
                try:
                    proc = spawn(cmd, log_vm, fds.fds() + memory_fds,
                                 jail, cpus=config.cpuset_cpus)
                except (OSError, subprocess.SubprocessError) as exc:
                    raise exception.HypervisorError(
                        reason='cannot run %s: %s' % (self.qemu_path, exc))
            except BaseException:
                log_host.close()
                raise
            finally:
                log_vm.close()
            for sock, path, cap in (
                    (log_host, log_path, QEMU_LOG_MAX_BYTES),
                    (vmh.take_console(), config.console_log,
                     CONF.kata.console_log_max_bytes)):
                drain = handles.ConsoleLog(sock, path, cap)
                drain.start()
                drains.append(drain)
        except BaseException:
            if vmh is not None:
                vmh.abort()
            if jail is not None:
                jail.release()
            raise
        # QEMU holds its copies now.
        vmh.close()
        helpers = vmh.helpers
        vm = QemuVM(proc, config, chosen, log_path, qmp_path, agent_path,
                    self.machine_type, jail, drains, helpers)
        try:
            vm.connect(self.start_timeout)
        except BaseException:
            vm.kill()
            raise
        LOG.debug('VM %s (pid %s, %s%s) up in %.3f s', config.name, proc.pid,
                  chosen.name, ', jailed as uid %d' % jail.uid if jail else '',
                  time.monotonic() - started)
        return vm
