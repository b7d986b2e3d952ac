"""QEMU command lines built from small typed parts.

Every part is a frozen dataclass whose ``args()`` returns its share of the
argv list; :func:`build_argv` puts the parts of one VM together. QEMU never
sees a shell: values that land inside a QEMU option list (``key=value,...``)
go through :func:`_esc`, and names that reach the guest are validated.

The ``-device`` names differ per machine type: microvm has virtio-mmio
transports (``virtio-blk-device``), q35 has PCI (``virtio-blk-pci``).
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
# 0.13 s of console output.
BASE_KERNEL_PARAMS = ('console=ttyS0', 'reboot=k', 'panic=-1',
                      'cryptomgr.notests', 'rdinit=/init', 'quiet')

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
    name: str

    def args(self):
        return ['-name', _esc(self.name)]


@dataclasses.dataclass(frozen=True)
class Machine:
    """The machine type; RAM comes from the :class:`Memory` backend."""
    type: str = 'microvm'
    memory_backend: str = MEMORY_BACKEND_ID

    def args(self):
        if self.type == 'microvm':
            # No legacy timers/PIC/option ROMs: less to emulate at boot.
            # ACPI stays on: the cloud kernel finds virtio-mmio devices only
            # through microvm's ACPI tables. rtc=off cost 2 s per boot (and
            # the wall clock).
            opts = ['microvm', 'x-option-roms=off', 'pit=off', 'pic=off',
                    'rtc=on', 'isa-serial=on', 'acpi=on']
        elif self.type == 'q35':
            opts = ['q35', 'acpi=on', 'vmport=off']
        else:
            raise exception.HypervisorError(
                reason='unsupported machine type %r' % self.type)
        opts.append('memory-backend=%s' % self.memory_backend)
        return ['-machine', ','.join(opts)]


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str = 'tcg'

    def args(self):
        if self.name not in ('kvm', 'tcg'):
            raise exception.HypervisorError(
                reason='unsupported accelerator %r' % self.name)
        return ['-accel', self.name]


@dataclasses.dataclass(frozen=True)
class Cpu:
    model: str = 'max'

    def args(self):
        return ['-cpu', self.model]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Guest RAM from a memfd: QEMU's default anonymous RAM gets
    transparent huge pages, which made start times swing by 0.2 s.
    """
    size_mb: int
    backend_id: str = MEMORY_BACKEND_ID

    def args(self):
        size = '%dM' % self.size_mb
        return ['-m', size, '-object', 'memory-backend-memfd,id=%s,size=%s'
                % (self.backend_id, size)]


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
    """The guest's ttyS0, written to a file on the host."""
    path: str

    def args(self):
        return ['-chardev', 'file,id=console,path=%s' % _esc(self.path),
                '-serial', 'chardev:console']


@dataclasses.dataclass(frozen=True)
class AgentPort:
    """A virtio-serial port named ``agent.0`` bound to a listening unix
    socket; the host connects once QEMU runs (``wait=off``).
    """
    socket_path: str
    machine_type: str = 'microvm'

    def args(self):
        # Only the agent port exists (port 0 is reserved for a console);
        # fewer possible ports made no measurable boot-time difference.
        return ['-device', '%s,id=vser0,max_ports=2'
                % _device(self.machine_type, 'virtio-serial'),
                '-chardev', 'socket,id=agent,path=%s,server=on,wait=off'
                % _esc(self.socket_path),
                '-device', 'virtserialport,bus=vser0.0,chardev=agent,name=%s'
                % AGENT_PORT_NAME]


