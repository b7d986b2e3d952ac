"""VM templates: boot once, restore many times.

A template is a VM booted once for one :class:`Key` (guest assets, QEMU,
machine, memory, vCPUs, device shape, kernel command line), paused with
its agent ready, its device state saved. A sandbox then starts by
restoring it (:mod:`kata_zun.hypervisor.qemu.clone`) in tens of
milliseconds instead of booting for seconds.

On disk, under ``[kata] template_dir`` (root only)::

    index.json            digest -> key, created, last_used (atomic writes)
    index.lock            serialises index updates
    build.lock            held by the host's one background build
    build.log             what background builds said (capped)
    <digest>.lock         held while that template is built (removed
                          by the GC once the template is gone)
    <digest>/ram          the guest RAM (written through while it ran)
    <digest>/state.dev    device state without the RAM (x-ignore-shared)
    <digest>/state.full   device state with the RAM (jailed clones)
    <digest>/meta.json    the key, the files' sizes and sha256 of the
                          state files: checked before every restore

A template is built in ``<digest>.build-<pid>`` and renamed into place
once complete, under ``<digest>.lock``: no one ever sees a half-written
template. The first sandbox of a shape does not wait for its template:
it boots cold while a detached builder (:mod:`kata_zun.cmd.templatebuild`,
one at a time per host) makes the template for the next ones.

How clones get the RAM: no clone's QEMU is given ``ram``, jailed or
not. QEMU 7.2 opens a RAM file read-write whatever the mapping, so a
file a clone's QEMU can write would let one sandbox poison every later
clone; and even an unjailed QEMU that never writes it on purpose punches
holes in it for its guest's free page reports (``fallocate``: a private
mapping does not stop it), zeroing pages under every clone that still
maps them. A clone maps instead a sealed copy of ``ram`` that no one can
change (:mod:`.ramholder`, kept by one small holder process per
template, which writes ``holder.json`` and ``holder.log`` here) private
copy-on-write (``share=off``) and loads only the device state: its pages
stay shared with every other clone until written (like KSM). When the
sealed copy cannot be had, a clone loads the whole RAM from
``state.full`` (handed over as a read-only descriptor) into its own
private memory: still far faster than a boot, but with no page shared.

The cost of the seal: the memory a clone's guest frees is not given back
to the host. QEMU "discards" a reported range of file-backed RAM by
punching the file first and dropping its own copy only if that worked;
the seal refuses the hole (EPERM), so the clone keeps its private copies
of pages it once wrote. Free page reporting returns memory for cold
VMs only (``[kata_hypervisor] free_page_reporting``). A fix needs a QEMU
that drops a private mapping's copies without touching the file.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import typing

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

FORMAT = 1
RAM = 'ram'
STATE_DEV = 'state.dev'
STATE_FULL = 'state.full'
META = 'meta.json'
INDEX = 'index.json'
# Held by the one background build a host runs at a time.
BUILD_LOCK = 'build.lock'
# Device state (no RAM) is ~60 KB; bounded well above that.
STATE_DEV_MAX = 16 * 1024 * 1024
# Waiting for another process's build of the same template: a cold boot
# plus a save, on a busy TCG host.
BUILD_WAIT = 600.0
_DIGEST_CHARS = frozenset('0123456789abcdef')


class TemplateError(exception.HypervisorError):
    """A template cannot be built or used (the caller boots cold)."""
    msg_fmt = 'VM template: %(reason)s'


def _file_id(path):
    """:returns: what identifies one version of a file without reading
        it: real path, size, mtime and inode.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    return [real, st.st_size, st.st_mtime_ns, st.st_ino]


