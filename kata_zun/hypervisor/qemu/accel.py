"""Choosing the accelerator: KVM only when it really runs our guest.

``/dev/kvm`` existing proves little: nested or paravirtualized KVM (PVM)
can open fine and then fail to run a stock kernel. So ``auto`` boots the
real guest kernel under KVM with no initrd and accepts KVM only when the
serial console shows the kernel got as far as looking for its init (it then
panics, ``panic=-1`` reboots, ``-no-reboot`` ends QEMU). Anything else means
TCG, with one warning per process saying why.

The verdict is cached in ``<run_path>/accel-probe.json`` under a key made of
the host boot id, QEMU binary, kernel and CPU model (paths and mtimes), so
the probe runs again only after a reboot or an upgrade.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun.hypervisor.qemu import argv as qargv
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CACHE_FILE = 'accel-probe.json'
MAX_CACHE_ENTRIES = 16
# Serial output proving the kernel ran through its boot under KVM.
BOOT_MARKERS = ('Run /init', 'Kernel panic - not syncing', 'VFS: Unable')
_warned = []


@dataclasses.dataclass(frozen=True)
class Accel:
    name: str           # 'kvm' or 'tcg'
    reason: str


def _file_key(path):
    try:
        return [path, os.stat(path).st_mtime_ns]
    except OSError:
        return [path, None]


def probe_key(qemu_path, kernel, cpu_model, machine_type):
    """The cache key of one probe.

    :param qemu_path: the QEMU binary.
    :param kernel: the guest kernel booted by the probe.
    :param cpu_model: the ``-cpu`` model.
    :param machine_type: the machine type.
    :returns: a string.
    """
    return json.dumps([fileutils.boot_id(), _file_key(qemu_path),
                       _file_key(kernel), cpu_model, machine_type])


def probe_kvm(qemu_path, kernel, cpu_model, machine_type, timeout):
    """Boot ``kernel`` under KVM and see whether it really runs.

    :param qemu_path: the QEMU binary.
    :param kernel: the guest kernel (vmlinux or bzImage).
    :param cpu_model: the ``-cpu`` model.
    :param machine_type: the machine type.
    :param timeout: seconds the boot may take.
    :returns: (usable, reason) with reason a one-line explanation.
    :raises: nothing
    """
    if not os.path.exists('/dev/kvm'):
        return False, '/dev/kvm does not exist'
    try:
        os.close(os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return False, 'cannot open /dev/kvm: %s' % exc
    # vm imports this module: import it only when needed.
    from kata_zun.hypervisor.qemu import vm as qemu_vm
    tmp = tempfile.mkdtemp(prefix='kz-accel-')
    serial = os.path.join(tmp, 'console.log')
    log = os.path.join(tmp, 'qemu.log')
    argv = [qemu_path, '-nodefaults', '-no-user-config', '-nographic',
            '-no-reboot']
    for part in (qargv.Machine(machine_type), qargv.Accelerator('kvm'),
                 qargv.Cpu(cpu_model), qargv.Memory(128), qargv.Smp(1),
                 qargv.SerialConsole(serial)):
        argv.extend(part.args())
    argv += ['-kernel', kernel,
             '-append', 'console=ttyS0 reboot=k panic=-1 cryptomgr.notests']
    proc = None
    try:
        # Our own kernel with no initrd (no untrusted input): it runs
        # outside the jail, which needs the accelerator chosen first.
        with open(log, 'wb') as log_file:
            proc = qemu_vm.spawn(argv, log_file)
        deadline = time.monotonic() + timeout
        while True:
            # Poll before reading: output written just before an exit counts.
            exited = proc.poll() is not None
            if any(m in fileutils.tail(serial, 1 << 18) for m in BOOT_MARKERS):
                return True, 'the guest kernel booted under KVM'
            if exited:
                return False, 'QEMU exited with status %s under KVM: %s' % (
                    proc.returncode,
                    fileutils.tail(log, 600).replace('\n', ' | '))
            if time.monotonic() > deadline:
                return False, ('the guest kernel did not boot under KVM '
                               'within %s s' % timeout)
            time.sleep(0.05)
    except OSError as exc:
        return False, 'cannot run %s: %s' % (qemu_path, exc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(path, data):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fileutils.write_json(path, data)
    except OSError as exc:
        LOG.debug('Cannot cache the KVM probe in %s: %s', path, exc)


def detect(kernel, qemu_path=None, cpu_model=None, machine_type=None,
           probe=probe_kvm):
    """Whether KVM can run the guest here, from the cache or a probe.

    :param kernel: the guest kernel the VMs boot.
    :param qemu_path: QEMU binary (default from config).
    :param cpu_model: ``-cpu`` model (default from config).
    :param machine_type: machine type (default from config).
    :param probe: the probe function (tests replace it).
    :returns: :class:`Accel`, 'kvm' or 'tcg' with the reason.
    :raises: nothing
    """
    hv = CONF.kata_hypervisor
    qemu_path = qemu_path or hv.qemu_path
    cpu_model = cpu_model or hv.cpu_model
    machine_type = machine_type or hv.machine_type
    path = os.path.join(CONF.kata.run_path, CACHE_FILE)
    key = probe_key(qemu_path, kernel, cpu_model, machine_type)
    entry = _load_cache(path).get(key)
    if isinstance(entry, dict) and 'ok' in entry:
        return Accel('kvm' if entry['ok'] else 'tcg', entry['reason'])
    # One probe per host: 50 sandboxes starting at once on a fresh run
    # path each probed (15 s of a KVM boot attempt apiece on a host
    # without usable KVM). The others wait and read its result.
    with _probe_lock(path):
        cache = _load_cache(path)
        entry = cache.get(key)
        if isinstance(entry, dict) and 'ok' in entry:
            return Accel('kvm' if entry['ok'] else 'tcg', entry['reason'])
        started = time.monotonic()
        ok, reason = probe(qemu_path, kernel, cpu_model, machine_type,
                           hv.accel_probe_timeout)
        LOG.info('KVM probe took %.2f s: %s', time.monotonic() - started,
                 reason)
        entry = {'ok': ok, 'reason': reason, 'at': time.time()}
        cache[key] = entry
        for old in sorted(cache, key=lambda k: cache[k].get('at', 0)
                          if isinstance(cache[k], dict) else 0
                          )[:-MAX_CACHE_ENTRIES]:
            del cache[old]
        _save_cache(path, cache)
    return Accel('kvm' if entry['ok'] else 'tcg', entry['reason'])


@contextlib.contextmanager
def _probe_lock(cache_path):
    """flock next to the cache, polled (time.sleep yields in an
    eventlet-patched process); a lock that cannot be made is no lock.
    """
    try:
        fd = os.open(cache_path + '.lock',
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fileutils.poll_flock(fd)
        yield
    finally:
        os.close(fd)


def choose(kernel, qemu_path=None, cpu_model=None, machine_type=None,
           probe=probe_kvm):
    """The accelerator to start a VM with.

    :param kernel: the guest kernel the VM boots.
    :param qemu_path: QEMU binary (default from config).
    :param cpu_model: ``-cpu`` model (default from config).
    :param machine_type: machine type (default from config).
    :param probe: the probe function (tests replace it).
    :returns: :class:`Accel`.
    :raises: nothing
    """
    mode = CONF.kata_hypervisor.accelerator
    if mode in ('kvm', 'tcg'):
        return Accel(mode, '[kata_hypervisor] accelerator = %s' % mode)
    result = detect(kernel, qemu_path, cpu_model, machine_type, probe)
    if result.name == 'tcg' and not _warned:
        _warned.append(True)
        LOG.warning('KVM is not usable here, running VMs under TCG '
                    '(emulation, much slower): %s', result.reason)
    return result
