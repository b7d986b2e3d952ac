"""QEMU command lines built from small typed parts.

Every part is a frozen dataclass whose ``args()`` returns its share of the
argv list; :func:`build_argv` puts the parts of one VM together. QEMU never
sees a shell: values that land inside a QEMU option list (``key=value,...``)
go through :func:`_esc`, and names that reach the guest are validated.

The ``-device`` names differ per machine type: microvm has virtio-mmio
transports (``virtio-blk-device``), q35 has PCI (``virtio-blk-pci``).

NICs that may come and go while the VM runs (Zun's network attach and
detach) live on PCIe root ports (:class:`PcieRootPort`): microvm then gets
its PCIe host bridge (``pcie=on``) and the guest kernel drives the ports'
native hotplug (``pcie_ports=native``: microvm's ACPI tables do not hand
hotplug control to the OS). The same parts give the QMP arguments of a
hotplug (:meth:`NetDevice.netdev_add_args`, :meth:`NetDevice.device_add_args`),
so the command line and QMP cannot disagree.
"""

import dataclasses
import errno
import json
import os
import re
import shlex
import typing

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF
LOG = logging.getLogger(__name__)

QMP_SOCKET = 'qmp.sock'
AGENT_SOCKET = 'agent.sock'
AGENT_PORT_NAME = 'agent.0'
MEMORY_BACKEND_ID = 'mem'
SANDBOX_OPTS = ('on,obsolete=deny,elevateprivileges=deny,spawn=deny,'
                'resourcecontrol=deny')

# The guest side of every boot. tsc_early_khz is added by kernel_params():
# without it microvm hangs in ~15 % of TCG boots (delay calibration).
# cryptomgr.notests saves 0.26 s of crypto self-tests under TCG, quiet
# 0.13 s of console output. tsc=reliable stops the clocksource watchdog,
# which woke every idle guest twice a second (a VM's TSC on one host is
# constant; each wakeup is host CPU, emulated under TCG).
BASE_KERNEL_PARAMS = ('console=ttyS0', 'reboot=k', 'panic=-1',
                      'cryptomgr.notests', 'tsc=reliable', 'rdinit=/init',
                      'quiet')

_UNIX_PATH_MAX = 107
_SERIAL_RE = re.compile(r'^[A-Za-z0-9_-]{1,20}$')
_TSC_DMESG_RE = re.compile(
    r'tsc: (Refined TSC clocksource calibration|Detected):? '
    r'(\d+)\.(\d+) MHz')


def _esc(value):
    """Quote one value for a QEMU option list: commas are doubled."""
    return str(value).replace(',', ',,')


def _device(machine_type, kind):
    """:returns: the transport-specific device name for ``kind``."""
    return '%s-%s' % (kind, 'pci' if machine_type == 'q35' else 'device')


@dataclasses.dataclass(frozen=True)
class Globals:
    """Flags every VM gets: no default devices, no user config, no display.

    ``-no-reboot`` turns a guest reboot (``panic=-1``, ``reboot=k``) into a
    QEMU exit, so the guest powering off or crashing always ends QEMU.
    """

    def args(self):
        return ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot']


@dataclasses.dataclass(frozen=True)
class Name:
    """The VM's name; ``debug-threads=on`` names QEMU's threads (``CPU
    0/TCG``...), so that the shim can tell a starved guest from an idle
    one by its vCPU threads (:mod:`kata_zun.shim.progress`).
    """
    name: str

    def args(self):
        return ['-name', '%s,debug-threads=on' % _esc(self.name)]


