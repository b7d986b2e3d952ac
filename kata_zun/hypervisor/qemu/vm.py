"""QEMU implementation of :mod:`kata_zun.hypervisor.base`.

QEMU runs as a child of its owner (the sandbox shim) and is killed by the
kernel if the owner dies (``PR_SET_PDEATHSIG``), so a VM never outlives the
process that tracks it. Note the signal follows the *thread* that forked:
start VMs from the main thread (eventlet green threads all are).
"""

import ctypes
import os
import signal
import subprocess
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base
from kata_zun.hypervisor.qemu import accel
from kata_zun.hypervisor.qemu import argv as qargv
from kata_zun.hypervisor.qemu import qmp
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

QEMU_LOG = 'qemu.log'
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


def spawn(argv, log_path):
    """Start a QEMU child that dies with its owner.

    :param argv: the command line, program first.
    :param log_path: file that receives QEMU's stdout and stderr.
    :returns: the :class:`subprocess.Popen`.
    :raises: OSError if QEMU cannot be started.
    """
    if not _prctl:
        # Resolved in the parent: no dlopen between fork and exec.
        _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
    parent = os.getpid()
    with open(log_path, 'wb') as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, close_fds=True,
            start_new_session=False,
            preexec_fn=lambda: _child_setup(_prctl[0], parent))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class QemuVM(base.VM):
    """A running QEMU; QMP stays connected for the VM's life."""

    def __init__(self, proc, config, accelerator, log_path, qmp_socket,
                 agent_socket):
        self._proc = proc
        self.config = config
        self.accel = accelerator
        self.log_path = log_path
        self.qmp_socket = qmp_socket
        self._agent_socket = agent_socket
        self._qmp = qmp.QMPClient(qmp_socket)

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
            if self._proc.poll() is not None:
                raise exception.HypervisorError(
                    reason='QEMU exited with status %s: %s' % (
                        self._proc.returncode,
                        fileutils.tail(self.log_path, 2000)))
            raise exception.HypervisorError(
                reason='QEMU did not answer on QMP within %s s: %s'
                % (timeout, exc))

    def execute(self, cmd, args=None, timeout=10.0):
        """Run a QMP command, reconnecting once if the session was lost.

        :param cmd: QMP command name.
        :param args: dict of arguments or None.
        :param timeout: seconds.
        :returns: the command's return value.
        :raises: kata_zun.hypervisor.qemu.qmp.QMPError (a HypervisorError)
        """
        if not self._qmp.connected:
            self._qmp.connect(min(timeout, 5.0))
        return self._qmp.execute(cmd, args, timeout)

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

    def poll(self):
        """:returns: QEMU's exit status, or None while it runs."""
        return self._proc.poll()

    def wait(self, timeout=None):
        """Wait for QEMU to exit.

        :param timeout: seconds, or None for ever.
        :returns: the exit status, or None on timeout.
        """
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


class QemuHypervisor(base.Hypervisor):
    """Starts QEMU VMs as children of the calling process."""

    def __init__(self, qemu_path=None, machine_type=None, cpu_model=None,
                 start_timeout=START_TIMEOUT):
        """:param qemu_path: QEMU binary (default from config).
        :param machine_type: 'microvm' or 'q35' (default from config).
        :param cpu_model: ``-cpu`` model (default from config).
        :param start_timeout: seconds until QEMU must answer on QMP.
        """
        hv = CONF.kata_hypervisor
        self.qemu_path = qemu_path or hv.qemu_path
        self.machine_type = machine_type or hv.machine_type
        self.cpu_model = cpu_model or hv.cpu_model
        self.start_timeout = start_timeout

    def start(self, config):
        """Boot a VM.

        :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
        :returns: a :class:`QemuVM` whose agent socket accepts connections.
        :raises: kata_zun.exception.HypervisorError
        """
        qmp_path, agent_path = qargv.socket_paths(config.run_dir)
        os.makedirs(config.run_dir, mode=0o700, exist_ok=True)
        for stale in (qmp_path, agent_path):
            _unlink(stale)
        chosen = accel.choose(config.kernel, self.qemu_path, self.cpu_model,
                              self.machine_type)
        cmd = qargv.build_argv(config, chosen.name, self.machine_type,
                               self.cpu_model, self.qemu_path)
        log_path = os.path.join(config.run_dir, QEMU_LOG)
        LOG.debug('Starting VM %s: %s', config.name, cmd)
        started = time.monotonic()
        try:
            proc = spawn(cmd, log_path)
        except (OSError, subprocess.SubprocessError) as exc:
            raise exception.HypervisorError(
                reason='cannot run %s: %s' % (self.qemu_path, exc))
        vm = QemuVM(proc, config, chosen, log_path, qmp_path, agent_path)
        try:
            vm.connect(self.start_timeout)
        except BaseException:
            vm.kill()
            raise
        LOG.debug('VM %s (pid %s, %s) up in %.3f s', config.name, proc.pid,
                  chosen.name, time.monotonic() - started)
        return vm
