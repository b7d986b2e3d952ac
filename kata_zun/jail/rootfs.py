"""The root file system of a jailed QEMU, and entering the jail.

:func:`plan` runs in the privileged parent and lists what QEMU may see:
its binary, the shared libraries ``ldd`` names, its data directories
(firmware, modules), the guest kernel and initrd, and the devices it
needs. :func:`enter` runs in the forked child, before ``exec``: it makes
new mount, network, IPC and UTS namespaces, mounts a tiny tmpfs, binds
each planned file read-only (``nosuid,nodev,noexec`` except the QEMU
binary and the loader's libraries, which must be mappable), pivots into
it and detaches the host's tree. The tmpfs exists only in QEMU's mount
namespace: nothing is left on the host when QEMU dies.

A clone of a VM template also gets a read-only ``/proc`` that shows
its own processes only (``hidepid=invisible``: the jail's uid is the
sandbox's alone; ``subset=pid``: no system-wide file): QEMU 7.2 takes
guest RAM only by path, and the template's sealed RAM is an inherited
memfd it reopens as ``/proc/self/fd/N``.
"""

import ctypes
import dataclasses
import os
import subprocess
import typing

from kata_zun import exception
from kata_zun.runtime import fileutils

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
SYS_PIVOT_ROOT = 155            # x86_64
GUEST_DIR = '/guest'
PROC_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
PROC_OPTIONS = 'hidepid=invisible,subset=pid'
# Top-level symlinks of a merged-/usr host, made again in the jail so the
# loader finds /lib64/ld-linux-x86-64.so.2 and libraries under /lib.
_TOP_LINKS = ('bin', 'lib', 'lib32', 'lib64', 'libx32', 'sbin')

_libc = []


def _lib():
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    return _libc[0]


@dataclasses.dataclass(frozen=True)
class Bind:
    """``source`` on the host appears read-only at ``target`` in the jail.
    """
    source: str
    target: str
    directory: bool = False
    executable: bool = False     # mappable with PROT_EXEC (no noexec)
    device: bool = False         # a device node: writable, no nodev


@dataclasses.dataclass(frozen=True)
class RootPlan:
    mountpoint: str              # an empty host directory to mount on
    binds: typing.Tuple[Bind, ...]
    symlinks: typing.Tuple[typing.Tuple[str, str], ...]   # (link, target)
    kernel: str                  # paths as QEMU sees them
    initrd: str
    qemu: str
    # A /proc of QEMU's own processes only (hidepid=invisible: the jail's
    # uid is the sandbox's alone; subset=pid: no system-wide files).
    own_proc: bool = False


_ldd_cache = {}