@dataclasses.dataclass(frozen=True)
class Machine:
    """The machine type; RAM comes from the :class:`Memory` backend."""
    type: str = 'microvm'
    memory_backend: str = MEMORY_BACKEND_ID
    pcie: bool = False               # microvm: add the PCIe host bridge

    def args(self):
        if self.type == 'microvm':
            # No legacy timers/PIC/option ROMs: less to emulate at boot.
            # ACPI stays on: the cloud kernel finds virtio-mmio devices only
            # through microvm's ACPI tables. rtc=off cost 2 s per boot (and
            # the wall clock).
            opts = ['microvm', 'x-option-roms=off', 'pit=off', 'pic=off',
                    'rtc=on', 'isa-serial=on', 'acpi=on']
            if self.pcie:
                opts.append('pcie=on')
        elif self.type == 'q35':
            opts = ['q35', 'acpi=on', 'vmport=off']
        else:
            raise exception.HypervisorError(
                reason='unsupported machine type %r' % self.type)
        opts.append('memory-backend=%s' % self.memory_backend)
        return ['-machine', ','.join(opts)]


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """``tcg_cache_mb`` bounds TCG's translation cache (QEMU's default
    is 1 GiB per VM, more than any memory limit around QEMU allows).
    """
    name: str = 'tcg'
    tcg_cache_mb: typing.Optional[int] = None

    def args(self):
        if self.name not in ('kvm', 'tcg'):
            raise exception.HypervisorError(
                reason='unsupported accelerator %r' % self.name)
        if self.name == 'tcg' and self.tcg_cache_mb:
            return ['-accel', 'tcg,tb-size=%d' % int(self.tcg_cache_mb)]
        return ['-accel', self.name]


# CPU features a TCG guest is better off without: with them the guest
# kernel's copy_*_user and clear_user, and glibc's memcpy, use
# ``rep movsb``/``rep stosb``, which TCG runs one byte per loop. Without
# them they move 8 or 16 bytes a step: measured on this 2-core host,
# guest -> host stdout through a pipe went from 82 to 301 MB/s and a raw
# virtio-serial stream from 207 to 729 MB/s. Under KVM the host CPU runs
# them natively and they stay.
TCG_SLOW_FEATURES = ('erms', 'fsrm')