@dataclasses.dataclass(frozen=True)
class Key:
    """Everything that changes the machine a template captured.

    Two configs with the same key can restore the same template; any
    difference (new guest assets, another QEMU binary, more memory, one
    more disk, a read-only disk made writable, another kernel parameter)
    is another template.
    """
    kernel: typing.Tuple
    initrd: typing.Tuple
    qemu: typing.Tuple
    machine_type: str
    accel: str
    cpu_model: str
    memory_mb: int
    vcpus: int
    disks: typing.Tuple[bool, ...]       # read_only of each, in order
    pci_slots: int
    kernel_params: typing.Tuple[str, ...]
    tcg_cache_mb: typing.Optional[int]
    seccomp: bool
    format: int = FORMAT

    def as_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @property
    def digest(self):
        """:returns: 16 hex digits naming this template."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def unsupported(config, machine_type):
    """:param config: a :class:`kata_zun.hypervisor.base.VMConfig`.
    :returns: why this VM cannot start from a template, or None.
    """
    if machine_type != 'microvm':
        return 'templates are made for microvm only'
    if config.shared_dirs:
        # vhost-user devices (virtiofsd) cannot be migrated.
        return 'shared directories (virtio-fs) cannot be restored'
    from kata_zun.hypervisor.qemu import argv as qargv
    if len(config.nics) > qargv.MAX_PCI_SLOTS:
        # A clone's NICs are hotplugged after the restore, one a slot.
        return 'more NICs than hotplug slots'
    return None


def template_config(config):
    """The shape a template and its clones share.

    Every clone's NICs are hotplugged after the restore, each with its
    own MAC and tap, so a template has hotplug slots and no NIC (the
    guest then never saw a MAC of another sandbox).

    :param config: the sandbox's VMConfig.
    :returns: a VMConfig with the slots and without the NICs.
    """
    from kata_zun.hypervisor.qemu import argv as qargv
    return dataclasses.replace(config, nics=(),
                               pci_slots=qargv.MAX_PCI_SLOTS)


def key_for(config, accel, machine_type, cpu_model, qemu_path,
            tcg_cache_mb, seccomp, kernel_params):
    """:param config: the sandbox's VMConfig.
    :param kernel_params: the kernel command line words of
        :func:`template_config` (``argv.kernel_params``).
    :returns: the :class:`Key` of the template ``config`` restores.
    :raises: OSError if an asset is missing.
    """
    shaped = template_config(config)
    return Key(kernel=tuple(_file_id(config.kernel)),
               initrd=tuple(_file_id(config.initrd)),
               qemu=tuple(_file_id(qemu_path)),
               machine_type=machine_type, accel=accel, cpu_model=cpu_model,
               memory_mb=config.memory_mb, vcpus=config.vcpus,
               disks=tuple(bool(d.read_only) for d in config.disks),
               pci_slots=shaped.pci_slots,
               kernel_params=tuple(kernel_params),
               tcg_cache_mb=tcg_cache_mb, seccomp=bool(seccomp))


@dataclasses.dataclass(frozen=True)
class Template:
    """A complete template on disk."""
    key: Key
    path: str

    @property
    def ram(self):
        return os.path.join(self.path, RAM)

    @property
    def state_dev(self):
        return os.path.join(self.path, STATE_DEV)

    @property
    def state_full(self):
        return os.path.join(self.path, STATE_FULL)


def _sha256(path, limit):
    h = hashlib.sha256()
    size = 0
    with open(path, 'rb', opener=lambda p, f: os.open(
            p, f | os.O_NOFOLLOW)) as f:
        while True:
            chunk = f.read(1024 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise TemplateError(reason='%s is larger than %d bytes'
                                    % (path, limit))
            h.update(chunk)
    return h.hexdigest()


def file_meta(path, limit):
    """:returns: {'size', 'sha256'} of a state file."""
    return {'size': os.stat(path).st_size, 'sha256': _sha256(path, limit)}


class Store(object):
    """The templates of this host, in ``root`` (``[kata] template_dir``).
    """

    def __init__(self, root=None):
        self.root = root or CONF.kata.template_dir

    # ------------------------------------------------------------ layout
    def ensure_root(self):
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        st = os.lstat(self.root)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            # Another user could swap a template under us.
            raise TemplateError(reason='%s must be a directory owned by '
                                'uid %d, mode 0700' % (self.root,
                                                       os.geteuid()))

    def path(self, digest):
        if len(digest) != 16 or not set(digest) <= _DIGEST_CHARS:
            raise TemplateError(reason='bad template digest %r' % digest)
        return os.path.join(self.root, digest)

    @contextlib.contextmanager
    def _flock(self, name, timeout):
        """Hold the lock file ``name`` exclusively.

        The GC removes the lock file of a template that is gone
        (:meth:`_remove_lock`), holding it: a locker that opened it
        before may then get the lock of a file no one else will ever
        open. So once locked, the file must still be the one ``name``
        leads to; if not, the lock is taken again on the current file.

        :raises: TemplateError if not locked within ``timeout`` seconds.
        """
        path = os.path.join(self.root, name)
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC |
                         os.O_NOFOLLOW, 0o600)
            try:
                if not fileutils.poll_flock(fd, deadline):
                    raise TemplateError(
                        reason='%s is held for more than %d s'
                        % (name, timeout))
                if _names(path, fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)        # removed under us: lock the new one
        try:
            yield
        finally:
            os.close(fd)

    def _remove_lock(self, digest):
        """Remove ``<digest>.lock`` if its template is gone and no one
        holds it (else empty lock files of every template ever built
        pile up in the store, on a tmpfs by default).

        Removed while locked, after checking under the lock that the
        template is still absent (a build renames it into place holding
        the lock); lockers that opened the file before notice it is
        gone (:meth:`_flock`).
        """
        path = os.path.join(self.root, digest + '.lock')
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return          # a build (or its waiter) holds it
            if _names(path, fd) and not os.path.lexists(self.path(digest)):
                os.unlink(path)
        finally:
            os.close(fd)

    # ------------------------------------------------------------- index
    def read_index(self):
        """:returns: {digest: {'key', 'created', 'last_used'}}; an
            unreadable index is an empty one (templates are rebuilt).
        """
        try:
            index = fileutils.read_json(os.path.join(self.root, INDEX))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            LOG.warning('VM template index unreadable (%s): starting a '
                        'new one', exc)
            return {}
        if not isinstance(index, dict):
            return {}
        return {d: e for d, e in index.items()
                if isinstance(e, dict) and len(d) == 16 and
                set(d) <= _DIGEST_CHARS}

    def _update_index(self, change):
        with self._flock('index.lock', 30):
            index = self.read_index()
            change(index)
            fileutils.write_json(os.path.join(self.root, INDEX), index)

    def touch(self, digest):
        """Record a use (the GC keeps recently used templates)."""
        now = time.time()

        def change(index):
            entry = index.setdefault(digest, {'created': now})
            entry['last_used'] = now
        try:
            self._update_index(change)
        except (OSError, ValueError, TemplateError) as exc:
            LOG.warning('cannot record the use of VM template %s: %s',
                        digest, exc)

    # -------------------------------------------------------- find, check
    def find(self, key):
        """:returns: the complete, verified :class:`Template` of ``key``,
            or None if there is none.
        :raises: TemplateError if one exists but is damaged or does not
            match (it is retired: the next use rebuilds it).
        """
        path = self.path(key.digest)
        if not os.path.isdir(path):
            return None
        try:
            self.verify(key, path)
        except TemplateError:
            self.retire(key.digest)
            raise
        return Template(key, path)

    def verify(self, key, path):
        """Check a template against its key and its recorded files.

        :raises: TemplateError
        """
        try:
            meta = fileutils.read_json(os.path.join(path, META))
        except (OSError, ValueError) as exc:
            raise TemplateError(reason='%s: no readable %s (%s)'
                                % (path, META, exc))
        if not isinstance(meta, dict) or meta.get('key') != key.as_dict():
            raise TemplateError(reason='%s was made for another machine'
                                % path)
        try:
            ram = os.lstat(os.path.join(path, RAM))
        except OSError as exc:
            raise TemplateError(reason='%s: guest RAM missing (%s)'
                                % (path, exc))
        if ram.st_size != key.memory_mb * 1024 * 1024:
            raise TemplateError(reason='%s: guest RAM is %d bytes, not %d'
                                % (path, ram.st_size,
                                   key.memory_mb * 1024 * 1024))
        files = meta.get('files')
        if not isinstance(files, dict):
            raise TemplateError(reason='%s: no file list' % path)
        for name in (STATE_DEV, STATE_FULL):
            want = files.get(name)
            full = os.path.join(path, name)
            try:
                size = os.lstat(full).st_size
            except OSError as exc:
                raise TemplateError(reason='%s missing (%s)' % (full, exc))
            if not isinstance(want, dict) or want.get('size') != size:
                raise TemplateError(reason='%s has changed size' % full)
        # The device state is small: its checksum is checked every time.
        # (The full state and the RAM are checked by size only: hashing
        # hundreds of MiB per start would cost more than a cold boot.)
        got = _sha256(os.path.join(path, STATE_DEV), STATE_DEV_MAX)
        if got != files[STATE_DEV].get('sha256'):
            raise TemplateError(reason='%s is corrupt (checksum)'
                                % os.path.join(path, STATE_DEV))

    def usable(self, key):
        """:returns: the verified :class:`Template` of ``key``, or None
            when there is none or it was damaged (then retired with a
            warning: the next build makes it again).
        :raises: TemplateError if the store's directory is not ours.
        """
        self.ensure_root()
        try:
            return self.find(key)
        except TemplateError as exc:
            LOG.warning('VM template %s retired: %s', key.digest, exc)
            return None

    # ------------------------------------------------------------- build
    def get_or_build(self, key, build):
        """The template of ``key``, built by ``build(tmp_dir)`` if there
        is none yet (one build at a time per key, across processes).

        :param build: callable that makes RAM, STATE_DEV and STATE_FULL
            in the directory it is given and returns None.
        :returns: a :class:`Template`.
        :raises: TemplateError
        """
        found = self.usable(key)
        if found is not None:
            return found
        with self._flock(key.digest + '.lock', BUILD_WAIT):
            found = self.find(key)      # built while we waited
            if found is not None:
                return found
            tmp = '%s.build-%d' % (self.path(key.digest), os.getpid())
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp, 0o700)
            try:
                started = time.monotonic()
                build(tmp)
                files = {name: file_meta(os.path.join(tmp, name),
                                         STATE_DEV_MAX if name == STATE_DEV
                                         else 1 << 40)
                         for name in (STATE_DEV, STATE_FULL)}
                fileutils.write_json(os.path.join(tmp, META), {
                    'key': key.as_dict(), 'files': files,
                    'created': time.time()})
                self.verify(key, tmp)
                fileutils.fsync_dir(tmp)
                os.rename(tmp, self.path(key.digest))
                fileutils.fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            LOG.info('VM template %s built in %.2f s', key.digest,
                     time.monotonic() - started)
        self.touch(key.digest)
        self.gc()
        return Template(key, self.path(key.digest))

    def build_if_idle(self, key, build):
        """Build the template of ``key`` unless one exists or another
        build (of any template) runs on this host: a background build
        must never queue behind another one, nor run two at once on a
        host that is busy booting sandboxes.

        :param build: as for :meth:`get_or_build`.
        :returns: the :class:`Template`, or None when another build runs.
        :raises: TemplateError
        """
        self.ensure_root()
        fd = os.open(os.path.join(self.root, BUILD_LOCK),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return self.get_or_build(key, build)
        finally:
            os.close(fd)

    def building(self):
        """:returns: whether a background build holds the host's build
            lock now.
        """
        try:
            fd = os.open(os.path.join(self.root, BUILD_LOCK),
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # ---------------------------------------------------------- retire, gc
    def retire(self, digest):
        """Remove one template (clones running from it keep their
        mapping: the kernel keeps an unlinked file's pages while mapped).
        """
        path = self.path(digest)
        gone = '%s.retired-%d' % (path, os.getpid())
        try:
            os.rename(path, gone)
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(gone, ignore_errors=True)

        def change(index):
            index.pop(digest, None)
        try:
            self._update_index(change)
        except (OSError, ValueError, TemplateError) as exc:
            LOG.warning('VM template index: %s', exc)

    def gc(self, now=None, max_count=None, max_age=None):
        """Remove templates unused for ``[kata] template_max_age``, then
        the least recently used beyond ``[kata] template_max_count``,
        leftovers of builds that died and the lock files of templates
        that are gone.

        :returns: the digests removed.
        """
        now = time.time() if now is None else now
        max_count = max_count or CONF.kata.template_max_count
        max_age = max_age or CONF.kata.template_max_age
        if not os.path.isdir(self.root):
            return []
        index = self.read_index()
        present = set()
        locks = set()
        for name in os.listdir(self.root):
            full = os.path.join(self.root, name)
            if len(name) == 16 and set(name) <= _DIGEST_CHARS:
                present.add(name)
            elif name.endswith('.lock') and len(name) == 21 and \
                    set(name[:16]) <= _DIGEST_CHARS:
                locks.add(name[:16])
            elif ('.build-' in name or '.retired-' in name) and \
                    os.path.isdir(full):
                pid = name.rsplit('-', 1)[1]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(full, ignore_errors=True)

        def last_used(digest):
            entry = index.get(digest) or {}
            value = entry.get('last_used', entry.get('created'))
            if not isinstance(value, (int, float)):
                # Not in the index (written by a process that died
                # before recording it): as old as its files.
                try:
                    value = os.stat(self.path(digest)).st_mtime
                except OSError:
                    value = 0
            return value
        ordered = sorted(present, key=last_used, reverse=True)
        doomed = [d for i, d in enumerate(ordered)
                  if i >= max_count or now - last_used(d) > max_age]
        for digest in doomed:
            LOG.info('VM template %s removed (unused)', digest)
            self.retire(digest)
        for digest in locks - (present - set(doomed)):
            try:
                self._remove_lock(digest)
            except OSError as exc:
                LOG.warning('VM template lock %s: %s', digest, exc)
        stale = set(index) - present - set(doomed)
        if stale:
            def change(index):
                for digest in stale:
                    index.pop(digest, None)
            try:
                self._update_index(change)
            except (OSError, ValueError, TemplateError):
                pass
        return doomed


def _names(path, fd):
    """:returns: whether ``path`` leads to the file open as ``fd`` (not
        removed, nor removed and created again).
    """
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
