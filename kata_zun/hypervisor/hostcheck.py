"""Can this host run kata-zun VMs? (``kata-zun check``)

In the spirit of ``kata-runtime check``: every check reports what it found.
A check that is not ``required`` only informs: KVM being unusable is not a
failure, VMs then run under TCG.
"""

import dataclasses
import os
import re
import subprocess

from kata_zun import conf
from kata_zun import exception
from kata_zun.guest import builder
from kata_zun.hypervisor.qemu import accel

CONF = conf.CONF


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _cpu():
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
    except OSError as exc:
        return CheckResult('cpu', False, str(exc), required=False)
    vendor = re.search(r'^vendor_id\s*:\s*(.*)$', text, re.M)
    flags = re.search(r'^flags\s*:\s*(.*)$', text, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    virt = sorted(flags & {'vmx', 'svm'})
    return CheckResult(
        'cpu', bool(virt), '%s, hardware virtualization: %s' % (
            vendor.group(1) if vendor else 'unknown vendor',
            ', '.join(virt) or 'none (no vmx/svm flag)'), required=False)


def _kvm(kernel):
    forced = CONF.kata_hypervisor.accelerator == 'kvm'
    if not os.path.exists('/dev/kvm'):
        return CheckResult('kvm', False, '/dev/kvm does not exist; VMs run '
                                         'under TCG', required=forced)
    try:
        os.close(os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return CheckResult('kvm', False, 'cannot open /dev/kvm: %s; VMs run '
                                         'under TCG' % exc, required=forced)
    if kernel is None:
        return CheckResult('kvm', False, '/dev/kvm opens; not probed (no '
                                         'guest kernel yet)', required=False)
    result = accel.detect(kernel)
    if result.name == 'kvm':
        return CheckResult('kvm', True, result.reason, required=forced)
    return CheckResult('kvm', False, '%s; VMs run under TCG' % result.reason,
                       required=forced)


def _vhost_vsock():
    # Informational: the agent link is virtio-serial, which works on every
    # host; a vsock transport is not implemented yet.
    if os.path.exists('/dev/vhost-vsock'):
        return CheckResult('vhost-vsock', True, '/dev/vhost-vsock present '
                           '(agent link: virtio-serial)', required=False)
    return CheckResult('vhost-vsock', False,
                       '/dev/vhost-vsock missing; the agent link uses '
                       'virtio-serial', required=False)


def _qemu_output(*args):
    proc = subprocess.run([CONF.kata_hypervisor.qemu_path] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)
    return proc.stdout.decode('utf-8', 'replace')


def _qemu():
    path = CONF.kata_hypervisor.qemu_path
    if not os.access(path, os.X_OK):
        return [CheckResult('qemu', False, '%s is not executable' % path)]
    results = []
    try:
        version = _qemu_output('-version').splitlines()[0]
        machines = _qemu_output('-machine', 'help')
        help_text = _qemu_output('-help')
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return [CheckResult('qemu', False, 'cannot run %s: %s' % (path, exc))]
    results.append(CheckResult('qemu', True, '%s: %s' % (path, version)))
    mtype = CONF.kata_hypervisor.machine_type
    has_machine = re.search(r'^%s\s' % re.escape(mtype), machines, re.M)
    results.append(CheckResult(
        'qemu-machine', bool(has_machine), 'machine type %s %s' % (
            mtype, 'supported' if has_machine else 'NOT supported')))
    sandbox = CONF.kata_hypervisor.seccomp_sandbox
    has_sandbox = '-sandbox' in help_text
    results.append(CheckResult(
        'qemu-sandbox', has_sandbox,
        '-sandbox (seccomp) %s' % ('supported' if has_sandbox else
                                   'NOT supported: set [kata_hypervisor] '
                                   'seccomp_sandbox = false'),
        required=sandbox))
    return results


def _guest():
    try:
        assets = builder.find()
    except exception.KataZunException as exc:
        return CheckResult('guest-assets', False, exc.message), None
    return CheckResult('guest-assets', True, 'version %s: %s, %s' % (
        assets.version, assets.kernel, assets.initrd)), assets.kernel


def _memory():
    hv = CONF.kata_hypervisor
    need = hv.default_memory_mb + hv.memory_overhead_mb
    from kata_zun.runtime import admission
    try:
        avail = admission.mem_available_mib()
    except exception.InsufficientResources as exc:
        return CheckResult('memory', False, exc.message)
    return CheckResult('memory', avail >= need,
                       '%d MiB available, one default VM needs ~%d MiB'
                       % (avail, need))


def _directory(name, path):
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    ok = os.access(probe, os.W_OK | os.X_OK)
    return CheckResult(name, ok, '%s %s' % (
        path, 'is writable' if ok else
        'is not writable (by uid %d): check %s' % (os.geteuid(), probe)))


def run_checks():
    """Check this host.

    :returns: list of :class:`CheckResult`, in a stable order.
    :raises: nothing
    """
    guest, kernel = _guest()
    results = [_cpu(), _kvm(kernel), _vhost_vsock()]
    results.extend(_qemu())
    results.extend([guest, _memory(),
                    _directory('state-path', CONF.kata.state_path),
                    _directory('run-path', CONF.kata.run_path)])
    from kata_zun.jail import check as jail_check
    results.extend(jail_check.run_checks(CheckResult))
    return results


def can_run(results):
    """:param results: list of :class:`CheckResult`.
    :returns: True if every required check passed.
    """
    return all(r.ok for r in results if r.required)