@dataclasses.dataclass(frozen=True)
class Cpu:
    """``-cpu``: the operator's model; under TCG, without the string
    instructions TCG runs byte by byte (:data:`TCG_SLOW_FEATURES`), unless
    the model names them itself.
    """
    model: str = 'max'
    accel: str = 'kvm'

    @property
    def effective(self):
        """:returns: the ``-cpu`` value QEMU gets."""
        if self.accel != 'tcg':
            return self.model
        named = {word.lstrip('+-').split('=')[0]
                 for word in self.model.split(',')[1:]}
        dropped = [f for f in TCG_SLOW_FEATURES if f not in named]
        return ','.join([self.model] + ['-' + f for f in dropped])

    def args(self):
        return ['-cpu', self.effective]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Guest RAM from a memfd: QEMU's default anonymous RAM gets
    transparent huge pages, which made start times swing by 0.2 s.
    """
    size_mb: int
    backend_id: str = MEMORY_BACKEND_ID
    # vhost-user devices (virtiofsd) map guest RAM: it must be shared
    # (memfd's default, spelled out when it matters).
    share: bool = False

    def args(self):
        size = '%dM' % self.size_mb
        backend = 'memory-backend-memfd,id=%s,size=%s' % (self.backend_id,
                                                          size)
        if self.share:
            backend += ',share=on'
        return ['-m', size, '-object', backend]

    def fds(self):
        """:returns: the fds QEMU must inherit for this part: none."""
        return ()


@dataclasses.dataclass(frozen=True)
class FileMemory:
    """Guest RAM in a file (VM templates, see
    :mod:`kata_zun.hypervisor.template`).

    ``share=True``: a template's RAM, written through to the file, so a
    paused template leaves its memory there. ``share=False``: a clone's
    RAM, the same file mapped private copy-on-write: pages stay shared
    with the template (and other clones) until the guest writes them.
    """
    size_mb: int
    path: str
    share: bool
    backend_id: str = MEMORY_BACKEND_ID

    def args(self):
        size = '%dM' % self.size_mb
        return ['-m', size, '-object',
                'memory-backend-file,id=%s,size=%s,mem-path=%s,share=%s,'
                'prealloc=off' % (self.backend_id, size, _esc(self.path),
                                  'on' if self.share else 'off')]

    def fds(self):
        """:returns: the fds QEMU must inherit for this part: none."""
        return ()


@dataclasses.dataclass(frozen=True)
class SealedMemory:
    """A clone's RAM: the template's sealed memfd
    (:mod:`kata_zun.hypervisor.ramholder`), inherited as ``fd`` and
    mapped private copy-on-write. QEMU 7.2 takes RAM only from a path
    and opens it read-write: ``/proc/self/fd/N`` reopens the memfd,
    whose seals refuse every change but a private mapping's own copies.
    A jail mounts a ``/proc`` that shows QEMU only itself for this.
    """
    size_mb: int
    fd: int
    backend_id: str = MEMORY_BACKEND_ID

    def args(self):
        return FileMemory(self.size_mb, '/proc/self/fd/%d' % _fd(self.fd),
                          share=False, backend_id=self.backend_id).args()

    def fds(self):
        """:returns: the fds QEMU must inherit for this part."""
        return (self.fd,)


@dataclasses.dataclass(frozen=True)
class Incoming:
    """Wait for a device state (QMP ``migrate-incoming``) instead of
    booting: a clone of a VM template.
    """

    def args(self):
        return ['-incoming', 'defer']


@dataclasses.dataclass(frozen=True)
class Smp:
    vcpus: int = 1

    def args(self):
        return ['-smp', str(self.vcpus)]


@dataclasses.dataclass(frozen=True)
class Kernel:
    kernel: str
    initrd: str
    append: typing.Tuple[str, ...] = ()

    def args(self):
        return ['-kernel', self.kernel, '-initrd', self.initrd,
                '-append', ' '.join(self.append)]


@dataclasses.dataclass(frozen=True)
class SerialConsole:
    """The guest's ttyS0: written to a file on the host, or (``fd``) to
    a connected socket whose other end the VM's owner reads and caps.
    """
    path: typing.Optional[str] = None
    fd: typing.Optional[int] = None

    def args(self):
        if self.fd is not None:
            chardev = 'socket,id=console,fd=%d,server=off' % _fd(self.fd)
        else:
            chardev = 'file,id=console,path=%s' % _esc(self.path)
        return ['-chardev', chardev, '-serial', 'chardev:console']


def _fd(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        raise exception.HypervisorError(
            reason='invalid file descriptor %r' % (value,))
    return value


def _listening(path, fd):
    """The chardev options of a unix socket QEMU listens on: one it
    creates at ``path``, or one already bound and listening (``fd``).
    """
    if fd is not None:
        return 'fd=%d,server=on,wait=off' % _fd(fd)
    return 'path=%s,server=on,wait=off' % _esc(path)


@dataclasses.dataclass(frozen=True)
class AgentPort:
    """A virtio-serial port named ``agent.0`` bound to a listening unix
    socket; the host connects once QEMU runs (``wait=off``).
    """
    socket_path: typing.Optional[str]
    machine_type: str = 'microvm'
    fd: typing.Optional[int] = None

    def args(self):
        # Only the agent port exists (port 0 is reserved for a console);
        # fewer possible ports made no measurable boot-time difference.
        return ['-device', '%s,id=vser0,max_ports=2'
                % _device(self.machine_type, 'virtio-serial'),
                '-chardev', 'socket,id=agent,%s'
                % _listening(self.socket_path, self.fd),
                '-device', 'virtserialport,bus=vser0.0,chardev=agent,name=%s'
                % AGENT_PORT_NAME]


@dataclasses.dataclass(frozen=True)
class FreePageReporting:
    """A virtio balloon used only for free page reporting: the guest
    kernel hands pages it has freed back to QEMU, which discards them, so
    an idle VM's host memory shrinks to what its guest really uses.

    The balloon itself is never inflated (nothing sets a target) and
    ``deflate-on-oom`` is off: the guest can only give memory back, never
    take more than its ``-m``.
    """
    machine_type: str = 'microvm'

    def args(self):
        return ['-device', '%s,id=balloon0,free-page-reporting=on,'
                'deflate-on-oom=off' % _device(self.machine_type,
                                               'virtio-balloon')]


@dataclasses.dataclass(frozen=True)
class QmpSocket:
    socket_path: typing.Optional[str]
    fd: typing.Optional[int] = None

    def args(self):
        return ['-chardev', 'socket,id=qmp,%s'
                % _listening(self.socket_path, self.fd),
                '-mon', 'chardev=qmp,mode=control']


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    """A raw image as a virtio-blk disk the guest finds by ``serial``.

    With ``fd`` QEMU gets the image as an open file descriptor (fd set
    ``index`` + 1, opened read-only for a read-only disk) and never opens
    the path itself. ``host_device``: a host block device (QEMU's
    ``file`` driver takes regular files only).
    """
    index: int
    path: typing.Optional[str]
    serial: str
    read_only: bool = False
    machine_type: str = 'microvm'
    fd: typing.Optional[int] = None
    host_device: bool = False

    def args(self):
        if not _SERIAL_RE.match(self.serial):
            raise exception.HypervisorError(
                reason='invalid disk serial %r' % self.serial)
        node = 'disk%d' % self.index
        pre = []
        filename = self.path
        if self.fd is not None:
            fdset = self.index + 1
            pre = ['-add-fd', 'fd=%d,set=%d' % (_fd(self.fd), fdset)]
            filename = '/dev/fdset/%d' % fdset
        # JSON -blockdev: the path needs no escaping at all.
        spec = {'driver': 'raw', 'node-name': node,
                'read-only': self.read_only,
                'file': {'driver': ('host_device' if self.host_device
                                    else 'file'),
                         'filename': filename}}
        return pre + [
            '-blockdev', json.dumps(spec, separators=(',', ':')),
            '-device', '%s,drive=%s,serial=%s'
            % (_device(self.machine_type, 'virtio-blk'), node, self.serial)]


_TAG_RE = re.compile(r'^[A-Za-z0-9_-]{1,36}$')


@dataclasses.dataclass(frozen=True)
class VhostUserFs:
    """A virtio-fs device served by a virtiofsd over vhost-user; the
    guest mounts it by ``tag``.

    QEMU gets the vhost-user connection as ``fd`` (a unix socket already
    connected to virtiofsd: a jailed QEMU cannot reach a socket path).
    """
    index: int
    tag: str
    fd: int
    machine_type: str = 'microvm'

    def args(self):
        if not _TAG_RE.match(self.tag):
            raise exception.HypervisorError(
                reason='invalid virtio-fs tag %r' % self.tag)
        chardev = 'vfs%d' % self.index
        return ['-chardev', 'socket,id=%s,fd=%d' % (chardev, _fd(self.fd)),
                '-device', '%s,chardev=%s,tag=%s,queue-size=1024'
                % (_device(self.machine_type, 'vhost-user-fs'), chardev,
                   self.tag)]


@dataclasses.dataclass(frozen=True)
class ModernMmio:
    """virtio 1.0 on microvm's virtio-mmio transports (QEMU makes them
    legacy by default), which vhost-user back ends such as virtiofsd
    require.
    """

    def args(self):
        return ['-global', 'virtio-mmio.force-legacy=false']


_TAP_RE = re.compile(r'^[A-Za-z0-9_.-]{1,15}$')
_MAC_RE = re.compile(r'^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$')
# Enough for Zun's networks per container (kata_zun.network.neutron).
MAX_PCI_SLOTS = 8


def root_port_id(slot):
    """:returns: the QEMU id of hotplug root port ``slot``."""
    return 'rp%d' % slot


@dataclasses.dataclass(frozen=True)
class PcieRootPort:
    """A PCIe root port that can take one hotplugged device.

    ``chassis``/``slot`` must be unique per port: the guest names its
    hotplug slots after them.
    """
    slot: int

    def args(self):
        if not 0 <= self.slot < MAX_PCI_SLOTS:
            raise exception.HypervisorError(
                reason='invalid PCI slot %r' % self.slot)
        return ['-device', 'pcie-root-port,id=%s,bus=pcie.0,chassis=%d,'
                'slot=%d' % (root_port_id(self.slot), self.slot + 1,
                             self.slot + 1)]


# virtio-net features a NIC without checksum offload does not offer: the
# host finishing partial checksums (CSUM) and those that need it (the
# virtio spec: segmentation offloads require CSUM). The guest sends every
# frame whole and checksummed.
NO_OFFLOAD_FEATURES = ('csum', 'host_tso4', 'host_tso6', 'host_ecn',
                       'host_ufo')


@dataclasses.dataclass(frozen=True)
class NetDevice:
    """A virtio-net NIC on an existing host tap device.

    QEMU opens the tap itself (``ifname``), or gets it open (``fd``: a
    jailed QEMU cannot open it), runs no helper script (the seccomp
    filter forbids spawning anyway) and uses no vhost-net.

    With a ``slot`` the NIC is a virtio-net-pci device on that hotplug
    root port, with ids derived from the tap (plus ``generation`` for
    hotplugs, so a re-added tap never meets a lingering old id): it can
    be removed while the VM runs. Without one it is on the machine's own
    transport (virtio-mmio on microvm) for the VM's whole life.
    """
    index: int
    tap: str
    mac: str
    machine_type: str = 'microvm'
    slot: typing.Optional[int] = None
    generation: int = 0
    fd: typing.Optional[int] = None
    checksum_offload: bool = True

    def _check(self):
        if not _TAP_RE.fullmatch(self.tap):
            raise exception.HypervisorError(
                reason='invalid tap name %r' % self.tap)
        if not _MAC_RE.fullmatch(self.mac):
            raise exception.HypervisorError(
                reason='invalid unicast MAC address %r' % self.mac)
        if self.slot is not None and not 0 <= self.slot < MAX_PCI_SLOTS:
            raise exception.HypervisorError(
                reason='invalid PCI slot %r' % self.slot)

    def _suffix(self):
        return '-%d' % self.generation if self.generation else ''

    @property
    def netdev_id(self):
        if self.slot is None:
            return 'net%d' % self.index
        return 'net-%s%s' % (self.tap, self._suffix())

    @property
    def device_id(self):
        """:returns: the QEMU device id (None for a fixed NIC)."""
        if self.slot is None:
            return None
        return 'nic-%s%s' % (self.tap, self._suffix())

    def args(self):
        self._check()
        if self.slot is None:
            device = '%s,netdev=%s,mac=%s' % (
                _device(self.machine_type, 'virtio-net'), self.netdev_id,
                self.mac)
            if self.machine_type == 'q35':
                device += ',romfile='  # no iPXE option ROM: we boot -kernel
        else:
            device = ('virtio-net-pci,id=%s,netdev=%s,mac=%s,bus=%s,'
                      'romfile=' % (self.device_id, self.netdev_id, self.mac,
                                    root_port_id(self.slot)))
        if not self.checksum_offload:
            device += ''.join(',%s=off' % f for f in NO_OFFLOAD_FEATURES)
        if self.fd is not None:
            netdev = 'tap,id=%s,fd=%d,vhost=off' % (self.netdev_id,
                                                    _fd(self.fd))
        else:
            netdev = ('tap,id=%s,ifname=%s,script=no,downscript=no,'
                      'vhost=off' % (self.netdev_id, self.tap))
        return ['-netdev', netdev, '-device', device]

    def netdev_add_args(self, fd_name=None):
        """:param fd_name: the name under which the tap's open fd was
            given to QEMU (QMP ``getfd``); None: QEMU opens the tap.
        :returns: the QMP ``netdev_add`` arguments of this NIC's tap.
        """
        self._check()
        if fd_name is not None:
            return {'type': 'tap', 'id': self.netdev_id, 'fd': fd_name,
                    'vhost': False}
        return {'type': 'tap', 'id': self.netdev_id, 'ifname': self.tap,
                'script': 'no', 'downscript': 'no', 'vhost': False}

    def device_add_args(self):
        """:returns: the QMP ``device_add`` arguments (slot NICs only)."""
        self._check()
        if self.slot is None:
            raise exception.HypervisorError(
                reason='NIC %s has no hotplug slot' % self.tap)
        args = {'driver': 'virtio-net-pci', 'id': self.device_id,
                'netdev': self.netdev_id, 'mac': self.mac,
                'bus': root_port_id(self.slot), 'romfile': ''}
        if not self.checksum_offload:
            args.update((f, False) for f in NO_OFFLOAD_FEATURES)
        return args


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """QEMU's seccomp filter; stricter than Kata's default."""
    enabled: bool = True

    def args(self):
        return ['-sandbox', SANDBOX_OPTS] if self.enabled else []


_TSC_SYSFS = '/sys/devices/system/cpu/cpu0/tsc_freq_khz'
_KMSG = '/dev/kmsg'
_CPUINFO = '/proc/cpuinfo'


def _read_tsc_khz():
    """Find the host TSC rate in kHz, or None.

    The sysfs file exists on few kernels; the kernel log line is what
    ``dmesg`` shows (the refined calibration beats the first guess);
    /proc/cpuinfo's ``cpu MHz`` equals the TSC rate on VMs and machines
    without frequency scaling.
    """
    try:
        with open(_TSC_SYSFS) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    found = {}
    try:
        # Unbuffered FileIO rather than os.read: eventlet's green os.read
        # waits for more data where /dev/kmsg says EAGAIN (end of the log).
        kmsg = open(_KMSG, 'rb', buffering=0,
                    opener=lambda p, f: os.open(p, f | os.O_NONBLOCK))
    except OSError:
        kmsg = None
    if kmsg is not None:
        with kmsg:
            for _ in range(100000):
                try:
                    rec = kmsg.read(8192)   # one record per read
                except OSError as exc:
                    if exc.errno == errno.EPIPE:
                        continue    # a record was overwritten: read on
                    break
                if not rec:
                    break           # None: EAGAIN, the end of the log
                for m in _TSC_DMESG_RE.finditer(rec.decode('utf-8',
                                                           'replace')):
                    found[m.group(1)] = (int(m.group(2)) * 1000 +
                                         int(m.group(3).ljust(3, '0')[:3]))
    for key in ('Refined TSC clocksource calibration', 'Detected'):
        if key in found:
            return found[key]
    try:
        with open(_CPUINFO) as f:
            for line in f:
                if line.startswith('cpu MHz'):
                    return int(round(float(line.split(':')[1]) * 1000))
    except (OSError, ValueError, IndexError):
        pass
    return None


_tsc_cache = []


def host_tsc_khz():
    """The host TSC rate passed to the guest as ``tsc_early_khz``.

    :returns: kHz as an int, or None when it cannot be found.
    :raises: nothing
    """
    if CONF.kata_hypervisor.tsc_khz:
        return CONF.kata_hypervisor.tsc_khz
    if not _tsc_cache:
        _tsc_cache.append(_read_tsc_khz())
        if _tsc_cache[0] is None:
            LOG.warning('Host TSC rate unknown: microvm guests may hang at '
                        'boot under TCG; set [kata_hypervisor] tsc_khz.')
    return _tsc_cache[0]


def kernel_params(config, tsc_khz=None, machine_type='microvm'):
    """The guest kernel command line as a list of words.

    :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :param tsc_khz: host TSC kHz; None reads it with :func:`host_tsc_khz`.
    :param machine_type: 'microvm' or 'q35'.
    :returns: list of str.
    :raises: kata_zun.exception.HypervisorError if a caller's parameter is
        not a single word (it would smuggle in more parameters).
    """
    tsc = tsc_khz or host_tsc_khz()
    params = list(BASE_KERNEL_PARAMS[:3])
    if tsc:
        params.append('tsc_early_khz=%d' % tsc)
    params.extend(BASE_KERNEL_PARAMS[3:])
    if config.pci_slots and machine_type == 'microvm':
        # microvm's ACPI _OSC grants no native hotplug: take it anyway
        # (q35 has ACPI hotplug on its root ports and must not).
        params.append('pcie_ports=native')
    for word in config.kernel_params:
        if not word or re.search(r'\s', word):
            raise exception.HypervisorError(
                reason='invalid kernel parameter %r' % word)
        params.append(word)
    params.extend(shlex.split(CONF.kata_guest.kernel_params))
    return params


def socket_paths(run_dir):
    """:param run_dir: the VM's run directory.
    :returns: (qmp socket path, agent socket path).
    :raises: kata_zun.exception.HypervisorError if a path is too long for a
        unix socket.
    """
    paths = (os.path.join(run_dir, QMP_SOCKET),
             os.path.join(run_dir, AGENT_SOCKET))
    for path in paths:
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise exception.HypervisorError(
                reason='socket path too long (max %d bytes): %s'
                % (_UNIX_PATH_MAX, path))
    return paths


def boot_nics(config, machine_type, tap_fds=None):
    """The NICs a VM boots with, in slot i when it has hotplug slots.

    :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :param machine_type: 'microvm' or 'q35'.
    :param tap_fds: open tap fds, one per NIC, or None.
    :returns: list of :class:`NetDevice` (the QEMU VM finds the ids of
        its boot NICs here, as the command line got them).
    """
    return [NetDevice(i, n.tap, n.mac, machine_type,
                      slot=i if config.pci_slots else None,
                      fd=tap_fds[i] if tap_fds else None,
                      checksum_offload=n.checksum_offload)
            for i, n in enumerate(config.nics)]


@dataclasses.dataclass(frozen=True)
class Handles:
    """How a jailed QEMU reaches what it needs: the kernel and initrd at
    their paths inside the jail, everything else as inherited fds.
    """
    kernel: str
    initrd: str
    qmp_fd: int
    agent_fd: int
    console_fd: int
    disk_fds: typing.Tuple[int, ...] = ()
    tap_fds: typing.Tuple[int, ...] = ()
    fs_fds: typing.Tuple[int, ...] = ()     # connected to each virtiofsd

    def fds(self):
        """:returns: every fd QEMU must inherit."""
        return ((self.qmp_fd, self.agent_fd, self.console_fd) +
                tuple(self.disk_fds) + tuple(self.tap_fds) +
                tuple(self.fs_fds))


def build_argv(config, accel, machine_type, cpu_model, qemu_path,
               tsc_khz=None, handles=None, tcg_cache_mb=None, memory=None,
               incoming=False):
    """Compose the whole QEMU command line of one VM.

    :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :param accel: 'kvm' or 'tcg'.
    :param machine_type: 'microvm' or 'q35'.
    :param cpu_model: the ``-cpu`` model.
    :param qemu_path: the QEMU binary.
    :param tsc_khz: host TSC kHz; None reads it from the host.
    :param handles: a :class:`Handles` for a jailed QEMU, or None for
        one that opens its files and sockets by path.
    :param tcg_cache_mb: TCG translation cache size (None: QEMU's).
    :param memory: the RAM part (e.g. a :class:`FileMemory` of a VM
        template); None: a :class:`Memory` of ``config.memory_mb``.
    :param incoming: wait for a device state (:class:`Incoming`).
    :returns: the argv list, program first.
    :raises: kata_zun.exception.HypervisorError on invalid input.
    """
    qmp_path, agent_path = socket_paths(config.run_dir)
    slots = config.pci_slots
    if not 0 <= slots <= MAX_PCI_SLOTS:
        raise exception.HypervisorError(
            reason='pci_slots must be within 0..%d' % MAX_PCI_SLOTS)
    if slots and len(config.nics) > slots:
        raise exception.HypervisorError(
            reason='%d NICs do not fit in %d PCI slots'
            % (len(config.nics), slots))
    h = handles
    if h is not None and (len(h.disk_fds) != len(config.disks) or
                          len(h.tap_fds) != len(config.nics) or
                          len(h.fs_fds) != len(config.shared_dirs)):
        raise exception.HypervisorError(
            reason='one fd per disk, NIC and shared directory is needed')
    if config.shared_dirs and h is None:
        raise exception.HypervisorError(
            reason='shared directories need their virtiofsd connections')
    params = tuple(kernel_params(config, tsc_khz, machine_type))
    parts = [Globals(), Name(config.name),
             Machine(machine_type, pcie=bool(slots)),
             Accelerator(accel, tcg_cache_mb), Cpu(cpu_model, accel),
             memory or Memory(config.memory_mb,
                              share=bool(config.shared_dirs)),
             Smp(config.vcpus)]
    if h is None:
        parts += [Kernel(config.kernel, config.initrd, params),
                  SerialConsole(config.console_log), QmpSocket(qmp_path),
                  AgentPort(agent_path, machine_type)]
    else:
        parts += [Kernel(h.kernel, h.initrd, params),
                  SerialConsole(fd=h.console_fd), QmpSocket(None, h.qmp_fd),
                  AgentPort(None, machine_type, h.agent_fd)]
    if CONF.kata_hypervisor.free_page_reporting:
        parts.append(FreePageReporting(machine_type))
    parts.extend(BlockDevice(i, d.path, d.serial, d.read_only, machine_type,
                             fd=h.disk_fds[i] if h else None,
                             host_device=d.host_device)
                 for i, d in enumerate(config.disks))
    if config.shared_dirs and machine_type == 'microvm':
        parts.append(ModernMmio())
    parts.extend(VhostUserFs(i, d.tag, h.fs_fds[i], machine_type)
                 for i, d in enumerate(config.shared_dirs))
    parts.extend(PcieRootPort(i) for i in range(slots))
    parts.extend(boot_nics(config, machine_type, h.tap_fds if h else None))
    if incoming:
        parts.append(Incoming())
    parts.append(Sandbox(CONF.kata_hypervisor.seccomp_sandbox))
    argv = [qemu_path]
    for part in parts:
        argv.extend(part.args())
    return argv
