"""Guest assets ("osbuilder"): the kernel and initrd every VM boots.

``build()`` (run by the operator as ``kata-zun guest build``) produces::

    <state_path>/guest/<version>/vmlinux       uncompressed kernel (PVH boot)
    <state_path>/guest/<version>/initrd.img    uncompressed newc cpio
    <state_path>/guest/<version>/manifest.json what went in
    <state_path>/guest/cache/                  downloaded .debs, vmlinux

``version`` is a short sha256 over everything that goes in: this builder's
source, the agent's source files, the kernel (release, size, mtime),
busybox, the module list, the Python version and the versions of the Debian
packages. ``find()`` (run at every VM start) never builds: it only matches
the local inputs against the manifests and tells the operator to build when
nothing matches. The Debian package versions are recorded in the manifest
but not checked by ``find()``: learning them needs apt, and an apt update
should not stop containers from starting.

The initrd holds busybox, ``/init`` (mounts, ``modprobe`` in dependency
order, then ``exec`` of the agent as PID 1), the kernel modules the agent
needs, a minimal CPython from Debian packages (interpreter, its shared
libraries, only the stdlib modules the agent can import, precompiled by the
guest interpreter itself) and the agent.
"""

import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.guest import cpio
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

AGENT_FILES = ('__init__.py', 'protocol.py', 'guest.py', 'guestnet.py',
               'guestlayer.py', 'guestvolumes.py', 'guestroot.py',
               'guestcaps.py', 'guestseccomp.py', 'guestdev.py',
               'guestshare.py', 'guestproc.py', 'guestutil.py',
               'guestidentity.py', 'guestspawn.py', 'guestlaunch.py')
# The small spawn helper of exec (kata_zun/agent/guestspawn.py), built
# static with the host's C compiler when it has one.
SPAWN_SOURCE = 'kzspawn.c'
SPAWN_HELPER = 'kz-spawn'
CC = 'gcc'
AGENT_ROOT = 'opt/kata-agent'
# virtio_balloon: free page reporting (see [kata_hypervisor]
# free_page_reporting).
BASE_MODULES = ('virtio_mmio', 'virtio_pci', 'virtio_console', 'virtio_blk',
                'virtio_net', 'vmw_vsock_virtio_transport', 'overlay',
                'erofs', 'ext4', 'virtiofs', 'virtio_balloon')
# Shipped but not loaded by /init, so that a VM template never probes its
# clones' placeholder disks: a template's agent loads it with the bus's
# autoprobe off (kata_zun.agent.guestidentity.load_disk_driver) and each
# clone binds its own disks; a cold-booted guest loads it when its
# sandbox is created (guestidentity.probe_disks).
DEFERRED_MODULES = ('virtio_blk',)
BUSYBOX = '/bin/busybox'
BUSYBOX_APPLETS = ('sh', 'ash', 'cat', 'cp', 'dmesg', 'echo', 'grep', 'insmod',
                   'ip', 'kill', 'ln', 'ls', 'lsmod', 'mkdir', 'mknod',
                   'modprobe', 'mount', 'mv', 'poweroff', 'ps', 'reboot',
                   'rm', 'rmmod', 'sleep', 'sync', 'umount', 'uname')
LIB_PACKAGES = ('libc6', 'zlib1g', 'libexpat1', 'libffi8')
# e2fsprogs' mke2fs: the agent makes an ext4 (with a journal, which
# busybox's ext2-only mke2fs lacks) on a blank volume.
MKFS_PACKAGES = ('e2fsprogs', 'libext2fs2', 'libcom-err2', 'libblkid1',
                 'libuuid1')
MKE2FS = 'sbin/mke2fs'
# What the agent may import (directly or lazily) beyond what the closure
# finds in its source, plus the codecs the interpreter needs at start-up.
STDLIB_REQUIRED = ('encodings', 'encodings.aliases', 'encodings.utf_8',
                   'encodings.ascii', 'encodings.latin_1', 'os', 'sys',
                   'json', 'struct', 'selectors', 'select', 'socket',
                   'signal', 'errno', 'time', 'fcntl', 'termios', 'ctypes',
                   'base64', 'stat', 'shutil', 'traceback', 're',
                   'tarfile')
