"""From a container's volume requests to VM disks and agent mount specs.

At create, :func:`resolve` checks each request against the host (the
block file exists and is a regular file or a block device, a named
volume exists or is created) and fixes what the VM will get: the disk
path, its serial and the mount spec the agent receives. The shim turns
the record into disks with :func:`disks`.

A bind mount of a directory shares that directory. A bind mount of a
regular file (Docker's ``-v /host/file:/etc/app.conf``, and Zun's
injected files) shares that one file: its virtiofsd exports a directory
holding only it, as :data:`FILE_NAME`, never the file's parent
(:mod:`.virtiofs`); the agent bind-mounts it at the target.
"""

import os
import stat

from kata_zun import exception
from kata_zun.hypervisor import base
from kata_zun.volume import spec

SERIAL_PREFIX = 'kz-vol'
TAG_PREFIX = 'kz-fs'
# The name of a single shared file inside its export; the host file's
# own name never reaches the guest.
FILE_NAME = 'file'


def _block_source(path):
    try:
        st = os.stat(path)
    except OSError as exc:
        raise exception.InvalidInput(
            reason='block volume %s: %s' % (path, exc.strerror))
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise exception.InvalidInput(
            reason='block volume %s is not a file or a block device' % path)
    return os.path.realpath(path)


def _bind_source(path):
    """:returns: (the resolved path, True if it is a regular file).
    :raises: InvalidInput
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise exception.InvalidInput(
            reason='bind mount %s: %s' % (path, exc.strerror))
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise exception.InvalidInput(
            reason='bind mount %s is not a directory or a regular file'
            % path)
    return os.path.realpath(path), stat.S_ISREG(st.st_mode)


def resolve(requests, store):
    """Fix the VM side of each volume request.

    :param requests: validated requests (:mod:`kata_zun.volume.spec`).
    :param store: the :class:`kata_zun.volume.store.VolumeStore`; a named
        volume that does not exist is created (Docker does the same).
    :returns: the record entries: the request plus ``disk`` (host path)
        and ``serial`` for a block device, ``dir`` and ``tag`` for a
        shared directory, ``file`` and ``tag`` for a shared file.
    :raises: InvalidInput, NotFound
    """
    out = []
    disks = shared = 0
    for req in spec.check_all(requests):
        entry = dict(req)
        if req['type'] == 'bind':
            path, is_file = _bind_source(req['source'])
            entry['file' if is_file else 'dir'] = path
            entry['tag'] = '%s%d' % (TAG_PREFIX, shared)
            shared += 1
            out.append(entry)
            continue
        if req['type'] == 'volume':
            try:
                vol = store.get(req['source'])
            except exception.NotFound:
                vol = store.create(req['source'])
            entry['disk'] = vol['disk']
        else:
            entry['disk'] = _block_source(req['source'])
        entry['serial'] = '%s%d' % (SERIAL_PREFIX, disks)
        disks += 1
        out.append(entry)
    return out


def agent_specs(entries):
    """:returns: the ``volumes`` list of the agent's create_container."""
    out = []
    for e in entries:
        if e['type'] == 'bind':
            vol = {'type': 'virtiofs', 'tag': e['tag'],
                   'target': e['target'], 'readonly': e['readonly']}
            if 'file' in e:
                vol['file'] = FILE_NAME
            out.append(vol)
        else:
            out.append({'type': 'block', 'serial': e['serial'],
                        'target': e['target'], 'readonly': e['readonly']})
    return out


def _is_block_device(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False        # opening it says why


def disks(entries):
    """:returns: the :class:`kata_zun.hypervisor.base.Disk` of each volume
        (read-only disks for read-only mounts).
    """
    return tuple(base.Disk(e['disk'], e['serial'], read_only=e['readonly'],
                           host_device=_is_block_device(e['disk']))
                 for e in entries or () if e['type'] != 'bind')


def shared_dirs(entries):
    """:returns: the :class:`kata_zun.hypervisor.base.SharedDir` of each
        bind mount (of a directory or of a single file).
    """
    return tuple(
        base.SharedDir(e['file'], e['tag'], read_only=e['readonly'],
                       file_name=FILE_NAME) if 'file' in e else
        base.SharedDir(e['dir'], e['tag'], read_only=e['readonly'])
        for e in entries or () if e['type'] == 'bind')


def users(containers, name):
    """:param containers: container records (objects with ``config``).
    :param name: a named volume.
    :returns: ids of the containers whose record uses volume ``name``.
    """
    return [c.id for c in containers
            if any(v.get('type') == 'volume' and v.get('source') == name
                   for v in c.config.get('volumes') or ())]
