"""Build VM templates with QEMU and start sandboxes from them.

:func:`try_restore` is the fast start path of
:meth:`kata_zun.hypervisor.qemu.vm.QemuHypervisor.start`: it finds the
template of a VM's shape and restores it. A shape without a template
boots cold while a detached builder (:func:`build_in_background`) makes
one; anything that goes wrong gives a warning and None, and the caller
boots cold. The returned VM is a
:class:`kata_zun.hypervisor.qemu.vm.QemuVM` like a cold boot's, its
agent ready to greet whoever connects next.

A template is our own guest, booted with placeholder disks and no NIC,
its agent greeted once and pinged (so it is past every boot step), then
paused and saved. A clone is started with the same machine but its own
disks (its ``-blockdev`` backends are its own files: the device state
comes from the template, the data and size from the clone's files; the
agent makes the guest re-read each disk's size) and its own sockets,
loads the state, runs, and gets its NICs hotplugged, each with its own
tap and MAC. The guest's identity (RNG, clock, hostname, ids) is renewed
by the agent before any container code runs
(:mod:`kata_zun.agent.guestidentity`).
"""

import dataclasses
import os
import socket
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun.cmd import templatebuild
from kata_zun import conf
from kata_zun import exception
from kata_zun.hypervisor import base
from kata_zun.hypervisor.qemu import accel
from kata_zun.hypervisor.qemu import argv as qargv
from kata_zun.hypervisor import sealedram
from kata_zun.hypervisor import template
from kata_zun.runtime import faultpoint
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

PLACEHOLDER_BYTES = 1024 * 1024
STATE_FD_NAME = 'kz-template-state'
# A template build boots a VM cold: as slow as the host makes it.
BUILD_AGENT_TIMEOUT = 300.0
SAVE_TIMEOUT = 300.0
# A restore waits as long as its QEMU makes progress (see _Deadline),
# at most this long.
RESTORE_LIMIT = 600.0
# Seconds over which a restoring QEMU must show progress.
RESTORE_WINDOW = 30.0
# Waiting for a template's sealed RAM: another start's copy of it, or
# our own (a memory copy of the guest RAM at most).
SEALED_RAM_TIMEOUT = 60.0
_POLL = 0.005
_POLL_MAX = 0.1


class TemplateLoadError(template.TemplateError):
    """QEMU could not load a template's state: the template is retired
    (the next use builds it again).
    """


class _Deadline(object):
    """How long a restore may wait for its QEMU: as long as the QEMU
    makes progress (CPU time or disk I/O, :mod:`kata_zun.shim.progress`),
    at most :data:`RESTORE_LIMIT`.

    A fixed wait (it was 10 s per QMP command) failed restores on a busy
    host: 50 sandboxes starting at once starve every QEMU's main loop,
    QMP answers come late, and each abandoned restore then booted cold,
    which costs the host some 25 times the CPU of a restore and starved
    the others further.

    :param pid: the restoring QEMU.
    """

    def __init__(self, pid):
        from kata_zun.shim import progress
        self._progress = progress.BootProgress(pid, window=RESTORE_WINDOW)
        self._end = time.monotonic() + RESTORE_LIMIT

    def left(self):
        """:returns: seconds the next QMP command may wait.
        :raises: TemplateError when the QEMU stalled or the limit passed
        """
        from kata_zun.shim import progress
        try:
            self._progress.check()
        except progress.NoProgress as exc:
            raise template.TemplateError(reason='restoring stalled: %s'
                                         % exc)
        left = self._end - time.monotonic()
        if left <= 0:
            raise template.TemplateError(
                reason='restoring took more than %d s' % RESTORE_LIMIT)
        return left


def _capabilities(vm, ignore_shared, timeout=10.0):
    vm.execute('migrate-set-capabilities', {'capabilities': [
        {'capability': 'x-ignore-shared', 'state': bool(ignore_shared)}]},
        timeout=timeout)


