"""The one small VM lifecycle interface.

A sandbox shim owns exactly one VM. It asks a :class:`Hypervisor` to start
a VM from a :class:`VMConfig` and then drives the returned :class:`VM`.
Implementations live in sub-packages (``qemu``); policy (when to pause,
how long to wait) stays with the caller.
"""

import abc
import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Disk:
    """A raw block image given to the guest as a virtio-blk device.

    The guest finds it by ``serial`` (``/sys/block/vd*/serial``), never by
    probe order.
    """
    path: str
    serial: str
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class Nic:
    """A virtio-net NIC backed by a host tap device that already exists.

    The guest finds it by ``mac``, never by probe order.
    """
    tap: str
    mac: str


@dataclasses.dataclass(frozen=True)
class VMConfig:
    """Everything needed to boot one sandbox VM."""
    name: str
    vcpus: int
    memory_mb: int
    kernel: str
    initrd: str
    run_dir: str                 # sockets live here (keep the path short)
    console_log: str             # guest serial console is written here
    disks: typing.Tuple[Disk, ...] = ()
    kernel_params: typing.Tuple[str, ...] = ()
    nics: typing.Tuple[Nic, ...] = ()


class VM(metaclass=abc.ABCMeta):
    """A running VM."""

    @property
    @abc.abstractmethod
    def pid(self):
        """:returns: the host pid of the VMM process."""

    @property
    @abc.abstractmethod
    def agent_socket(self):
        """:returns: path of the host unix socket bound to the agent port."""

    @abc.abstractmethod
    def pause(self):
        """Stop the vCPUs.

        :raises: kata_zun.exception.HypervisorError
        """

    @abc.abstractmethod
    def resume(self):
        """Restart the vCPUs.

        :raises: kata_zun.exception.HypervisorError
        """

    @abc.abstractmethod
    def poll(self):
        """:returns: the VMM exit status, or None while it runs."""

    @abc.abstractmethod
    def wait(self, timeout=None):
        """Wait for the VMM to exit.

        :param timeout: seconds, or None for ever.
        :returns: the exit status, or None on timeout.
        """

    @abc.abstractmethod
    def stop(self, timeout):
        """Make sure the VM is gone: wait ``timeout`` seconds for the guest
        to power off, then quit over the control channel, then kill.

        :param timeout: seconds allowed for a guest power-off.
        :returns: None
        """


class Hypervisor(metaclass=abc.ABCMeta):
    """Starts VMs."""

    @abc.abstractmethod
    def start(self, config):
        """Boot a VM.

        :param config: a :class:`VMConfig`.
        :returns: a :class:`VM` whose agent socket accepts connections.
        :raises: kata_zun.exception.HypervisorError
        """
