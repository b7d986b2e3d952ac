"""A VM stalled on a full host file system: resumed, or stopped on demand.

Writable layers (and named volumes) are sparse files: together they may
promise more than the host file system holds. When it fills, a guest
write fails on the host with ENOSPC and QEMU stops the VM ("io-error")
rather than lose the write (its default for virtio-blk). Nothing in the
guest can answer then: not the container, not the agent. The shim looks
at QEMU's run state now and then and

* resumes the VM as soon as the host file system has room again (QEMU
  then retries the failed writes: nothing is lost);
* stops it for good when a stop was asked for meanwhile (the agent
  cannot pass a signal on; the container exits with 137 and says why).

A state the shim could not write on the full file system is written
again from here. So that the last one (the exit status) can be written
even then, the shim keeps a little room of its own in the record
directory (:data:`ROOM_FILE`), given back when a state write meets
ENOSPC and taken again when there is room.
"""

import os
import time

from oslo_log import log as logging

from kata_zun import exception

LOG = logging.getLogger(__name__)

# How often QEMU's run state is looked at (one QMP query-status).
CHECK_INTERVAL = 2.0
# Room the host file system needs before a stalled VM is resumed: less
# would only let it fail its next write again at once.
RESUME_FREE_BYTES = 64 * 1024 * 1024
STALL_ERROR = ('the VM stalled: the host file system of its disks is '
               'full')


# Room kept for the sandbox's state writes: a few state.json files.
ROOM_FILE = '.state-room'
ROOM_BYTES = 64 * 1024


def keep_room(directory):
    """Allocate the state writes' room (real blocks, not sparse).

    :returns: True if it is there.
    """
    path = os.path.join(directory, ROOM_FILE)
    if os.path.exists(path):
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, ROOM_BYTES)
        return True
    except OSError:
        os.unlink(path)
        return False
    finally:
        os.close(fd)


def give_room(directory):
    """Free the state writes' room.

    :returns: True if there was room to give.
    """
    try:
        os.unlink(os.path.join(directory, ROOM_FILE))
        return True
    except OSError:
        return False


def host_free_bytes(path):
    """:returns: bytes an unprivileged writer may still use at ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskStall(object):
    """Mixin of :class:`kata_zun.shim.server.Shim`."""

    io_stalled = False
    # A state the shim could not write (see Shim.save_state).
    state_unsaved = False

    def _watch_disks(self):
        """Timer: look at QEMU's run state, act on an io-error stop;
        write a state that could not be written before.
        """
        if self.state_unsaved:
            self.save_state()
        elif host_free_bytes(self.state_dir) >= RESUME_FREE_BYTES:
            keep_room(self.state_dir)
        if self.finished:
            return
        # Only a VM that can tell its run state (QEMU's QMP) can stall.
        query = getattr(self.vm, 'query_status', None)
        try:
            if query is not None and self.vm.poll() is None:
                status = query().get('status')
                if status == 'io-error':
                    self._io_stalled()
                elif self.io_stalled:
                    LOG.info('sandbox %s: its VM runs again', self.cid)
                    self.io_stalled = False
        except (exception.HypervisorError, OSError) as exc:
            LOG.debug('sandbox %s: run state unknown: %s', self.cid, exc)
        except Exception:
            # A timer never takes the shim down with it.
            LOG.exception('sandbox %s: watching its disks failed', self.cid)
        if not self.finished:
            self.timers.append((time.monotonic() + CHECK_INTERVAL,
                                self._watch_disks))

    def _io_stalled(self):
        if not self.io_stalled:
            LOG.error('sandbox %s: %s; it resumes when %d MiB are free',
                      self.cid, STALL_ERROR, RESUME_FREE_BYTES >> 20)
            self.io_stalled = True
        if self.manually_stopped and not self.exited:
            # The guest cannot pass the stop's signal on: what it would
            # have written before exiting cannot be written anyway.
            self._container_exited(137, False, error=STALL_ERROR)
            self._stop_vm()
            return
        if host_free_bytes(self.state_dir) >= RESUME_FREE_BYTES:
            LOG.info('sandbox %s: the host file system has room again: '
                     'resuming the VM', self.cid)
            self.vm.resume()