def _give_fd(vm, fd, timeout=10.0):
    """Pass ``fd`` to QEMU as :data:`STATE_FD_NAME`. QEMU receives a
    copy: the caller still owns ``fd`` and closes it, whether this or
    anything before it failed.
    """
    vm.execute('getfd', {'fdname': STATE_FD_NAME}, fds=(fd,),
               timeout=timeout)


def _wait_migration(vm, timeout):
    deadline = time.monotonic() + timeout
    while True:
        info = vm.execute('query-migrate')
        status = info.get('status')
        if status == 'completed':
            return
        if status in ('failed', 'cancelled'):
            raise template.TemplateError(
                reason='saving the template failed: %s'
                % info.get('error-desc', status))
        if time.monotonic() > deadline:
            raise template.TemplateError(
                reason='saving the template took more than %d s' % timeout)
        time.sleep(0.02)


def save_state(vm, path, ignore_shared):
    """Save a paused VM's state into a new file ``path``.

    :param ignore_shared: leave the (shared, file-backed) RAM out.
    :raises: TemplateError, HypervisorError
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC |
                 os.O_NOFOLLOW, 0o600)
    try:
        _capabilities(vm, ignore_shared)
        _give_fd(vm, fd)
    finally:
        os.close(fd)
    vm.execute('migrate', {'uri': 'fd:%s' % STATE_FD_NAME})
    _wait_migration(vm, SAVE_TIMEOUT)
    os.chmod(path, 0o400)


def _greet_agent(path, timeout):
    """Do the host's side of the agent handshake and one ping, as a
    shim does: the template is then past every step of its boot.

    :returns: the connected socket (kept open until the VM is saved).
    :raises: TemplateError
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(protocol.encode_json(protocol.HELLO,
                                          {'version': protocol.VERSION}))
        sock.sendall(protocol.encode_json(protocol.REQUEST, {
            'id': 1, 'op': 'ping', 'args': {'warm': True}}))
        decoder = protocol.Decoder()
        hello = ponged = False
        while not (hello and ponged):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise template.TemplateError(
                    reason='the template agent closed its link')
            for frame in decoder.feed(data):
                if frame.type == protocol.HELLO:
                    if frame.json().get('version') != protocol.VERSION:
                        raise template.TemplateError(
                            reason='the template agent speaks another '
                            'protocol version')
                    hello = True
                elif frame.type == protocol.RESPONSE:
                    msg = frame.json()
                    if msg.get('id') == 1 and 'result' in msg:
                        ponged = True
                    elif msg.get('id') == 1:
                        raise template.TemplateError(
                            reason='the template agent refused a ping: %r'
                            % (msg.get('error'),))
        return sock
    except (OSError, protocol.ProtocolError) as exc:
        sock.close()
        raise template.TemplateError(
            reason='the template agent did not answer: %s' % exc)
    except BaseException:
        sock.close()
        raise


def build(hv, config, work):
    """Boot the template of ``config``'s shape in ``work`` and save it.

    :param hv: the :class:`QemuHypervisor`.
    :param config: the VMConfig of the first sandbox of this shape.
    :param work: an empty directory (root only) that receives the files.
    :raises: TemplateError, HypervisorError, OSError
    """
    disks = []
    for i, disk in enumerate(config.disks):
        path = os.path.join(work, 'disk%d' % i)
        with open(path, 'wb') as f:
            f.truncate(PLACEHOLDER_BYTES)
        disks.append(base.Disk(path, 'kztemplate%d' % i,
                               read_only=disk.read_only))
    shaped = dataclasses.replace(
        template.template_config(config), name='kz-template',
        run_dir=work, console_log=os.path.join(work, 'console.log'),
        disks=tuple(disks), cpu_quota=None)
    memory = qargv.FileMemory(config.memory_mb,
                              os.path.join(work, template.RAM), share=True)
    vm = hv.launch(shaped, memory=memory, jailed=False)
    sock = None
    try:
        faultpoint.reached('template-build')
        sock = _greet_agent(vm.agent_socket, BUILD_AGENT_TIMEOUT)
        vm.execute('stop')
        # The stream with the RAM first: it holds all it needs. QEMU
        # saves a VM once per pause, so the VM runs again for a moment
        # (the agent is idle) and is saved a second time without its
        # RAM, which the file holds as of this second pause.
        save_state(vm, os.path.join(work, template.STATE_FULL), False)
        vm.execute('cont')
        vm.execute('stop')
        save_state(vm, os.path.join(work, template.STATE_DEV), True)
    finally:
        if sock is not None:
            sock.close()
        vm.kill()
        for disk in disks:
            try:
                os.unlink(disk.path)
            except OSError:
                pass
    os.chmod(os.path.join(work, template.RAM), 0o400)


