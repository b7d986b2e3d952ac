"""The writable layer of a container as an OCI layer tar (stdlib only).

Runs in the guest, in a helper process chrooted into the overlay's upper
directory (``/run/kz/<id>/rw/upper``), and on the host in tests.

overlayfs marks what the container deleted and replaced differently from
OCI layers:

* a deleted file or directory is a character device 0:0 (or, with
  ``userxattr``/newer kernels, an empty regular file with the
  ``trusted.overlay.whiteout`` xattr): written as an empty ``.wh.<name>``;
* a directory that replaced a lower one has ``trusted.overlay.opaque=y``:
  written as the directory followed by ``<dir>/.wh..wh..opq``.

Everything else is written as it is, except device nodes, sockets and
overlay's own xattrs.  Hard links inside the layer stay hard links.
"""

import os
import stat
import tarfile

WHITEOUT_PREFIX = '.wh.'
OPAQUE = '.wh..wh..opq'
OPAQUE_XATTRS = ('trusted.overlay.opaque', 'user.overlay.opaque')
WHITEOUT_XATTRS = ('trusted.overlay.whiteout', 'user.overlay.whiteout')
CHUNK = 1024 * 1024
# Empty files the agent creates as mount points for what it bind-mounts
# over them; never part of an image (Docker keeps them out too).
PLACEHOLDERS = ('etc/hostname', 'etc/hosts', 'etc/resolv.conf')


def _xattr(path, names):
    for name in names:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return None


def is_whiteout(path, st):
    """Whether an upper directory entry hides a lower one."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return (stat.S_ISREG(st.st_mode) and st.st_size == 0 and
            _xattr(path, WHITEOUT_XATTRS) is not None)


def is_opaque(path):
    return _xattr(path, OPAQUE_XATTRS) == b'y'


def _info(name, st, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ''
    info.mtime = int(st.st_mtime)
    return info


def _marker(name, st):
    info = _info(name, st, tarfile.REGTYPE)
    info.mode = 0o644
    info.size = 0
    return info


def entries(root):
    """Walk ``root``, yielding (TarInfo, path of the data or None).

    Parents come before their children; names are sorted.
    """
    links = {}
    stack = ['']
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel) if rel else root
        names = sorted(os.listdir(directory), reverse=True)
        subdirs = []
        for name in reversed(names):
            path = os.path.join(directory, name)
            arc = rel + name
            st = os.lstat(path)
            mode = st.st_mode
            if is_whiteout(path, st):
                yield _marker(rel + WHITEOUT_PREFIX + name, st), None
            elif stat.S_ISDIR(mode):
                yield _info(arc, st, tarfile.DIRTYPE), None
                if is_opaque(path):
                    yield _marker(arc + '/' + OPAQUE, st), None
                subdirs.append(arc + '/')
            elif stat.S_ISLNK(mode):
                info = _info(arc, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                yield info, None
            elif stat.S_ISREG(mode):
                if arc in PLACEHOLDERS and st.st_size == 0:
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info = _info(arc, st, tarfile.LNKTYPE)
                    info.linkname = links[key]
                    yield info, None
                    continue
                links[key] = arc
                info = _info(arc, st, tarfile.REGTYPE)
                info.size = st.st_size
                yield info, path
            elif stat.S_ISFIFO(mode):
                yield _info(arc, st, tarfile.FIFOTYPE), None
            # Device nodes and sockets are not part of an image.
        stack.extend(reversed(subdirs))


def write_layer(root, out):
    """Write the OCI layer tar of the upper directory ``root`` to ``out``.
    """
    with tarfile.open(fileobj=out, mode='w|',
                      format=tarfile.PAX_FORMAT) as tar:
        for info, path in entries(root):
            if path is None:
                tar.addfile(info)
                continue
            with open(path, 'rb') as f:
                # A file that changed size since lstat would corrupt the
                # tar: the container is frozen, but be safe.
                st = os.fstat(f.fileno())
                info.size = st.st_size
                tar.addfile(info, f)


def layer_out(inner):
    """Runs chrooted into the upper directory: the layer tar to stdout."""
    with os.fdopen(1, 'wb', closefd=False) as out:
        write_layer(inner, out)


class Upper(object):
    """What ``Agent._spawn_helper`` needs of a container: a root to
    chroot into (the upper directory, not the merged root).
    """

    def __init__(self, path):
        self.rootfs = path


def freeze(cgroup):
    """Freeze a cgroup v2 unless it is frozen already.

    :returns: a callable that thaws it again (or does nothing).
    """
    path = os.path.join(cgroup, 'cgroup.freeze')
    try:
        with open(path) as f:
            if f.read().strip() == '1':
                return lambda: None
        with open(path, 'w') as f:
            f.write('1')
    except OSError:
        return lambda: None
    events = os.path.join(cgroup, 'cgroup.events')
    import time
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            with open(events) as f:
                if 'frozen 1' in f.read():
                    break
        except OSError:
            break
        time.sleep(0.01)

    def thaw():
        try:
            with open(path, 'w') as f:
                f.write('0')
        except OSError:
            pass
    return thaw