# Reached only through optional or lazy imports the agent never uses
# (archives, decimal maths, OpenSSL hashes, ...): keeps the initrd small.
STDLIB_EXCLUDES = ('_bz2', '_decimal', '_hashlib', '_lzma', '_pydecimal',
                   '_pyio', 'argparse', 'asyncio', 'bz2', 'csv', 'decimal',
                   'doctest', 'email', 'fractions', 'gettext', 'gzip',
                   'hashlib', 'http', 'importlib.metadata',
                   'importlib.resources', 'inspect', 'locale', 'logging',
                   'lzma', 'multiprocessing', 'pdb', 'pickle', 'pydoc',
                   'py_compile', 'statistics', 'tkinter',
                   'tracemalloc', 'unittest', 'urllib', 'xml', 'zipfile')
ROOT_DIRS = ('bin', 'dev', 'etc', 'lib', 'mnt', 'opt', 'proc', 'run', 'sbin',
             'sys', 'tmp', 'usr', 'usr/bin', 'usr/sbin')
LZ4_MAGIC = b'\x02\x21\x4c\x18'
# Old guest asset versions are kept this long (seconds) after their build.
PRUNE_MIN_AGE = 24 * 3600
MAIN_PY = ("import sys\n"
           "sys.path.insert(0, '/opt/kata-agent')\n"
           "from kata_zun.agent import guest  # noqa: E402\n"
           "guest.main()\n")
INIT_SH = """#!/bin/sh
# kata-zun guest init: pseudo filesystems, modules, then the agent (PID 1).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs -o nosuid devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
# One process for all modules: an insmod per module costs ~10 ms more each
# under TCG. The list is in dependency order.
modprobe -a %(modules)s
# An idle guest's periodic wakeups are its host's CPU (emulated under
# TCG): no proactive compaction (kcompactd woke twice a second), VM
# statistics every 10 s instead of every second.
echo 0 > /proc/sys/vm/compaction_proactiveness
echo 10 > /proc/sys/vm/stat_interval
exec /usr/bin/python3 -S -E -B /opt/kata-agent/main.py
"""
_SIG_MARKER = b'~Module signature appended~\n'
# Run by the guest interpreter on the host: the closure of imports is
# computed by the very Python (version, builtins) that will run it.
_CLOSURE_PY = """
import json, modulefinder, sys
spec = json.loads(sys.argv[1])
mf = modulefinder.ModuleFinder(path=spec['path'] + sys.path,
                               excludes=spec['excludes'])
for name in spec['modules']:
    mf.import_hook(name)
mf.run_script(spec['script'])
json.dump(sorted(m.__file__ for m in mf.modules.values() if m.__file__),
          sys.stdout)
"""
_LDD_RE = re.compile(r'^\s*(\S+)(?: => (\S+))?')


@dataclasses.dataclass(frozen=True)
class GuestAssets:
    kernel: str
    initrd: str
    version: str


def _guest_dir():
    return os.path.join(CONF.kata.state_path, 'guest')


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _run(argv, what, **kwargs):
    """Run a command (argv list, never a shell); raise with its output."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False, **kwargs)
    except OSError as exc:
        raise exception.GuestAssetError(reason='%s: %s' % (what, exc))
    if proc.returncode != 0:
        raise exception.GuestAssetError(
            reason='%s failed (%d): %s' % (
                what, proc.returncode,
                proc.stderr.decode('utf-8', 'replace')[-2000:]))
    return proc.stdout


def _release_key(release):
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', release)]


def kernel_release(path):
    """Read the release string (``uname -r``) out of a kernel image.

    :param path: a bzImage or an uncompressed ELF vmlinux.
    :returns: the release, e.g. '6.1.0-56-cloud-amd64'.
    :raises: kata_zun.exception.GuestAssetError if none is found.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(0x1000)
            if head[0x202:0x206] == b'HdrS':
                # bzImage: setup header field kernel_version points at a
                # "<release> (<builder>) #<n> ..." string.
                off = struct.unpack_from('<H', head, 0x20e)[0] + 0x200
                f.seek(off)
                return f.read(256).split(b' ', 1)[0].decode()
            f.seek(0)
            data = f.read()
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise exception.GuestAssetError(
            reason='cannot read kernel %s: %s' % (path, exc))
    match = re.search(rb'Linux version (\S+) ', data)
    if not match:
        raise exception.GuestAssetError(
            reason='no Linux version string in %s; set [kata_guest] '
                   'kernel_version' % path)
    return match.group(1).decode()