def _load_and_run(vm, deadline):
    """Wait until the incoming state is loaded, then run the VM (it
    comes back paused, as the template was saved).

    :param deadline: a :class:`_Deadline`.
    """
    delay = _POLL
    while True:
        if vm.poll() is not None:
            raise TemplateLoadError(
                reason='QEMU exited while restoring (status %s): %s'
                % (vm.poll(), fileutils.tail(vm.log_path, 1000)))
        info = vm.execute('query-migrate', timeout=deadline.left())
        status = info.get('status')
        if status == 'completed':
            break
        if status in ('failed', 'cancelled'):
            raise TemplateLoadError(
                reason='restoring failed: %s'
                % info.get('error-desc', status))
        # Fast when the host is idle, few QMP round trips when it is not.
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX)
    while vm.execute('query-status', timeout=deadline.left()).get(
            'status') == 'inmigrate':
        # "completed" is reported a moment before the run state moves.
        time.sleep(_POLL)
    vm.execute('cont', timeout=deadline.left())


def restore(hv, config, tmpl, sealed_ram=None):
    """Start ``config``'s VM from ``tmpl``.

    A clone's QEMU is never given the template's files, jailed or not:
    with ``sealed_ram`` it maps the template's sealed RAM
    (:mod:`kata_zun.hypervisor.ramholder`) private copy-on-write and
    loads only the device state; without, the whole RAM is loaded from
    the full state into private memory (read-only descriptors of the
    state files in both cases). Why unjailed too: QEMU opens a RAM file
    read-write however it maps it, and its free page reporting "discards"
    what the guest reports free by punching holes in that file
    (``fallocate``), which a private mapping does not stop: the template
    file of every clone, handed to an unjailed QEMU, would lose whatever
    ranges a guest (untrusted, kernel included) reports, under every
    other clone that still maps them and every later one. The sealed
    memfd refuses the hole.

    :param sealed_ram: a descriptor of the template's sealed RAM (the
        caller keeps and closes it), or None.
    :returns: a running :class:`QemuVM` with ``config``'s NICs.
    :raises: TemplateError, HypervisorError
    """
    shaped = template.template_config(config)
    if sealed_ram is not None:
        memory = qargv.SealedMemory(config.memory_mb, sealed_ram)
        state, ignore_shared = tmpl.state_dev, True
    else:
        memory, state, ignore_shared = None, tmpl.state_full, False
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        vm = hv.launch(shaped, memory=memory, incoming=True)
        try:
            deadline = _Deadline(vm.pid)
            _capabilities(vm, ignore_shared, timeout=deadline.left())
            _give_fd(vm, fd, timeout=deadline.left())
        except BaseException:
            vm.kill()
            raise
    finally:
        # QEMU has its own copy by now (or failed): a restore that fails
        # early must not leak a descriptor of the template's state in a
        # long-lived shim.
        os.close(fd)
    try:
        try:
            vm.execute('migrate-incoming', {'uri': 'fd:%s' % STATE_FD_NAME},
                       timeout=deadline.left())
            _load_and_run(vm, deadline)
        except exception.HypervisorError as exc:
            # QEMU exits as soon as it meets a state it cannot load: its
            # QMP socket is then simply gone.
            if isinstance(exc, TemplateLoadError) or vm.wait(2) is None:
                raise
            raise TemplateLoadError(
                reason='QEMU exited loading the template (status %s): %s'
                % (vm.poll(), fileutils.tail(vm.log_path, 1000)))
        # The clone is the template's machine: its hotplug slots too
        # (a sandbox of a network without hotplug gets its NICs in them).
        vm.config = dataclasses.replace(config, pci_slots=shaped.pci_slots)
        for nic in config.nics:
            vm.add_nic(nic)
    except BaseException:
        vm.kill()
        raise
    return vm