def libraries(binary, cache_file=None):
    """:param binary: an executable.
    :param cache_file: where the answer is kept across processes (each
        shim is a new process, and ``ldd`` costs ~0.1 s on a busy host);
        it is trusted only for the same file (path, inode, size, mtime).
    :returns: the absolute paths of the shared objects ``binary`` loads
        (its program interpreter included), as ``ldd`` resolves them.
    :raises: kata_zun.exception.JailError
    """
    st = os.stat(binary)
    key = [binary, st.st_ino, st.st_size, st.st_mtime_ns]
    if tuple(key) in _ldd_cache:
        return _ldd_cache[tuple(key)]
    if cache_file:
        try:
            cached = fileutils.read_json(cache_file, limit=64 * 1024)
            if cached.get('key') == key and all(
                    isinstance(p, str) and p.startswith('/')
                    for p in cached['libraries']):
                _ldd_cache[tuple(key)] = tuple(cached['libraries'])
                return _ldd_cache[tuple(key)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    try:
        out = subprocess.run(['ldd', binary], capture_output=True,
                             check=True, timeout=30,
                             env={'PATH': '/usr/bin:/bin',
                                  'LC_ALL': 'C'}).stdout.decode()
    except (OSError, subprocess.SubprocessError) as exc:
        raise exception.JailError(reason='ldd %s: %s' % (binary, exc))
    found = []
    for line in out.splitlines():
        words = line.split()
        if '=>' in words:
            words = words[words.index('=>') + 1:]
        if words and words[0].startswith('/'):
            found.append(words[0])
    if not found:
        raise exception.JailError(reason='ldd found no libraries for %s'
                                  % binary)
    _ldd_cache.clear()
    _ldd_cache[tuple(key)] = tuple(found)
    if cache_file:
        try:
            fileutils.write_json(cache_file, {'key': key,
                                              'libraries': found})
        except OSError:
            pass
    return _ldd_cache[tuple(key)]


def _in_jail(path):
    """The path under which a host file is bound: its directory resolved
    (the jail recreates only the top-level links), its own name kept.
    """
    return os.path.join(os.path.realpath(os.path.dirname(path)),
                        os.path.basename(path))


def plan(mountpoint, qemu_path, kernel, initrd, data_dirs=(),
         devices=(), cache_file=None, own_proc=False):
    """List what a jailed QEMU may see.

    :param mountpoint: an existing empty directory (root-owned).
    :param qemu_path: the QEMU binary.
    :param kernel: guest kernel on the host.
    :param initrd: guest initrd on the host.
    :param data_dirs: directories QEMU reads (firmware, modules); those
        that do not exist are left out.
    :param devices: device nodes QEMU opens (e.g. /dev/kvm).
    :param cache_file: see :func:`libraries`.
    :param own_proc: see :attr:`RootPlan.own_proc`.
    :returns: a :class:`RootPlan`.
    :raises: kata_zun.exception.JailError
    """
    qemu = os.path.realpath(qemu_path)
    binds = [Bind(qemu, qemu, executable=True)]
    binds += [Bind(lib, _in_jail(lib), executable=True)
              for lib in libraries(qemu, cache_file)]
    for directory in data_dirs:
        if os.path.isdir(directory):
            # Modules are shared objects QEMU maps executable.
            binds.append(Bind(directory, os.path.realpath(directory),
                              directory=True, executable=True))
    guest_kernel = os.path.join(GUEST_DIR, 'vmlinux')
    guest_initrd = os.path.join(GUEST_DIR, 'initrd.img')
    binds += [Bind(kernel, guest_kernel), Bind(initrd, guest_initrd)]
    binds += [Bind(dev, dev, device=True) for dev in devices]
    links = tuple((name, os.readlink('/' + name)) for name in _TOP_LINKS
                  if os.path.islink('/' + name))
    return RootPlan(mountpoint, tuple(binds), links, guest_kernel,
                    guest_initrd, qemu, own_proc)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def mount(source, target, fstype, flags, data=None):
    """:raises: OSError"""
    def b(s):
        return None if s is None else os.fsencode(s)
    _check(_lib().mount(b(source), b(target), b(fstype), flags, b(data)),
           'mount %s' % target)


def _make_target(path, directory):
    os.makedirs(path if directory else os.path.dirname(path), mode=0o755,
                exist_ok=True)
    if not directory and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o444))


def enter(root_plan):
    """Build the jail's root and pivot into it (in the forked child).

    :param root_plan: a :class:`RootPlan`.
    :returns: None
    :raises: OSError
    """
    lib = _lib()
    _check(lib.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC |
                       CLONE_NEWUTS), 'unshare')
    # Nothing done from here on propagates back to the host.
    mount(None, '/', None, MS_REC | MS_PRIVATE)
    top = root_plan.mountpoint
    mount('tmpfs', top, 'tmpfs', MS_NOSUID | MS_NODEV,
          'size=256k,nr_inodes=1024,mode=755')
    for link, target in root_plan.symlinks:
        os.symlink(target, os.path.join(top, link))
    for bind in root_plan.binds:
        target = top + bind.target
        _make_target(target, bind.directory)
        mount(bind.source, target, None, MS_BIND | MS_REC)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID
        if not bind.device:
            flags |= MS_RDONLY | MS_NODEV
        if not (bind.executable or bind.device):
            flags |= MS_NOEXEC
        mount(None, target, None, flags)
    if root_plan.own_proc:
        os.mkdir(top + '/proc', 0o555)
        mount('proc', top + '/proc', 'proc', PROC_FLAGS, PROC_OPTIONS)
    os.chdir(top)
    # pivot_root(".", "."): the old root ends up stacked on the new one
    # and is detached at once (no directory for it is needed).
    _check(lib.syscall(SYS_PIVOT_ROOT, b'.', b'.'), 'pivot_root')
    _check(lib.umount2(b'.', MNT_DETACH), 'umount the host root')
    os.chdir('/')
    mount(None, '/', None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID |
          MS_NODEV)
