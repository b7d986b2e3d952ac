"""A fresh identity for every sandbox, before any container code runs.

Runs inside the guest (stdlib only). A VM restored from a template
(:mod:`kata_zun.hypervisor.template`) starts as an exact copy of the
template: same kernel RNG state, a clock as old as the template, the
template's hostname and boot id, and disks the guest sized when the
template booted on placeholders. The agent calls :func:`renew` from
``create_sandbox`` (the first request of every sandbox, cold or
restored), and :func:`new_container_ids` / :func:`bind_container_ids`
for each container, so that:

- the kernel RNG gets host entropy (``RNDADDENTROPY``) and is reseeded
  at once (``RNDRESEEDCRNG``): two clones never share a random stream,
  and neither does the agent's own Python ``random``;
- the clock is the host's;
- the hostname is the sandbox's;
- a restored guest probes its own virtio-blk disks once (its template
  loaded the driver with no disk bound, :func:`load_disk_driver`), so
  it sees each disk's real size and reads nothing cached from the
  template's placeholders;
- each container gets its own boot id (a file bound over
  ``/proc/sys/kernel/random/boot_id`` in its mount namespace) and
  machine-id (``/etc/machine-id``): the guest kernel's boot id is the
  template's, shared by every clone.

Residual risk, documented with ``[kata] vm_templating``: the kernel's
address layout (KASLR) is the template's in every clone.
"""

import gc
import os
import struct
import time

RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
MAX_ENTROPY = 4096
VIRTIO_BUS = '/sys/bus/virtio'
VIRTIO_BLK_DRIVER = VIRTIO_BUS + '/drivers/virtio_blk'
#: The virtio device ID of a block device (virtio spec, 5.2).
VIRTIO_ID_BLOCK = 2
#: Not loaded by the initrd's /init (see kata_zun.guest.builder).
DISK_MODULE = 'virtio_blk'
MODPROBE = '/bin/modprobe'
SYS_BLOCK = '/sys/block'
BOOT_ID = 'boot_id'
MACHINE_ID = 'machine-id'
PROC_BOOT_ID = '/proc/sys/kernel/random/boot_id'


def reseed(data):
    """Credit ``data`` (host entropy) to the kernel RNG and reseed it.

    :param data: bytes from the host's RNG (at most :data:`MAX_ENTROPY`
        are used).
    :raises: OSError
    """
    import fcntl
    data = bytes(data[:MAX_ENTROPY])
    fd = os.open('/dev/urandom', os.O_WRONLY | os.O_CLOEXEC)
    try:
        if data:
            fcntl.ioctl(fd, RNDADDENTROPY,
                        struct.pack('ii', len(data) * 8, len(data)) + data)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    import sys
    if 'random' in sys.modules:
        # Whatever seeded it (at import, maybe in the template) is
        # shared with every clone.
        sys.modules['random'].seed(os.urandom(32))


def revalidate_disks(driver=VIRTIO_BLK_DRIVER):
    """Make the guest probe every virtio-blk disk again.

    :returns: the number of disks re-probed.
    :raises: OSError
    """
    try:
        names = [n for n in os.listdir(driver) if n.startswith('virtio')]
    except FileNotFoundError:
        return 0
    for name in names:
        for action in ('unbind', 'bind'):
            fd = os.open(os.path.join(driver, action), os.O_WRONLY)
            try:
                os.write(fd, name.encode())
            finally:
                os.close(fd)
    return len(names)


def _write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _modprobe(modprobe):
    pid = os.posix_spawn(modprobe, ['modprobe', DISK_MODULE],
                         {'PATH': '/sbin:/bin'})
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise OSError('modprobe %s exited with %d' % (DISK_MODULE, code))


