"""kata-zun-shim: one daemon per sandbox.

The shim owns the QEMU child and the agent link of one sandbox, keeps the
container's stdout/stderr in a log file, records the exit status in the
sandbox state file and serves a local unix-socket API to the CLI and the
Zun driver. It is started detached from its caller, so restarting the CLI
or zun-compute never touches a running container.

Its API speaks the agent's framing (:mod:`kata_zun.agent.protocol`): a
client sends HELLO, then REQUEST frames; STDIN frames feed a process it is
attached to; it receives RESPONSE frames, STDOUT/STDERR frames of the
processes it is attached to and EVENT frames when they exit.

The shim is one event loop; its parts live in mixins: the agent link
(:mod:`.agentlink`), API clients and their flow control (:mod:`.clients`),
the API operations (:mod:`.ops`) and the container's lifecycle, restart
policy and health checks (:mod:`.lifecycle`). Nothing the guest or a
client sends can grow the shim's memory without bound: see the limits in
:mod:`.clients` and :mod:`.guestdata`.
"""

import errno
import os
import selectors
import time

from oslo_log import log as logging

from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.shim import agentlink
from kata_zun.shim import clients
from kata_zun.shim import diskstall
from kata_zun.shim import lifecycle
from kata_zun.shim import ops

LOG = logging.getLogger(__name__)

# Stop reading the agent while an attached client has this much unread:
# back-pressure goes to the guest instead of the shim's memory.
CLIENT_HIGH_WATER = 8 * 1024 * 1024
# Time for attached clients to read the last frames before the shim exits.
DRAIN_TIMEOUT = 5.0
# How often the shim checks that its sandbox record still exists.
RECORD_CHECK_INTERVAL = 5.0

# Names other modules and tests know the shim by.
ShimSetupError = agentlink.ShimSetupError
Client = clients.Client
NIC_AGENT_TIMEOUT = ops.NIC_AGENT_TIMEOUT


