"""The container's root: paths in it, /proc, /sys, /dev, masked paths,
pivot_root.

:func:`resolve` is the one way the agent turns a container path into a
path under the root (volume targets, archive paths): as a chroot would.

Runs in the forked container process, in its new mount namespace (see
``Agent._child`` in :mod:`kata_zun.agent.guest`). Standard library only.

The agent runs from the initramfs, whose root mount has no parent, and
pivot_root(2) refuses such a root. So the guest's /run tmpfs (which holds
every container's root) is first moved over / and made our root; from
there pivot_root swaps in the container's overlay, and the old root (with
the other containers' mounts) is detached. The container's root then
covers the initramfs entirely: '..' from it leads back to itself, and no
mount of the agent is reachable by path.
"""

import os

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155                   # x86_64
MAX_LINKS = 40

DEV_NODES = (('null', 1, 3), ('zero', 1, 5), ('full', 1, 7),
             ('random', 1, 8), ('urandom', 1, 9), ('tty', 5, 0))
# What Docker hides from a container that is not privileged: kernel
# memory, keys, timers and scheduler internals, hardware a container
# has no business with (files: /dev/null bound over them; directories:
# an empty read-only tmpfs).
MASKED_PATHS = ('/proc/asound', '/proc/acpi', '/proc/kcore', '/proc/keys',
                '/proc/latency_stats', '/proc/timer_list',
                '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi',
                '/sys/firmware', '/sys/devices/virtual/powercap')
# Visible but read-only: kernel tunables and triggers of the whole VM.
READONLY_PATHS = ('/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys',
                  '/proc/sysrq-trigger')


class ResolveError(ValueError):
    """A path cannot be resolved inside the root (loop, not a directory,
    cannot be created); the message says which.
    """


def resolve(root, path, follow_final=True, create=None,
            max_links=MAX_LINKS):
    """Resolve ``path`` inside ``root`` the way a chroot would: '..'
    stops at the root and absolute symlinks start again from it, so no
    symlink (an image's, a container's) leads outside ``root``.

    :param root: the container's root, as the agent sees it.
    :param path: a path in the container (relative paths start at /).
    :param follow_final: follow a symlink in the last component too.
    :param create: None (create nothing), ``'dir'`` (a missing component
        becomes a directory) or ``'file'`` (missing parents become
        directories, a missing last component an empty regular file).
    :returns: the resolved path relative to ``root``, starting with '/'
        ('/' for the root itself).
    :raises: ResolveError (loop, a non-directory in the middle, or the
        creation failed).
    """
    parts = [p for p in path.split('/') if p not in ('', '.')]
    resolved = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == '..':
            if resolved:
                resolved.pop()
            continue
        full = root + '/' + '/'.join(resolved + [name])
        if os.path.islink(full) and (parts or follow_final):
            links += 1
            if links > max_links:
                raise ResolveError('too many levels of symbolic links: %s'
                                   % path)
            target = os.readlink(full)
            if target.startswith('/'):
                resolved = []
            parts = [p for p in target.split('/')
                     if p not in ('', '.')] + parts
            continue
        last = not parts
        if create and not os.path.lexists(full):
            try:
                if last and create == 'file':
                    os.close(os.open(full, os.O_WRONLY | os.O_CREAT |
                                     os.O_EXCL | os.O_NOFOLLOW |
                                     os.O_CLOEXEC, 0o644))
                else:
                    os.mkdir(full, 0o755)
            except OSError as exc:
                raise ResolveError('cannot create %s: %s'
                                   % (path, exc.strerror))
        elif not last and os.path.lexists(full) and not os.path.isdir(full):
            raise ResolveError('%s: not a directory' % path)
        resolved.append(name)
    return '/' + '/'.join(resolved)


def _agent():
    # Imported here: the agent module imports this one.
    from kata_zun.agent import guest
    return guest


