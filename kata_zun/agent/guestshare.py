"""Block volumes shared by several containers of one VM (a pod).

A pod lists a volume once and any of its containers may mount it, some
read-write, some read-only. A file system is mounted once per device in
the guest (a second mount of the same device with other flags is
EBUSY): the first container that mounts a device mounts it at a staging
directory outside every container's root, and each container, the first
included, gets a bind mount of it (read-only for a read-only mount).

Stdlib only: runs inside the VM.
"""

import os

MS_RDONLY = 0x1
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
STAGING = '/run/kz-shared'


class SharedMounts(object):
    """A ``mount(source, target, fstype, flags, data)`` callable for
    :func:`kata_zun.agent.guestvolumes.mount_all` that stages devices.

    :param mount: the real mount callable.
    :param staging: where devices are mounted once.
    """

    def __init__(self, mount, staging=STAGING):
        self._mount = mount
        self.staging = staging
        self.staged = {}               # device path -> staging directory
        self.read_only = set()         # read-only binds of those

    def __call__(self, source, target, fstype, flags=0, data=None):
        if not isinstance(source, str) or not source.startswith('/dev/'):
            return self._mount(source, target, fstype, flags, data)
        stage = self.staged.get(source)
        if stage is None:
            stage = os.path.join(self.staging, str(len(self.staged)))
            os.makedirs(stage, mode=0o700, exist_ok=True)
            try:
                # Read-write when the device allows it: another container
                # may want to write.
                self._mount(source, stage, fstype,
                            flags & ~MS_RDONLY, data)
            except OSError:
                if not flags & MS_RDONLY:
                    raise
                self._mount(source, stage, fstype, flags, data)
            self.staged[source] = stage
        if flags & MS_RDONLY:
            stage = self._read_only(stage)
        # A bind mount keeps the flags of what it binds: a read-only
        # one is read-only from the start (a remount of the target
        # itself cannot be reached through the pinned path).
        self._mount(stage, target, None, MS_BIND)

    def _read_only(self, stage):
        ro = stage + '-ro'
        if ro not in self.read_only:
            os.makedirs(ro, mode=0o700, exist_ok=True)
            self._mount(stage, ro, None, MS_BIND)
            self._mount(None, ro, None,
                        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV)
            self.read_only.add(ro)
        return ro