def template_key(hv, config):
    """:returns: the :class:`template.Key` of ``config``'s shape on
        ``hv``.
    :raises: HypervisorError, OSError
    """
    chosen = accel.choose(config.kernel, hv.qemu_path, hv.cpu_model,
                          hv.machine_type)
    shaped = template.template_config(config)
    return template.key_for(
        config, chosen.name, hv.machine_type,
        # What QEMU gets: a template made with other CPU features is
        # another template.
        qargv.Cpu(hv.cpu_model, chosen.name).effective, hv.qemu_path,
        CONF.kata_jail.tcg_cache_mb, CONF.kata_hypervisor.seccomp_sandbox,
        qargv.kernel_params(shaped, machine_type=hv.machine_type))


def build_spec(config, key):
    """What a background builder needs to make ``config``'s template
    (:mod:`kata_zun.cmd.templatebuild`): the shape, never a sandbox's
    files.

    :returns: a JSON-able dict.
    """
    return {'digest': key.digest, 'kernel': config.kernel,
            'initrd': config.initrd, 'memory_mb': config.memory_mb,
            'vcpus': config.vcpus,
            'disks': [bool(d.read_only) for d in config.disks],
            'kernel_params': list(config.kernel_params)}


def config_from_spec(spec, work):
    """The VMConfig of a template's shape from :func:`build_spec`.

    :param work: where the builder's own files go.
    :raises: ValueError if the spec is malformed.
    """
    def need(name, kind):
        value = spec.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) and \
                kind is int:
            raise ValueError('template spec: bad %s' % name)
        return value
    disks = need('disks', list)
    params = need('kernel_params', list)
    if len(disks) > 64 or not all(isinstance(d, bool) for d in disks) or \
            not all(isinstance(w, str) for w in params):
        raise ValueError('template spec: bad disks or kernel_params')
    return base.VMConfig(
        name='kz-template', vcpus=need('vcpus', int),
        memory_mb=need('memory_mb', int), kernel=need('kernel', str),
        initrd=need('initrd', str), run_dir=work,
        console_log=os.path.join(work, 'console.log'),
        disks=tuple(base.Disk(os.path.join(work, 'disk%d' % i),
                              'kztemplate%d' % i, read_only=ro)
                    for i, ro in enumerate(disks)),
        kernel_params=tuple(params))


def build_in_background(config, key):
    """Start a detached builder for ``key``'s template and return at
    once (the caller boots cold meanwhile). Nothing is started while
    another build runs on this host.

    :returns: True if a builder was started.
    """
    if template.Store().building():
        return False
    return templatebuild.spawn(build_spec(config, key))


def prebuild_default(hv, assets):
    """Have the template of a default container's shape (default vCPUs
    and memory, an image disk and a writable layer) built in the
    background, e.g. right after ``kata-zun guest build``, so that even
    the first default container restores one.

    :param assets: the guest assets (``kata_zun.guest.builder``).
    :returns: True if a builder was started.
    """
    config = base.VMConfig(
        name='kz-template', vcpus=CONF.kata_hypervisor.default_vcpus,
        memory_mb=CONF.kata_hypervisor.default_memory_mb,
        kernel=assets.kernel, initrd=assets.initrd, run_dir='/',
        console_log=os.devnull,
        disks=(base.Disk('image', 'image', read_only=True),
               base.Disk('layer', 'layer')))
    try:
        key = template_key(hv, config)
        if template.Store().usable(key) is not None:
            return False
    except (exception.HypervisorError, OSError, ValueError) as exc:
        LOG.warning('no VM template prebuild: %s', exc)
        return False
    return build_in_background(config, key)