def _kernel_source():
    """:returns: (kernel image path, release, explicitly configured)."""
    if CONF.kata_guest.kernel:
        path = CONF.kata_guest.kernel
        if not os.path.isfile(path):
            raise exception.GuestAssetError(
                reason='[kata_guest] kernel %s does not exist' % path)
        release = CONF.kata_guest.kernel_version or kernel_release(path)
        return path, release, True
    if CONF.kata_guest.kernel_version:
        release = CONF.kata_guest.kernel_version
    else:
        found = [os.path.basename(p)[len('vmlinuz-'):]
                 for p in glob.glob('/boot/vmlinuz-*-cloud-amd64')]
        if not found:
            raise exception.GuestAssetError(
                reason='no /boot/vmlinuz-*-cloud-amd64: install '
                       'linux-image-cloud-amd64 or set [kata_guest] kernel')
        release = max(found, key=_release_key)
    path = '/boot/vmlinuz-%s' % release
    if not os.path.isfile(path):
        raise exception.GuestAssetError(reason='%s does not exist' % path)
    return path, release, False


def _python_packages():
    ver = CONF.kata_guest.python_version
    return ('python%s-minimal' % ver, 'libpython%s-minimal' % ver,
            'libpython%s-stdlib' % ver) + LIB_PACKAGES + MKFS_PACKAGES


def _default_agent_dir():
    # Not kata_zun.agent.__file__: the package may lack an __init__.py.
    import kata_zun
    return os.path.join(os.path.dirname(kata_zun.__file__), 'agent')


def _local_inputs(agent_dir):
    """Everything on this host that goes into the assets, cheaply."""
    here = os.path.dirname(os.path.abspath(__file__))
    agent = {}
    for name in AGENT_FILES + (SPAWN_SOURCE,):
        path = os.path.join(agent_dir, name)
        agent[name] = _sha256_file(path) if os.path.isfile(path) else None
    kpath, release, explicit = _kernel_source()
    kst = os.stat(kpath)
    bst = os.stat(BUSYBOX)
    return {
        'builder': {n: _sha256_file(os.path.join(here, n))
                    for n in ('builder.py', 'cpio.py')},
        'agent': agent,
        'kernel': {'path': kpath, 'release': release, 'explicit': explicit,
                   'size': kst.st_size, 'mtime': kst.st_mtime_ns},
        'busybox': {'size': bst.st_size, 'mtime': bst.st_mtime_ns},
        'modules': list(BASE_MODULES) + list(CONF.kata_guest.extra_modules),
        'python': CONF.kata_guest.python_version,
    }