def load_disk_driver(bus=VIRTIO_BUS, modprobe=MODPROBE):
    """Load the disk driver without letting it bind any disk: called in
    a VM template before it is saved.

    Loading the module (an exec of modprobe, the module's signature
    check, its relocation) is the same in every clone, and measured
    under TCG about 80 ms of a clone's 0.22-0.27 s first probe of two
    disks; the disks are not the same (each clone has its own behind
    the placeholders). So the template registers the driver with the
    bus's autoprobe off and each clone binds its own disks once
    (:func:`probe_disks`).

    :returns: True if it was loaded now, False if it was there.
    :raises: OSError
    """
    if os.path.isdir(os.path.join(bus, 'drivers', DISK_MODULE)):
        return False
    autoprobe = os.path.join(bus, 'drivers_autoprobe')
    _write(autoprobe, b'0')
    try:
        _modprobe(modprobe)
    finally:
        _write(autoprobe, b'1')
    return True


def unbound_disks(bus=VIRTIO_BUS):
    """:returns: names of the bus's virtio-blk devices no driver has."""
    devices = os.path.join(bus, 'devices')
    names = []
    for name in sorted(os.listdir(devices)):
        path = os.path.join(devices, name)
        try:
            with open(os.path.join(path, 'device')) as f:
                kind = int(f.read().strip(), 16)
        except (OSError, ValueError):
            continue
        if kind == VIRTIO_ID_BLOCK and not os.path.lexists(
                os.path.join(path, 'driver')):
            names.append(name)
    return names


def probe_disks(bus=VIRTIO_BUS, modprobe=MODPROBE, sys_block=SYS_BLOCK):
    """Have the disk driver probe the disks the VM has now.

    The initrd does not load it: a template's guest then never probes
    (nor caches anything of) the placeholders of its clones' disks. A
    cold-booted guest loads it here, which probes its disks; a clone
    finds it loaded by its template with no disk bound
    (:func:`load_disk_driver`) and binds each of its disks once.
    (:func:`revalidate_disks` is for a kernel with the driver built in:
    its template did probe the placeholders.)

    Then the disks' writeback throttling is turned off
    (:func:`quiet_disks`), whichever way they were probed.

    :returns: the number of disks bound now, or -1 if the driver was
        loaded now (it probed every disk itself).
    :raises: OSError when modprobe or a bind fails.
    """
    driver = os.path.join(bus, 'drivers', DISK_MODULE)
    if not os.path.isdir(driver):
        _modprobe(modprobe)
        bound = -1
    else:
        names = unbound_disks(bus)
        for name in names:
            _write(os.path.join(driver, 'bind'), name.encode())
        bound = len(names)
    # Also for a driver that was there (built in): its disks were just
    # bound again by revalidate_disks, with the default.
    quiet_disks(sys_block)
    return bound


def quiet_disks(sys_block=SYS_BLOCK):
    """Turn off writeback throttling on the VM's disks: its latency
    timer woke an idle guest several times a second (the host's own
    block layer still schedules the I/O).

    :returns: the number of disks changed.
    """
    changed = 0
    try:
        names = [n for n in os.listdir(sys_block) if n.startswith('vd')]
    except OSError:
        return 0
    for name in names:
        try:
            fd = os.open(os.path.join(sys_block, name, 'queue',
                                      'wbt_lat_usec'),
                         os.O_WRONLY | os.O_TRUNC)
        except OSError:
            continue              # no writeback throttling there
        try:
            os.write(fd, b'0')
            changed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return changed


def renew(now=None, entropy=b'', hostname=None, restored=False):
    """The sandbox-wide part, from ``create_sandbox``.

    :param now: the host's time (seconds since the epoch) or None.
    :param entropy: host entropy (bytes).
    :param hostname: a validated hostname or None.
    :param restored: this guest was restored from a template.
    :returns: {'restored': bool, 'disks': number re-probed}
    :raises: OSError
    """
    if now:
        time.clock_settime(time.CLOCK_REALTIME, float(now))
    reseed(entropy)
    if hostname:
        import socket
        socket.sethostname(hostname)
    # A template that had the driver loaded probed its placeholders:
    # probe again. Otherwise the disks are probed for the first time.
    disks = revalidate_disks() if restored else 0
    probe_disks()
    return {'restored': bool(restored), 'disks': disks}