def mask_paths(root, mount, paths=MASKED_PATHS):
    """Hide ``paths`` (absolute in the container) under ``root``.

    :returns: the paths actually masked (missing ones are skipped).
    """
    done = []
    for path in paths:
        target = root + path
        if os.path.islink(target) or not os.path.exists(target):
            continue
        if os.path.isdir(target):
            mount('tmpfs', target, 'tmpfs', MS_RDONLY | MS_NOSUID |
                  MS_NODEV | MS_NOEXEC, 'mode=555')
        else:
            mount(root + '/dev/null', target, None, MS_BIND)
        done.append(path)
    return done


def readonly_paths(root, mount, paths=READONLY_PATHS):
    """Make ``paths`` (absolute in the container) read-only bind mounts.

    :returns: the paths made read-only (missing ones are skipped).
    """
    done = []
    for path in paths:
        target = root + path
        if os.path.islink(target) or not os.path.exists(target):
            continue
        mount(target, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY |
              MS_NOSUID | MS_NODEV | MS_NOEXEC)
        done.append(path)
    return done


def pivot_root(libc, new_root, put_old):
    import ctypes
    if libc.syscall(SYS_PIVOT_ROOT, new_root.encode(),
                    put_old.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'pivot_root: %s' % os.strerror(err))


def enter(c, privileged, run_dir='/run'):
    """Give the (new, private) mount namespace the container's root.

    :param c: the agent's Container (``rootfs``, ``dir``, ``spec``, ``id``).
    :param privileged: writable /sys, no masked or read-only paths.
    :raises: OSError (the container does not start).
    """
    g = _agent()
    mount = g.mount
    root = c.rootfs
    mount(None, '/', None, MS_REC | MS_PRIVATE)
    for d in ('proc', 'sys', 'dev', 'etc', 'tmp'):
        os.makedirs(root + '/' + d, exist_ok=True)
    mount('proc', root + '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount('sysfs', root + '/sys', 'sysfs',
          (0 if privileged else MS_RDONLY) | MS_NOSUID | MS_NODEV |
          MS_NOEXEC)
    mount('tmpfs', root + '/dev', 'tmpfs', MS_NOSUID, 'mode=755')
    for name, major, minor in DEV_NODES:
        os.mknod(root + '/dev/' + name, 0o20666, os.makedev(major, minor))
        os.chmod(root + '/dev/' + name, 0o666)
    os.mkdir(root + '/dev/pts')
    mount('/dev/pts', root + '/dev/pts', None, MS_BIND)
    os.mkdir(root + '/dev/shm', 0o1777)
    mount('shm', root + '/dev/shm', 'tmpfs',
          MS_NOSUID | MS_NODEV | MS_NOEXEC, 'mode=1777')
    for link, target in (('ptmx', 'pts/ptmx'), ('fd', '/proc/self/fd'),
                         ('stdin', '/proc/self/fd/0'),
                         ('stdout', '/proc/self/fd/1'),
                         ('stderr', '/proc/self/fd/2')):
        os.symlink(target, root + '/dev/' + link)
    for name in ('hostname', 'hosts', 'resolv.conf'):
        target = root + '/etc/' + name
        if os.path.ismount(target):
            # A file volume of the user's is there: it wins, as with
            # Docker.
            continue
        # Never follow a symlink the image put at /etc/<name>.
        if os.path.islink(target):
            os.unlink(target)
        if not os.path.exists(target):
            g.write_file(target, '')
        mount(os.path.join(c.dir, name), target, None, MS_BIND)
    from kata_zun.agent import guestidentity
    guestidentity.bind_container_ids(c.dir, root, mount, g.write_file,
                                     MS_BIND)
    if not privileged:
        mask_paths(root, mount)
        readonly_paths(root, mount)
    import socket
    socket.sethostname(c.spec['hostname'] or c.id[:12])
    rel = os.path.relpath(root, run_dir)
    if rel.startswith('..'):
        raise OSError(22, 'container root %s is not under %s' %
                      (root, run_dir))
    os.chdir(run_dir)
    mount(run_dir, '/', None, MS_MOVE)
    os.chroot('.')
    os.chdir(rel)
    pivot_root(g.libc(), '.', '.')
    g.umount('.', MNT_DETACH)
    os.chdir('/')
