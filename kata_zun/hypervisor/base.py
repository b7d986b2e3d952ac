"""The one small VM lifecycle interface.

A sandbox shim owns exactly one VM. It asks a :class:`Hypervisor` to start
a VM from a :class:`VMConfig` and then drives the returned :class:`VM`.
Implementations live in sub-packages (``qemu``); policy (when to pause,
how long to wait) stays with the caller.
"""

import abc
import dataclasses
import typing

from kata_zun import exception


def vm_name(sandbox_id):
    """:returns: the name of a sandbox's VM (also its host cgroup's and
        its uid lease's).
    """
    return 'kz-' + sandbox_id[:12]


@dataclasses.dataclass(frozen=True)
class Disk:
    """A raw block image given to the guest as a virtio-blk device.

    The guest finds it by ``serial`` (``/sys/block/vd*/serial``), never by
    probe order. ``host_device``: ``path`` is a host block device (a
    Cinder volume), not an image file.
    """
    path: str
    serial: str
    read_only: bool = False
    host_device: bool = False


@dataclasses.dataclass(frozen=True)
class SharedDir:
    """A host directory (or one host file) shared with the guest through
    virtio-fs.

    One virtiofsd serves it, confined to ``source`` (read-only on the
    host side too when ``read_only``); the guest mounts it by ``tag``.
    With ``file_name`` set, ``source`` is a regular file and the export
    is a directory holding that one file under that name (never the
    file's siblings).
    """
    source: str
    tag: str
    read_only: bool = False
    file_name: typing.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Nic:
    """A virtio-net NIC backed by a host tap device that already exists.

    The guest finds it by ``mac``, never by probe order.

    ``checksum_offload`` False: the guest computes its packets' checksums
    and segments them itself (virtio-net without the CSUM feature), for a
    tap whose reader cannot finish partial checksums (Open vSwitch's
    userspace datapath: its conntrack counts them bad and the firewall
    drops the packets).
    """
    tap: str
    mac: str
    checksum_offload: bool = True


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
    # Hotplug slots for NICs: 0 = the NICs are fixed for the VM's life;
    # else every NIC sits in a slot and NICs can be added and removed
    # while it runs, up to this many at a time.
    pci_slots: int = 0
    # Host CPU time the VM may use, in CPUs (e.g. 0.5); None: no quota.
    # Enforced on the host, whatever the guest kernel does.
    cpu_quota: typing.Optional[float] = None
    # Dedicated host CPUs and NUMA nodes (kata_zun.jail.cpuset.plan): all
    # of QEMU's threads run on those CPUs, its memory comes from those
    # nodes. (): not pinned.
    cpuset_cpus: typing.Tuple[int, ...] = ()
    cpuset_mems: typing.Tuple[int, ...] = ()
    shared_dirs: typing.Tuple[SharedDir, ...] = ()


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

    def add_nic(self, nic):
        """Hotplug a NIC into a free slot (see :attr:`VMConfig.pci_slots`).

        The guest sees a new interface with ``nic.mac``; configuring it
        is the agent's job.

        :param nic: a :class:`Nic` whose tap exists.
        :returns: None
        :raises: kata_zun.exception.NicHotplugError
        """
        raise exception.NicHotplugError(
            reason='this hypervisor cannot hotplug NICs')

    def remove_nic(self, tap):
        """Take a NIC away from the guest.

        The tap is cut from the VM at once, whatever the guest does; the
        device itself leaves when the guest lets go of its slot (the
        agent powers it off first; else the hypervisor asks the guest).

        :param tap: the host tap of the NIC.
        :returns: True if the device is gone from the guest, False if it
            is still leaving (its slot is free once it is gone).
        :raises: kata_zun.exception.NicHotplugError
        """
        raise exception.NicHotplugError(
            reason='this hypervisor cannot hotplug NICs')

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
    def start(self, config, admit=None):
        """Boot a VM.

        :param config: a :class:`VMConfig`.
        :param admit: optional callable(mib) called before the VM runs
            with the host memory, in MiB, the start may touch before its
            boot is done (the path taken decides, e.g. a restore that
            shares its template's RAM costs less than a cold boot);
            called again if the start falls back to another path. It raises
            to refuse (:mod:`kata_zun.runtime.admission`).
        :returns: a :class:`VM` whose agent socket accepts connections.
        :raises: kata_zun.exception.HypervisorError, or what ``admit``
            raises (InsufficientResources)
        """