class Shim(agentlink.AgentLink, clients.ClientHandling, ops.ApiOps,
           lifecycle.Lifecycle, diskstall.DiskStall):

    def __init__(self, state_dir, run_dir, hypervisor, max_frame,
                 agent_timeout, log_max_bytes, stop_timeout,
                 boot_cpu_budget=120.0):
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.hypervisor = hypervisor
        self.max_frame = max_frame
        # Set-up gives up on a VM without progress over agent_timeout
        # seconds, or past boot_cpu_budget CPU seconds (shim.progress).
        self.agent_timeout = agent_timeout
        self.boot_cpu_budget = boot_cpu_budget
        self.log_max_bytes = log_max_bytes
        self.stop_timeout = stop_timeout
        self.config = fileutils.read_json(self._path('config.json'))
        self.cid = self.config['id']
        self.state = fileutils.read_json(self._path('state.json'))
        self.sel = selectors.DefaultSelector()
        self.vm = None
        self.agent = None
        self.agent_paused = False
        self.listener = None
        self.clients = []
        self.pending = {}              # agent request id -> callback
        self.next_rid = 1
        self.timers = []               # (deadline, callback)
        self.waiters = []              # (client, rid, deadline or None)
        self.main = None               # agent handle of the main process
        self.exited = False
        self.finished = False
        self.restarts = 0
        # A stop or kill by the user: restart policies no longer apply.
        self.manually_stopped = False
        self.logw = None
        # Health checks (see kata_zun.runtime.health): the definition,
        # its state machine, and the probe running now (handle, start,
        # output) or None.
        self.health = self.config.get('healthcheck')
        self.health_tracker = (health.Tracker(self.health)
                               if self.health else None)
        self.probe = None
        self.health_generation = 0

    def _path(self, name):
        return os.path.join(self.state_dir, name)

    def save_state(self, **changes):
        """Update the sandbox record (state.json).

        Every value that came from the guest is bounded before it gets
        here (:mod:`kata_zun.shim.guestdata`), so the record stays far
        below what its readers accept; should it not, the health log is
        given up rather than the record.
        """
        self.state.update(changes)
        try:
            self._write_state()
        except OSError as exc:
            # A full host file system (the writable layers are sparse):
            # the room kept for this is given back and the write tried
            # again; failing that, the old record stays whole (atomic
            # write) and this state is written again by _watch_disks.
            if (exc.errno != errno.ENOSPC or
                    not diskstall.give_room(self.state_dir)):
                return self._state_unsaved(exc)
            try:
                self._write_state()
            except OSError as exc:
                return self._state_unsaved(exc)
        self.state_unsaved = False

    def _write_state(self):
        path = self._path('state.json')
        try:
            fileutils.write_json(path, self.state)
        except ValueError as exc:
            LOG.error('sandbox %s: %s', self.cid, exc)
            self.state.pop('health', None)
            self.state['error'] = 'the sandbox record outgrew its limit'
            fileutils.write_json(path, self.state)

    def _state_unsaved(self, exc):
        LOG.error('sandbox %s: cannot write its state: %s', self.cid, exc)
        self.state_unsaved = True

    # ------------------------------------------------------------ serving
    def serve(self):
        """Run until the container has exited and the VM is gone."""
        self.sel.register(self.listener, selectors.EVENT_READ, 'listen')
        self.vm_fd = os.pidfd_open(self.vm.pid)
        self.sel.register(self.vm_fd, selectors.EVENT_READ, 'vm')
        self.sel.register(self.agent.fd, selectors.EVENT_READ, 'agent')
        self.timers.append((time.monotonic() + RECORD_CHECK_INTERVAL,
                            self._check_record))
        self.timers.append((time.monotonic() + diskstall.CHECK_INTERVAL,
                            self._watch_disks))
        diskstall.keep_room(self.state_dir)
        drain_deadline = None
        while True:
            if self.finished:
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                if (time.monotonic() > drain_deadline or
                        not any(c.chan.pending_out for c in self.clients)):
                    break
            self._pump()
            self._update_interest()
            timeout = self._run_timers()
            if self.finished:
                timeout = min(timeout, 0.05)
            for key, mask in self.sel.select(timeout):
                what = key.data
                try:
                    if what == 'listen':
                        self._accept()
                    elif what == 'vm':
                        self._vm_exited()
                    elif what == 'agent':
                        self._agent_io(mask)
                    else:
                        self._client_io(what, mask)
                except Exception:
                    LOG.exception('shim: error handling %s', what)
                    if isinstance(what, Client):
                        self._drop(what)
        for client in list(self.clients):
            self._drop(client)
        if self.state_unsaved:
            self.save_state()      # a last try: the exit status matters

    def _update_interest(self):
        if self.agent is not None and not self.agent.closed:
            backlog = max([c.chan.pending_out for c in self.clients] or [0])
            events = 0
            if backlog < CLIENT_HIGH_WATER:
                events |= selectors.EVENT_READ
            if self.agent.pending_out:
                events |= selectors.EVENT_WRITE
            self._set_interest(self.agent.fd, events, 'agent')
        for client in self.clients:
            # Read a client only once what it sent before is handed on.
            events = (selectors.EVENT_READ if self._client_readable(client)
                      else 0)
            if client.chan.pending_out:
                events |= selectors.EVENT_WRITE
            self._set_interest(client.sock, events, client)

    def _set_interest(self, fileobj, events, data):
        try:
            key = self.sel.get_key(fileobj)
        except KeyError:
            if events:
                self.sel.register(fileobj, events, data)
            return
        if not events:
            self.sel.unregister(fileobj)
        elif key.events != events:
            self.sel.modify(fileobj, events, data)

    def _check_record(self):
        """Stop the VM when the sandbox record was deleted behind our back.

        After an rm -rf of the state path nobody could reach it again: it
        must not live on as an orphan VM.
        """
        if self.finished:
            return
        if not os.path.exists(self._path('config.json')):
            LOG.error('the record of sandbox %s is gone: stopping its VM',
                      self.cid)
            self.exited = True
            self._stop_vm()
            return
        self.timers.append((time.monotonic() + RECORD_CHECK_INTERVAL,
                            self._check_record))

    def _run_timers(self):
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        for _deadline, callback in due:
            callback()
        for waiter in list(self.waiters):
            if waiter[2] is not None and waiter[2] <= now:
                self.waiters.remove(waiter)
                self._respond(waiter[0], waiter[1],
                              result={'exited': False})
        deadlines = [t[0] for t in self.timers]
        deadlines += [w[2] for w in self.waiters if w[2] is not None]
        if not deadlines:
            return 1.0
        return max(0.0, min(deadlines) - time.monotonic())