@dataclasses.dataclass(frozen=True)
class QmpSocket:
    socket_path: str

    def args(self):
        return ['-chardev', 'socket,id=qmp,path=%s,server=on,wait=off'
                % _esc(self.socket_path),
                '-mon', 'chardev=qmp,mode=control']


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    """A raw image as a virtio-blk disk the guest finds by ``serial``."""
    index: int
    path: str
    serial: str
    read_only: bool = False
    machine_type: str = 'microvm'

    def args(self):
        if not _SERIAL_RE.match(self.serial):
            raise exception.HypervisorError(
                reason='invalid disk serial %r' % self.serial)
        node = 'disk%d' % self.index
        # JSON -blockdev: the path needs no escaping at all.
        spec = {'driver': 'raw', 'node-name': node,
                'read-only': self.read_only,
                'file': {'driver': 'file', 'filename': self.path}}
        return ['-blockdev', json.dumps(spec, separators=(',', ':')),
                '-device', '%s,drive=%s,serial=%s'
                % (_device(self.machine_type, 'virtio-blk'), node,
                   self.serial)]


_TAP_RE = re.compile(r'^[A-Za-z0-9_.-]{1,15}$')
_MAC_RE = re.compile(r'^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$')


@dataclasses.dataclass(frozen=True)
class NetDevice:
    """A virtio-net NIC on an existing host tap device.

    QEMU opens the tap itself (``ifname``), runs no helper script (the
    seccomp filter forbids spawning anyway) and uses no vhost-net.
    """
    index: int
    tap: str
    mac: str
    machine_type: str = 'microvm'

    def args(self):
        if not _TAP_RE.fullmatch(self.tap):
            raise exception.HypervisorError(
                reason='invalid tap name %r' % self.tap)
        if not _MAC_RE.fullmatch(self.mac):
            raise exception.HypervisorError(
                reason='invalid unicast MAC address %r' % self.mac)
        netdev = 'net%d' % self.index
        device = '%s,netdev=%s,mac=%s' % (
            _device(self.machine_type, 'virtio-net'), netdev, self.mac)
        if self.machine_type == 'q35':
            device += ',romfile='      # no iPXE option ROM: we boot -kernel
        return ['-netdev', 'tap,id=%s,ifname=%s,script=no,downscript=no,'
                'vhost=off' % (netdev, self.tap),
                '-device', device]


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


def kernel_params(config, tsc_khz=None):
    """The guest kernel command line as a list of words.

    :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :param tsc_khz: host TSC kHz; None reads it with :func:`host_tsc_khz`.
    :returns: list of str.
    :raises: kata_zun.exception.HypervisorError if a caller's parameter is
        not a single word (it would smuggle in more parameters).
    """
    tsc = tsc_khz or host_tsc_khz()
    params = list(BASE_KERNEL_PARAMS[:3])
    if tsc:
        params.append('tsc_early_khz=%d' % tsc)
    params.extend(BASE_KERNEL_PARAMS[3:])
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


def build_argv(config, accel, machine_type, cpu_model, qemu_path,
               tsc_khz=None):
    """Compose the whole QEMU command line of one VM.

    :param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :param accel: 'kvm' or 'tcg'.
    :param machine_type: 'microvm' or 'q35'.
    :param cpu_model: the ``-cpu`` model.
    :param qemu_path: the QEMU binary.
    :param tsc_khz: host TSC kHz; None reads it from the host.
    :returns: the argv list, program first.
    :raises: kata_zun.exception.HypervisorError on invalid input.
    """
    qmp_path, agent_path = socket_paths(config.run_dir)
    parts = [Globals(), Name(config.name), Machine(machine_type),
             Accelerator(accel), Cpu(cpu_model), Memory(config.memory_mb),
             Smp(config.vcpus),
             Kernel(config.kernel, config.initrd,
                    tuple(kernel_params(config, tsc_khz))),
             SerialConsole(config.console_log), QmpSocket(qmp_path),
             AgentPort(agent_path, machine_type)]
    parts.extend(BlockDevice(i, d.path, d.serial, d.read_only, machine_type)
                 for i, d in enumerate(config.disks))
    parts.extend(NetDevice(i, n.tap, n.mac, machine_type)
                 for i, n in enumerate(config.nics))
    parts.append(Sandbox(CONF.kata_hypervisor.seccomp_sandbox))
    argv = [qemu_path]
    for part in parts:
        argv.extend(part.args())
    return argv