def _read_manifest(path):
    try:
        with open(os.path.join(path, 'manifest.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _assets_from(path, manifest):
    assets = GuestAssets(kernel=manifest['kernel'],
                         initrd=os.path.join(path, 'initrd.img'),
                         version=manifest['version'])
    if os.path.isfile(assets.kernel) and os.path.isfile(assets.initrd):
        return assets
    return None


def _installed(input_key):
    """:returns: [(built_at, GuestAssets)] built from ``input_key``."""
    found = []
    gdir = _guest_dir()
    try:
        names = os.listdir(gdir)
    except OSError:
        return found
    for name in names:
        if name.startswith('.') or name == 'cache':
            continue
        path = os.path.join(gdir, name)
        manifest = _read_manifest(path)
        if manifest and manifest.get('input_key') == input_key:
            assets = _assets_from(path, manifest)
            if assets:
                found.append((manifest.get('built_at', 0), assets))
    return sorted(found, key=lambda x: x[0])


def find(agent_dir=None):
    """Find built guest assets that match this host; never builds.

    :param agent_dir: directory with the agent sources (default: the
        installed ``kata_zun.agent`` package).
    :returns: a :class:`GuestAssets`.
    :raises: kata_zun.exception.GuestAssetError when the assets are missing
        or outdated (the operator must run ``kata-zun guest build``).
    """
    if CONF.kata_guest.initrd:
        kernel = CONF.kata_guest.kernel or _kernel_source()[0]
        for path in (kernel, CONF.kata_guest.initrd):
            if not os.path.isfile(path):
                raise exception.GuestAssetError(
                    reason='%s does not exist' % path)
        return GuestAssets(kernel, CONF.kata_guest.initrd, 'custom')
    key = _digest(_local_inputs(agent_dir or _default_agent_dir()))
    found = _installed(key)
    if not found:
        raise exception.GuestAssetError(
            reason='guest assets missing or outdated for this kernel and '
                   'kata-zun version: run "kata-zun guest build"')
    return found[-1][1]


def _apt_candidates(packages):
    out = _run(['apt-cache', 'policy'] + list(packages), 'apt-cache policy',
               env=dict(os.environ, LC_ALL='C')).decode()
    versions, current = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(':'):
            current = line[:-1]
        elif current and line.strip().startswith('Candidate:'):
            ver = line.split(':', 1)[1].strip()
            if ver and ver != '(none)':
                versions[current] = ver
    missing = sorted(set(packages) - set(versions))
    if missing:
        raise exception.GuestAssetError(
            reason='no installable version of %s (apt-get update?)'
                   % ', '.join(missing))
    return versions


def _cached_deb(cache, pkg, version):
    pattern = '%s_%s_*.deb' % (pkg, version.replace(':', '%3a'))
    hits = glob.glob(os.path.join(glob.escape(cache), pattern))
    return hits[0] if hits else None


def _download(packages, cache, say):
    os.makedirs(cache, exist_ok=True)
    want = [p for p, v in sorted(packages.items())
            if not _cached_deb(cache, p, v)]
    if want:
        say('Downloading %s' % ', '.join(want))
        _run(['apt-get', 'download', '-q'] +
             ['%s=%s' % (p, packages[p]) for p in want],
             'apt-get download', cwd=cache)
    debs = []
    for pkg, ver in sorted(packages.items()):
        deb = _cached_deb(cache, pkg, ver)
        if not deb:
            raise exception.GuestAssetError(
                reason='apt-get download left no %s %s' % (pkg, ver))
        debs.append(deb)
    return debs


def _elf_complete(path):
    """True if ``path`` is an ELF64 whose segments and sections all fit."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        hdr = f.read(64)
        if len(hdr) < 64 or hdr[:5] != b'\x7fELF\x02':
            return False
        phoff, shoff = struct.unpack_from('<QQ', hdr, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(
            '<HHHH', hdr, 0x36)
        if phoff + phnum * phentsize > size:
            return False
        if shnum and shoff + shnum * shentsize > size:
            return False
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for i in range(phnum):
        offset, _, _, filesz = struct.unpack_from('<QQQQ', table,
                                                  i * phentsize + 8)
        if offset + filesz > size:
            return False
    return True


def extract_vmlinux(bzimage, dest):
    """Extract the ELF vmlinux from an LZ4-compressed bzImage.

    The bzImage carries an LZ4 legacy stream; ``lz4 -dc`` of everything
    from its magic on gives the ELF and then complains about the trailing
    bytes, which is fine as long as the ELF is complete.

    :param bzimage: path of the bzImage.
    :param dest: where to write the vmlinux (replaced atomically).
    :returns: None
    :raises: kata_zun.exception.GuestAssetError if no complete ELF results.
    """
    with open(bzimage, 'rb') as f:
        data = f.read()
    tmp = dest + '.tmp'
    start = data.find(LZ4_MAGIC)
    tries = 0
    while start >= 0 and tries < 4:
        tries += 1
        with open(tmp, 'wb') as out:
            try:
                subprocess.run(['lz4', '-dc'], input=data[start:],
                               stdout=out, stderr=subprocess.DEVNULL,
                               check=False)
            except OSError as exc:
                raise exception.GuestAssetError(reason='lz4: %s' % exc)
        if _elf_complete(tmp):
            # Synced before it is named: the cache is trusted as it is.
            fileutils.fsync_path(tmp)
            os.replace(tmp, dest)
            fileutils.fsync_dir(os.path.dirname(dest) or '.')
            return
        start = data.find(LZ4_MAGIC, start + 1)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    raise exception.GuestAssetError(
        reason='%s holds no LZ4-compressed ELF kernel; set [kata_guest] '
               'kernel to a vmlinux or bzImage' % bzimage)


def _modname(path):
    name = os.path.basename(path)
    name = re.sub(r'\.ko(\.(xz|gz|zst))?$', '', name)
    return name.replace('-', '_')


def module_load_order(dep_text, builtin_text, names):
    """Resolve modules and their dependencies into a load order.

    :param dep_text: content of ``modules.dep``.
    :param builtin_text: content of ``modules.builtin``.
    :param names: wanted module names ('-' and '_' are the same).
    :returns: list of paths relative to /lib/modules/<release>, every
        module after the modules it needs; built-in modules are left out.
    :raises: kata_zun.exception.GuestAssetError for an unknown module or a
        dependency cycle.
    """
    paths, deps = {}, {}
    for line in dep_text.splitlines():
        mod, sep, rest = line.partition(':')
        if sep:
            paths[_modname(mod)] = mod.strip()
            deps[_modname(mod)] = [_modname(d) for d in rest.split()]
    builtin = {_modname(p) for p in builtin_text.split()}
    order, done, visiting = [], set(), set()

    def visit(name):
        if name in done:
            return
        if name not in paths:
            if name in builtin:
                return
            raise exception.GuestAssetError(
                reason='kernel module %s not found' % name)
        if name in visiting:
            raise exception.GuestAssetError(
                reason='module dependency cycle at %s' % name)
        visiting.add(name)
        # modules.dep lists the deepest dependency last; modprobe loads the
        # list back to front.
        for dep in reversed(deps[name]):
            visit(dep)
        visiting.discard(name)
        done.add(name)
        order.append(paths[name])

    for name in names:
        visit(name.replace('-', '_'))
    return order


def strip_module_signature(data):
    """Drop the signature appended to a kernel module.

    Checking it costs the guest an RSA verification per module under TCG
    (~0.16 s for our set) and adds no trust: whoever can change the initrd
    can change /init. The kernel does not enforce signatures
    (MODULE_SIG_FORCE off, no lockdown without secure boot); it only
    marks itself tainted.

    :param data: the module file's bytes.
    :returns: the module without its signature (unchanged if unsigned).
    :raises: kata_zun.exception.GuestAssetError on a malformed trailer.
    """
    if not data.endswith(_SIG_MARKER):
        return data
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len,
    # 3 pad bytes, big-endian sig_len; then the marker.
    info = data[-len(_SIG_MARKER) - 12:-len(_SIG_MARKER)]
    sig_len = struct.unpack('>I', info[8:12])[0]
    end = len(data) - len(_SIG_MARKER) - 12 - sig_len - info[3] - info[4]
    if end <= 0 or data[:4] != b'\x7fELF':
        raise exception.GuestAssetError(reason='malformed module signature')
    return data[:end]


def _ldd(path):
    """:returns: the shared objects ``path`` needs: sonames and absolute
    paths (the program interpreter).
    """
    proc = subprocess.run(['ldd', path], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    needed = set()
    for line in proc.stdout.decode('utf-8', 'replace').splitlines():
        match = _LDD_RE.match(line)
        if not match or 'linux-vdso' in line or ' => ' not in line and \
                not match.group(1).startswith('/'):
            continue
        needed.add(match.group(1))
    return needed


def _copy_rel(src_root, rel, dst_root, depth=0):
    """Copy ``rel`` from one tree to another, replaying symlinks inside the
    source tree (a Debian package's links point at its own files).
    """
    src = os.path.join(src_root, rel)
    dst = os.path.join(dst_root, rel)
    if os.path.lexists(dst) or depth > 8:
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        target = os.readlink(src)
        os.symlink(target, dst)
        nxt = (target.lstrip('/') if os.path.isabs(target) else
               os.path.normpath(os.path.join(os.path.dirname(rel), target)))
        _copy_rel(src_root, nxt, dst_root, depth + 1)
    else:
        shutil.copy2(src, dst)


def _copy_libs(pkgroot, root, binaries):
    lib_dirs = ('lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64',
                'lib', 'usr/lib')
    needed = set()
    for path in binaries:
        needed |= _ldd(path)
    for name in sorted(needed):
        if name.startswith('/'):
            candidates = [name.lstrip('/')]
        else:
            candidates = [os.path.join(d, name) for d in lib_dirs]
        for rel in candidates:
            if os.path.lexists(os.path.join(pkgroot, rel)):
                _copy_rel(pkgroot, rel, root)
                break
        else:
            raise exception.GuestAssetError(
                reason='the guest Python needs %s, which none of %s provides'
                       % (name, ', '.join(_python_packages())))
    return sorted(needed)


def _guest_python(pkgroot, argv, what):
    ver = CONF.kata_guest.python_version
    env = {'PYTHONHOME': os.path.join(pkgroot, 'usr'), 'LC_ALL': 'C.UTF-8',
           'PATH': '/usr/bin:/bin'}
    return _run([os.path.join(pkgroot, 'usr/bin/python%s' % ver), '-S'] +
                argv, what, env=env)


def _copy_stdlib(pkgroot, root):
    """Copy the closure of the agent's imports.

    :returns: the extension modules copied (their shared libraries are
        needed too).
    """
    libdir = 'usr/lib/python%s' % CONF.kata_guest.python_version
    script = os.path.join(pkgroot, 'closure.py')
    with open(script, 'w') as f:
        f.write(_CLOSURE_PY)
    spec = {'path': [os.path.join(root, AGENT_ROOT)],
            'excludes': list(STDLIB_EXCLUDES),
            'modules': list(STDLIB_REQUIRED),
            'script': os.path.join(root, AGENT_ROOT, 'main.py')}
    files = json.loads(_guest_python(pkgroot, [script, json.dumps(spec)],
                                     'stdlib closure'))
    prefix = os.path.join(pkgroot, libdir) + os.sep
    extensions = []
    for path in files:
        if path.startswith(prefix):
            rel = os.path.join(libdir, path[len(prefix):])
            _copy_rel(pkgroot, rel, root)
            if path.endswith('.so'):
                extensions.append(path)
    return extensions


def _write_initrd(root, out):
    with open(out, 'wb') as f:
        w = cpio.NewcWriter(f)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir != '.':
                w.add_dir(rel_dir)
            for name in sorted(filenames + [d for d in dirnames if
                                            os.path.islink(
                                                os.path.join(dirpath, d))]):
                path = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if os.path.islink(path):
                    w.add_symlink(rel, os.readlink(path))
                else:
                    w.add_file(rel, path)
            if rel_dir == 'dev':
                # The kernel opens /dev/console for init's stdio before
                # anything can mount devtmpfs.
                w.add_chardev('dev/console', 5, 1)
        w.close()


def _make_root(root, pkgroot, release, agent_dir, say):
    """Populate the guest root tree; :returns: manifest details."""
    for d in ROOT_DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.symlink('../bin/busybox', os.path.join(root, 'sbin/busybox'))
    shutil.copy2(BUSYBOX, os.path.join(root, 'bin/busybox'))
    for applet in BUSYBOX_APPLETS:
        os.symlink('busybox', os.path.join(root, 'bin', applet))

    say('Resolving kernel modules for %s' % release)
    moddir = '/lib/modules/%s' % release
    with open(os.path.join(moddir, 'modules.dep')) as f:
        dep_text = f.read()
    try:
        with open(os.path.join(moddir, 'modules.builtin')) as f:
            builtin_text = f.read()
    except OSError:
        builtin_text = ''
    modules = module_load_order(
        dep_text, builtin_text,
        list(BASE_MODULES) + list(CONF.kata_guest.extra_modules))
    deps = dict(line.split(':', 1) for line in dep_text.splitlines()
                if ':' in line)
    for rel in modules:
        if not rel.endswith('.ko'):
            raise exception.GuestAssetError(
                reason='compressed module %s: busybox cannot load it' % rel)
        dst = os.path.join(root, moddir.lstrip('/'), rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(os.path.join(moddir, rel), 'rb') as f:
            data = strip_module_signature(f.read())
        with open(dst, 'wb') as f:
            f.write(data)
    # modprobe's view of the world: only the modules we ship.
    with open(os.path.join(root, moddir.lstrip('/'), 'modules.dep'),
              'w') as f:
        f.writelines('%s:%s\n' % (rel, deps[rel]) for rel in modules)
    init = INIT_SH % {'modules': ' '.join(
        _modname(m) for m in modules
        if _modname(m) not in DEFERRED_MODULES)}
    with open(os.path.join(root, 'init'), 'w') as f:
        f.write(init)
    os.chmod(os.path.join(root, 'init'), 0o755)

    agent_root = os.path.join(root, AGENT_ROOT)
    pkg = os.path.join(agent_root, 'kata_zun')
    os.makedirs(os.path.join(pkg, 'agent'))
    if not os.path.isfile(os.path.join(agent_dir, 'guest.py')):
        raise exception.GuestAssetError(
            reason='no agent at %s/guest.py' % agent_dir)
    for name in AGENT_FILES:
        src = os.path.join(agent_dir, name)
        dst = os.path.join(pkg, 'agent', name)
        if os.path.isfile(src):
            shutil.copyfile(src, dst)
        elif name == '__init__.py':
            open(dst, 'w').close()
    _build_spawner(agent_dir, agent_root, say)
    # An empty package: the host kata_zun/__init__.py may import things
    # that do not exist in the guest.
    open(os.path.join(pkg, '__init__.py'), 'w').close()
    with open(os.path.join(agent_root, 'main.py'), 'w') as f:
        f.write(MAIN_PY)

    ver = CONF.kata_guest.python_version
    say('Copying Python %s and the stdlib modules the agent needs' % ver)
    python = 'usr/bin/python%s' % ver
    _copy_rel(pkgroot, python, root)
    os.symlink('python%s' % ver, os.path.join(root, 'usr/bin/python3'))
    extensions = _copy_stdlib(pkgroot, root)
    _copy_rel(pkgroot, MKE2FS, root)
    _copy_rel(pkgroot, 'etc/mke2fs.conf', root)
    libs = _copy_libs(pkgroot, root,
                      [os.path.join(pkgroot, python),
                       os.path.join(pkgroot, MKE2FS)] + extensions)

    say('Precompiling the guest stdlib with the guest interpreter')
    _guest_python(pkgroot, ['-m', 'compileall', '-q', '-j', '0',
                            '--invalidation-mode', 'unchecked-hash',
                            '-s', root, '-p', '/',
                            os.path.join(root, 'usr/lib/python%s' % ver),
                            agent_root], 'compileall')
    return {'modules': modules, 'libs': libs}


def _build_spawner(agent_dir, agent_root, say):
    """Compile the small spawn helper of exec into the agent's directory.

    Without a C compiler (or its static libc) the initrd goes without
    it: the agent then forks itself for every exec, slower but the same.
    """
    src = os.path.join(agent_dir, SPAWN_SOURCE)
    cc = shutil.which(CC)
    if not cc or not os.path.isfile(src):
        say('No %s: exec in the guest forks the agent (slower)' % CC)
        return
    try:
        _run([cc, '-static', '-Os', '-s', '-Wall', '-o',
              os.path.join(agent_root, SPAWN_HELPER), src],
             'compiling the spawn helper')
    except exception.GuestAssetError as exc:
        LOG.warning('%s: exec in the guest forks the agent (slower)', exc)


def _vmlinux(bzimage, release, say):
    """Extract once per kernel into the cache; :returns: its path."""
    st = os.stat(bzimage)
    cache = os.path.join(_guest_dir(), 'cache')
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, 'vmlinux-%s-%d-%d' % (
        release, st.st_size, st.st_mtime_ns))
    if not os.path.isfile(path):
        say('Extracting vmlinux from %s' % bzimage)
        extract_vmlinux(bzimage, path)
    return path


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _prune(keep, min_age=PRUNE_MIN_AGE):
    """Remove old asset versions.

    The newest ``keep`` always stay, and so does anything built in the
    last ``min_age`` seconds: another installation of a different version
    sharing this state path (an upgrade in progress, a CI checkout) may
    be about to boot it. A running QEMU has read its kernel and initrd
    already.
    """
    gdir = _guest_dir()
    versions = []
    for name in os.listdir(gdir):
        path = os.path.join(gdir, name)
        manifest = None if name == 'cache' else _read_manifest(path)
        if manifest:
            versions.append((manifest.get('built_at', 0), path))
    now = time.time()
    for built_at, path in sorted(versions)[:-keep]:
        if now - built_at > min_age:
            shutil.rmtree(path, ignore_errors=True)


def build(force=False, progress=None, agent_dir=None):
    """Build the guest kernel and initrd unless an up-to-date build exists.

    :param force: rebuild even if the version already exists.
    :param progress: callable taking one message string, for long steps.
    :param agent_dir: directory with the agent sources (default: the
        installed ``kata_zun.agent`` package).
    :returns: a :class:`GuestAssets`.
    :raises: kata_zun.exception.GuestAssetError on any failure.
    """
    say = progress or (lambda msg: None)
    agent_dir = agent_dir or _default_agent_dir()
    inputs = _local_inputs(agent_dir)
    input_key = _digest(inputs)
    packages = _apt_candidates(_python_packages())
    version = _digest({'inputs': input_key, 'packages': packages})[:12]
    gdir = _guest_dir()
    dest = os.path.join(gdir, version)
    os.makedirs(gdir, exist_ok=True)
    with open(os.path.join(gdir, '.lock'), 'w') as lock:
        # One build at a time; a second builder then finds the first's.
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = _read_manifest(dest)
        if manifest and not force:
            assets = _assets_from(dest, manifest)
            if assets:
                say('Guest assets %s are up to date' % version)
                return assets
        started = time.monotonic()
        tmp = tempfile.mkdtemp(prefix='.build-', dir=gdir)
        os.chmod(tmp, 0o755)      # QEMU may run as another user
        try:
            assets = _build_into(tmp, dest, version, inputs, input_key,
                                 packages, agent_dir, say)
            # Every file on disk before the directory is named: a crash
            # right after the rename must not leave a version whose
            # manifest says complete over an empty initrd.
            fileutils.fsync_tree(tmp)
            if os.path.exists(dest):
                old = tempfile.mkdtemp(prefix='.old-', dir=gdir)
                os.rename(dest, os.path.join(old, 'v'))
                os.rename(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest)
            fileutils.fsync_dir(gdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(keep=2)
    say('Guest assets %s built in %.1f s' % (version,
                                             time.monotonic() - started))
    LOG.info('Built guest assets %s in %s', version, dest)
    return assets


def _build_into(tmp, dest, version, inputs, input_key, packages, agent_dir,
                say):
    kinfo = inputs['kernel']
    if kinfo['explicit']:
        kernel = kinfo['path']
    else:
        _link_or_copy(_vmlinux(kinfo['path'], kinfo['release'], say),
                      os.path.join(tmp, 'vmlinux'))
        kernel = os.path.join(dest, 'vmlinux')

    debs = _download(packages, os.path.join(_guest_dir(), 'cache', 'debs'),
                     say)
    say('Unpacking %d Debian packages' % len(debs))
    pkgroot = os.path.join(tmp, 'pkgroot')
    for deb in debs:
        _run(['dpkg', '-x', deb, pkgroot], 'dpkg -x %s' % deb)
    root = os.path.join(tmp, 'root')
    details = _make_root(root, pkgroot, kinfo['release'], agent_dir, say)
    say('Writing the initrd')
    initrd = os.path.join(tmp, 'initrd.img')
    _write_initrd(root, initrd)
    shutil.rmtree(root)
    shutil.rmtree(pkgroot)
    manifest = dict(details, version=version, input_key=input_key,
                    inputs=inputs, packages=packages, kernel=kernel,
                    initrd_bytes=os.path.getsize(initrd),
                    built_at=time.time())
    with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return GuestAssets(kernel=kernel,
                       initrd=os.path.join(dest, 'initrd.img'),
                       version=version)
