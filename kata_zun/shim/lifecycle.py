"""The shim's container lifecycle: restart policy, health checks, exit.

Docker's restart policies and health checks run here, inside the shim,
so they go on while zun-compute or the CLI are away.
"""

import os
import time

from oslo_log import log as logging

from kata_zun.runtime import events
from kata_zun.shim import guestdata

LOG = logging.getLogger(__name__)


class Lifecycle(object):
    """Mixin of :class:`kata_zun.shim.server.Shim`: transitions."""

    # ----------------------------------------------------- restart policy
    def _should_restart(self, code):
        """Docker's restart policies, applied inside the running VM."""
        policy = self.config.get('restart_policy') or {}
        name = policy.get('name', 'no')
        if self.manually_stopped or name == 'no':
            return False
        if name in ('always', 'unless-stopped'):
            return True
        limit = int(policy.get('max_retries') or 0)
        return (name == 'on-failure' and code != 0 and
                (limit == 0 or self.restarts < limit))

    def _event(self, action, **attributes):
        """Record an event of this container in the host's log (the
        state path is two levels above the sandbox record).
        """
        try:
            config = self.config
            image = config.get('image') or {}
            attributes.setdefault('name', config.get('name'))
            attributes.setdefault('image', image.get('name') or
                                  image.get('id'))
            events.emit(os.path.dirname(os.path.dirname(self.state_dir)),
                        'container', action, self.cid, attributes)
        except Exception as exc:      # an event never stops the shim
            LOG.debug('event %s: %s', action, exc)

    def _schedule_restart(self, code, oom):
        self._event('die', exitCode=code, oomKilled=oom or None)
        self.restarts += 1
        self.save_state(status='restarting', exit_code=code,
                        oom_killed=oom, finished_at=time.time(),
                        restart_count=self.state.get('restart_count', 0) + 1)
        # Back off like Docker: 100 ms, doubling, at most a minute.
        delay = min(0.1 * 2 ** (self.restarts - 1), 60.0)
        self.timers.append((time.monotonic() + delay, self._restart))

    def _restart(self):
        if self.exited or self.manually_stopped:
            if not self.exited:
                self._container_exited(self.state.get('exit_code', 0),
                                       self.state.get('oom_killed', False))
                self._shutdown_vm()
            return

        def started(result, error):
            run = guestdata.started(result)
            if error or run['proc'] is None:
                self._container_exited(255, False, error='restart failed: '
                                       '%s' % guestdata.error_text(error))
                self._shutdown_vm()
                return
            self.main = run['proc']
            self.save_state(status='running', started_at=time.time(),
                            pid=run['pid'], start_error=run['error'])
            self._event('start')
            self._health_start()
        self._agent_call('start', {'id': self.cid}, started)

    # -------------------------------------------------------- health check
    def _health_start(self):
        """The container (re)started: ``starting`` again.

        The first probe runs after one interval, like Docker's.
        """
        if self.health_tracker is None:
            return
        self.health_tracker.container_started(time.monotonic())
        self.save_state(health=self.health_tracker.state())
        self.health_generation += 1
        generation = self.health_generation
        self.timers.append((time.monotonic() + self.health['interval'],
                            lambda: self._probe(generation)))

    def _probe(self, generation):
        if (self.exited or generation != self.health_generation or
                self.state.get('status') != 'running'):
            # Stopped, restarted (a newer schedule runs) or paused: a
            # paused container is not probed, only rescheduled.
            if (not self.exited and generation == self.health_generation
                    and self.state.get('status') == 'paused'):
                self.timers.append((
                    time.monotonic() + self.health['interval'],
                    lambda: self._probe(generation)))
            return
        start = time.monotonic()
        wall = time.time()

        def spawned(result, error):
            handle = guestdata.started(result)['proc']
            if error or handle is None:
                self.probe = (None, start, bytearray(
                    ('cannot run the health check: %s' %
                     guestdata.error_text(error)).encode()), wall)
                return self._probe_done(None)
            self.probe = (handle, start, bytearray(), wall)
            deadline = start + self.health['timeout']
            self.timers.append((deadline,
                                lambda: self._probe_timeout(handle)))
        self.probe = (-1, start, bytearray(), wall)
        self._agent_call('exec', {
            'id': self.cid, 'argv': self.health['argv'], 'env': [],
            'tty': False, 'stdin': False}, spawned)

    def _probe_timeout(self, handle):
        if self.probe is None or self.probe[0] != handle:
            return
        self.probe[2][:0] = b'health check timed out; '
        self._agent_call('signal', {'proc': handle, 'signal': 9},
                         lambda r, e: None)
        self._probe_done(None)

    def _probe_done(self, code):
        _handle, start, output, wall = self.probe
        self.probe = None
        if self.exited or self.health_tracker is None:
            return
        # The grace period is measured on the monotonic clock (``start``):
        # a stepped wall clock must not end it early or stretch it.
        changed = self.health_tracker.record(wall, time.time(), code,
                                             bytes(output), clock=start)
        if changed:
            LOG.info('container %s is %s', self.cid,
                     self.health_tracker.status)
        self.save_state(health=self.health_tracker.state())
        generation = self.health_generation
        self.timers.append((time.monotonic() + self.health['interval'],
                            lambda: self._probe(generation)))

    # --------------------------------------------------------- transitions
    def _container_exited(self, code, oom, error=None):
        if not self.exited:
            self._event('die', exitCode=code, oomKilled=oom or None)
        self.exited = True
        if self.logw is not None:
            self.logw.close()
            self.logw = None
        self.save_state(status='exited', exit_code=code, oom_killed=oom,
                        error=error or self.state.get('start_error'),
                        finished_at=time.time())
        for client, rid, _deadline in self.waiters:
            self._respond(client, rid, result=self._exit_info())
        self.waiters = []
        for callback in list(self.pending.values()):
            callback({}, {'code': 'gone', 'message': 'container exited'})
        self.pending.clear()

    def _exit_info(self):
        return {'exited': True, 'exit_code': self.state.get('exit_code'),
                'oom_killed': self.state.get('oom_killed', False),
                'error': self.state.get('error')}

    def _shutdown_vm(self):
        """Have the agent end every process and flush the disks, then
        stop the VM.

        Once the agent has answered, the guest's disks are synced and
        nothing it does after matters: QEMU is told to quit at once
        rather than waited for while the guest powers itself off (tens
        of ms per stop under TCG). Without an answer, the guest gets its
        power-off grace as before.
        """
        self._agent_call('shutdown', {},
                         lambda r, e: self._stop_vm(synced=not e))

    def _stop_vm(self, synced=False):
        """:param synced: the agent has flushed the guest's disks."""
        if self.vm is not None and self.vm.poll() is None:
            self.vm.stop(0 if synced or self.agent.closed else 3)
        self._vm_exited()

    def _vm_exited(self):
        if self.vm.poll() is None:
            return
        try:
            self.sel.unregister(self.vm_fd)
            os.close(self.vm_fd)
        except (KeyError, ValueError, OSError):
            pass
        if not self.exited:
            self._container_exited(255, False, error=(
                'the VM stopped unexpectedly (QEMU status %s)' %
                self.vm.poll()))
        if self.agent is not None and not self.agent.closed:
            try:
                self.sel.unregister(self.agent.fd)
            except (KeyError, ValueError):
                pass
            self.agent.close()
            self._agent_sock.close()
        self.finished = True