def build_now(hv, config, digest):
    """A background builder's work: the template of ``config``'s shape,
    unless it exists or another build runs.

    :param digest: the digest the sandbox that asked computed; a
        builder that computes another one (assets replaced meanwhile)
        builds nothing.
    :returns: the :class:`template.Template`, or None.
    :raises: TemplateError, HypervisorError, OSError
    """
    key = template_key(hv, config)
    if key.digest != digest:
        LOG.info('VM template %s: the shape changed (now %s), not built',
                 digest, key.digest)
        return None
    tmpl = template.Store().build_if_idle(
        key, lambda work: build(hv, config, work))
    if tmpl is not None:
        # The first clone then finds the sealed RAM ready.
        ram = sealed_ram(tmpl, config)
        if ram is not None:
            os.close(ram)
    return tmpl


def sealed_ram(tmpl, config):
    """:returns: a descriptor of ``tmpl``'s sealed RAM for a clone,
        jailed or not (the caller closes it); None with ``[kata_jail]
        share_template_ram`` off, and None with a warning when it cannot
        be had (the clone then loads the whole RAM from the full state).
    """
    if not CONF.kata_jail.share_template_ram:
        return None
    try:
        return sealedram.open_ram(tmpl.path, config.memory_mb * 1024 * 1024,
                                  SEALED_RAM_TIMEOUT)
    except sealedram.SealedRamError as exc:
        LOG.warning('VM template %s: %s; loading the whole RAM instead',
                    tmpl.key.digest, exc)
        return None


def restore_cost_mib(config, sealed=False):
    """:returns: MiB a restore of ``config`` may touch before its boot is
        done. With the template's sealed RAM: QEMU's own only (the RAM
        stays the template's shared pages until written). Without: as
        much as a cold boot. The whole RAM is loaded into private
        memory, and QEMU 7.2 reads every page it loads, zero pages
        included, to see whether to write it; a read of a memfd page
        allocates it. Measured: 396 of 608 MiB and 120 of 256 MiB
        resident right after a restore, where the saved state held ~105
        and ~89 MiB.
    """
    from kata_zun.hypervisor.qemu import vm as qemu_vm
    if not sealed:
        return qemu_vm.cold_cost_mib(config)
    return CONF.kata_jail.memory_overhead_mb


def try_restore(hv, config, admit=None):
    """The fast start path.

    :param hv: the :class:`QemuHypervisor`.
    :param config: the sandbox's VMConfig.
    :param admit: see :meth:`kata_zun.hypervisor.base.Hypervisor.start`;
        called with :func:`restore_cost_mib` once a template is found.
    :returns: a running :class:`QemuVM` restored from a template, or
        None when the VM must boot cold (its shape has no template yet:
        one is built in the background; or the template could not be
        used: a warning says why).
    :raises: what ``admit`` raises (InsufficientResources: a cold boot
        would need more), else nothing but KeyboardInterrupt-like
        exceptions
    """
    reason = template.unsupported(config, hv.machine_type)
    if reason:
        LOG.debug('VM %s boots cold: %s', config.name, reason)
        return None
    started = time.monotonic()
    try:
        key = template_key(hv, config)
        store = template.Store()
        tmpl = store.usable(key)
        if tmpl is None:
            spawned = build_in_background(config, key)
            LOG.info('VM %s boots cold: no VM template %s yet (%s)',
                     config.name, key.digest,
                     'being built in the background' if spawned else
                     'another template is being built')
            return None
        ram = sealed_ram(tmpl, config)
        try:
            if admit is not None:
                admit(restore_cost_mib(config, sealed=ram is not None))
                started = time.monotonic()  # not the wait for admission
            vm = restore(hv, config, tmpl, ram)
        except TemplateLoadError:
            store.retire(key.digest)
            raise
        finally:
            if ram is not None:
                os.close(ram)
    except (exception.HypervisorError, OSError, ValueError) as exc:
        if isinstance(exc, exception.JailError):
            raise       # the cold boot would fail the same way
        LOG.warning('VM %s: cannot start from a VM template, booting cold: '
                    '%s', config.name, exc)
        return None
    store.touch(key.digest)
    LOG.info('VM %s restored from template %s in %.3f s', config.name,
             key.digest, time.monotonic() - started)
    return vm