def _uuid_text(dashes):
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0f) | 0x40       # version 4
    raw[8] = (raw[8] & 0x3f) | 0x80       # RFC 4122 variant
    text = raw.hex()
    if not dashes:
        return text
    return '-'.join((text[:8], text[8:12], text[12:16], text[16:20],
                     text[20:]))


def new_container_ids(container_dir):
    """Write a container's own boot id and machine-id next to its root
    (from the kernel RNG, reseeded by :func:`renew` already).

    :returns: {'boot_id': str, 'machine_id': str}
    """
    ids = {'boot_id': _uuid_text(True), 'machine_id': _uuid_text(False)}
    for name, value in ((BOOT_ID, ids['boot_id']),
                        (MACHINE_ID, ids['machine_id'])):
        fd = os.open(os.path.join(container_dir, name),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, (value + '\n').encode())
        finally:
            os.close(fd)
    return ids


def bind_container_ids(container_dir, root, mount, write_file, bind_flag):
    """Bind the container's ids over the kernel's boot id and the
    image's /etc/machine-id (in the container's new mount namespace,
    before its /proc is made read-only).

    :param container_dir: where :func:`new_container_ids` wrote them.
    :param root: the container's root (with its /proc mounted).
    :param mount: the agent's mount function.
    :param write_file: the agent's write_file (creates a bind target).
    :param bind_flag: MS_BIND.
    :raises: OSError
    """
    source = os.path.join(container_dir, BOOT_ID)
    if os.path.exists(source):
        mount(source, root + PROC_BOOT_ID, None, bind_flag)
    source = os.path.join(container_dir, MACHINE_ID)
    target = root + '/etc/machine-id'
    if os.path.exists(source) and not os.path.ismount(target):
        # Never follow a link the image put there.
        if os.path.islink(target):
            os.unlink(target)
        if not os.path.exists(target):
            write_file(target, '')
        mount(source, target, None, bind_flag)


# Imported by the first requests of every sandbox: a template imports
# them once (see :func:`warm_up`) so that no clone pays for it.
WARM_MODULES = ('base64', 'binascii', 'fcntl', 'socket',
                'kata_zun.agent.guestnet', 'kata_zun.agent.guestshare',
                'kata_zun.agent.guestvolumes')


def warm_up():
    """Import what the first requests of a sandbox import, load the disk
    driver with no disk bound (:func:`load_disk_driver`) and the device
    program every default container gets (``guestdev.program``), bring
    ``lo`` up, start the spawn server of exec
    (``guestspawn.start_server``) and freeze the Python heap
    (:func:`_freeze_heap`): called in a template before it is saved, so
    that no clone does it again (Python starts ~17x slower under TCG, and QEMU
    translates the kernel code of each of these steps anew in every
    clone).

    :returns: the number of modules imported.
    :raises: OSError when the driver or the program cannot be loaded, or
        ``lo`` cannot be brought up.
    """
    import importlib
    for name in WARM_MODULES:
        importlib.import_module(name)
    load_disk_driver()
    from kata_zun.agent import guestdev
    from kata_zun.agent import guestnet
    from kata_zun.agent import guestspawn
    from kata_zun.agent import guestutil
    guestdev.program(guestutil.libc())
    guestnet.loopback_up()
    # Not required: without it the first exec starts the server.
    guestspawn.start_server()
    _freeze_heap()
    return len(WARM_MODULES)


def _freeze_heap():
    """Move every object the template made to the collector's permanent
    generation: a clone's full collection would otherwise walk them all,
    writing each one's collector header, and so take a private copy of
    every page of the template's Python heap that it shares. Measured
    (a collection forced at a clone's 20th exec, TCG): 1.2 MiB of guest
    RAM copied without the freeze, none with it.
    """
    gc.collect()
    gc.freeze()
