"""The shim of a pod: one VM, several containers.

A :class:`PodShim` is the sandbox shim (:class:`kata_zun.shim.server.
Shim`) of a pod record (:mod:`kata_zun.runtime.pods`): it boots one VM
with two disks per container (its image, read-only, and its own writable
layer) and the pod's volumes, creates every container in the guest,
then, once its starter has heard the VM is up, runs the init containers
one after the other to completion and starts the regular ones.

Per container it keeps what the single-container shim keeps for its one
container: the stdout/stderr log (``container.log`` of the container's
record), the exit status and its reason, the restart count (state.json
of the container's record). The pod's restart policy applies to each
regular container; an init container that fails is started again
(policy ``always`` or ``on-failure``, at most ``INIT_RETRIES`` times, as
zun and Kubernetes do) and then fails the pod (its record and the pod's
say which one, its exit code and why). The VM
powers off once no regular container runs and none will restart.

API requests that concern one container (exec, ps, stats, archives,
update, attach, wait, signal) carry its id as ``container``
(:class:`kata_zun.runtime.pods.PodMemberClient` adds it); ``stop`` and
``state`` without one concern the pod.
"""

import contextlib
import os
import signal
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun.runtime import fileutils
from kata_zun.shim import guestdata
from kata_zun.shim import logs
from kata_zun.shim import server

LOG = logging.getLogger(__name__)


#: Restarts of a failing init container before it fails the pod (zun
#: gives a capsule's init containers on-failure with 10 retries).
INIT_RETRIES = 10
#: Longest wait between two starts of a failing init container (s).
INIT_RETRY_MAX_DELAY = 10.0


class Member(object):
    """One container of the pod, as its shim tracks it."""

    def __init__(self, directory):
        self.dir = directory
        self.config = fileutils.read_json(os.path.join(directory,
                                                       'config.json'))
        self.state = {'status': 'created'}
        self.cid = self.config['id']
        self.name = self.config.get('pod_member') or self.cid[:12]
        self.init = bool(self.config['pod'].get('init'))
        self.main = None
        self.logw = None
        self.restarts = 0
        self.done = False
        self.waiters = []

    def save(self, **changes):
        self.state.update(changes)
        try:
            fileutils.write_json(os.path.join(self.dir, 'state.json'),
                                 self.state)
        except (OSError, ValueError) as exc:
            LOG.error('container %s: cannot write its state: %s',
                      self.cid, exc)

    def exit_info(self):
        return {'exited': True, 'exit_code': self.state.get('exit_code'),
                'oom_killed': self.state.get('oom_killed', False),
                'error': self.state.get('error')}


class PodShim(server.Shim):
    """The shim of one pod (see the module)."""

    def __init__(self, state_dir, run_dir, hypervisor, containers_dir,
                 **kwargs):
        super().__init__(state_dir, run_dir, hypervisor, **kwargs)
        self.members = []
        for cid in (self.config.get('init_containers', []) +
                    self.config.get('containers', [])):
            self.members.append(Member(os.path.join(containers_dir, cid)))
        self.by_cid = {m.cid: m for m in self.members}
        self.by_handle = {}
        self.init_queue = []

    def regular(self):
        return [m for m in self.members if not m.init]

    # ------------------------------------------------------------- boot
    def boot(self, vm_config, reservation=None):
        """Boot the VM, shake hands and create every container in it.

        :param reservation: the start's host memory claim
            (:class:`kata_zun.runtime.admission.Reservation`), or None.
        :raises: ShimSetupError, HypervisorError, OSError,
            InsufficientResources
        """
        t0 = time.monotonic()
        self.start_vm(vm_config, reservation)
        common = {'shim_pid': os.getpid(), 'vm_pid': self.vm.pid,
                  'boot_id': fileutils.boot_id()}
        self.save_state(**common)
        for m in self.members:
            m.save(status='created', **common)
        self._shake_hands()
        _result, attachment = self._create_sandbox()
        from kata_zun import network
        for m in self.members:
            spec = network.container_spec(m.config['agent_spec'],
                                          attachment)
            try:
                result = self._sync_call('create_container', spec)
            except server.ShimSetupError as exc:
                raise server.ShimSetupError('container %s: %s' % (m.name,
                                                                  exc))
            m.main = guestdata.started(result)['proc']
            if m.main is None:
                raise server.ShimSetupError('agent returned no process '
                                            'handle')
            self.by_handle[m.main] = m
            m.logw = logs.LogWriter(os.path.join(m.dir, 'container.log'),
                                    self.log_max_bytes)
        self._listen()
        self.save_state(status='created', error=None, boot_timing={
            'containers_created': round(time.monotonic() - t0, 3)})
        LOG.info('pod %s up with %d containers', self.cid,
                 len(self.members))

    # ------------------------------------------------------------ start
    def start_pod(self):
        """Run the init containers in order, then start the others."""
        self.save_state(status='running', started_at=time.time())
        self.init_queue = [m for m in self.members if m.init]
        self._next_init()

    def _next_init(self):
        if self.exited:
            return
        if self.manually_stopped:
            return self._pod_done()
        if self.init_queue:
            return self._start_member(self.init_queue.pop(0))
        for m in self.regular():
            self._start_member(m)

    def _start_member(self, m):
        def started(result, error):
            run = guestdata.started(result)
            if error or run['proc'] is None:
                return self._member_exited(m, 255, False, error=(
                    'start failed: %s' % guestdata.error_text(error)))
            m.main = run['proc']
            self.by_handle[m.main] = m
            m.save(status='running', started_at=time.time(),
                   pid=run['pid'], start_error=run['error'])
        if self.exited:
            return
        self._agent_call('start', {'id': m.cid}, started)

    # ------------------------------------------------------- agent side
    def _agent_frame(self, frame):
        if frame.type in (protocol.STDOUT, protocol.STDERR):
            handle, data = frame.stream()
            m = self.by_handle.get(handle)
            if m is not None and handle == m.main and m.logw is not None:
                m.logw.write(logs.STDOUT if frame.type == protocol.STDOUT
                             else logs.STDERR, data)
        super()._agent_frame(frame)

    def _agent_event(self, event):
        super()._agent_event(event)      # forwards it to attached clients
        if event.get('event') != 'exit':
            return
        handle = guestdata.integer(event.get('proc'), 0, 2 ** 32 - 1)
        code = guestdata.integer(event.get('exit_code'), 0, 255)
        m = self.by_handle.get(handle)
        if m is None or code is None or handle != m.main or m.done:
            return
        self._member_exited(m, code, event.get('oom_killed') is True)

    def _should_restart_member(self, code):
        policy = self.config.get('restart_policy') or {}
        policy = policy.get('name', 'no')
        if self.manually_stopped or policy == 'no':
            return False
        return policy == 'always' or code != 0

    def _should_retry_init(self, m, code):
        """Zun runs a capsule's init containers ``on-failure`` (at most
        :data:`INIT_RETRIES` times when the capsule's policy is
        ``always``), as Kubernetes retries them unless the pod's policy is
        Never: a failing init container is started again, with a growing
        delay, before it fails the pod.
        """
        policy = (self.config.get('restart_policy') or {}).get('name', 'no')
        return (code != 0 and not self.manually_stopped and
                policy in ('always', 'on-failure') and
                m.restarts < INIT_RETRIES)

    def _member_exited(self, m, code, oom, error=None):
        now = time.time()
        error = error or m.state.get('start_error')
        if m.init and self._should_retry_init(m, code):
            m.restarts += 1
            m.save(status='restarting', exit_code=code, oom_killed=oom,
                   finished_at=now,
                   restart_count=m.state.get('restart_count', 0) + 1)
            delay = min(0.1 * 2 ** (m.restarts - 1), INIT_RETRY_MAX_DELAY)
            self.timers.append((time.monotonic() + delay,
                                lambda: self._restart_member(m)))
            return
        if m.init:
            m.done = True
            self._close_member(m)
            failure = None
            if code != 0 and not self.manually_stopped:
                reason = 'OOMKilled' if oom else (error or 'Error')
                failure = 'init container %s failed: exit code %d (%s)' % (
                    m.name, code, reason)
                if m.restarts:
                    failure += ' after %d restarts' % m.restarts
                # Said before the init container's exit is recorded:
                # whoever sees the pod failed reads why at once.
                self.save_state(error=failure)
                for other in self.members:
                    if not other.done and other is not m:
                        other.save(error='not started: %s' % failure)
            m.save(status='exited', exit_code=code, oom_killed=oom,
                   finished_at=now, error=error)
            self._answer_waiters(m)
            if code == 0:
                return self._next_init()
            if failure is None:
                return self._pod_done()
            return self._pod_done(code=code, error=failure)
        if self._should_restart_member(code):
            m.restarts += 1
            m.save(status='restarting', exit_code=code, oom_killed=oom,
                   finished_at=now,
                   restart_count=m.state.get('restart_count', 0) + 1)
            delay = min(0.1 * 2 ** (m.restarts - 1), 60.0)
            self.timers.append((time.monotonic() + delay,
                                lambda: self._restart_member(m)))
            return
        m.done = True
        self._close_member(m)
        m.save(status='exited', exit_code=code, oom_killed=oom,
               finished_at=now, error=error)
        self._answer_waiters(m)
        if all(r.done for r in self.regular()):
            codes = [r.state.get('exit_code') or 0 for r in self.regular()]
            self._pod_done(code=max(codes))

    def _restart_member(self, m):
        if self.exited:
            return
        if self.manually_stopped:
            return self._member_exited(m, m.state.get('exit_code', 0),
                                       False)
        self._start_member(m)

    def _close_member(self, m):
        if m.logw is not None:
            m.logw.close()
            m.logw = None

    def _answer_waiters(self, m):
        for client, rid in m.waiters:
            self._respond(client, rid, result=m.exit_info())
        m.waiters = []

    def _pod_done(self, code=0, error=None):
        if self.exited:
            return
        self._container_exited(code, False, error=error)
        self._shutdown_vm()
        self.timers.append((time.monotonic() + 5, self._stop_vm))

    def _container_exited(self, code, oom, error=None):
        """The pod ends (all done, stopped, failed, or its VM or agent
        lost): every container that still ran ends with it.
        """
        now = time.time()
        for m in self.members:
            if m.done:
                continue
            m.done = True
            self._close_member(m)
            if m.state.get('status') in ('running', 'restarting',
                                         'paused'):
                lost = error if code == 255 and error else None
                m.save(status='exited', finished_at=now,
                       exit_code=m.state.get('exit_code')
                       if m.state.get('status') == 'restarting' else 255,
                       error=lost or m.state.get('start_error'))
            elif error:
                # Never started: the pod ended first, and says why.
                m.save(error='not started: %s' % error)
            self._answer_waiters(m)
        self.save_state(finished_at=now)
        super()._container_exited(code, oom, error=error)

    # -------------------------------------------------------------- API
    def _member_of(self, client, rid, args):
        m = self.by_cid.get(args.get('container'))
        if m is None:
            self._respond(client, rid, error={
                'code': 'notfound', 'message': 'no such container in this '
                'pod'})
        return m

    @contextlib.contextmanager
    def _as_member(self, m):
        """Let a single-container operation of the base shim act on
        ``m``: its id, main process and state for the call's duration
        (the operations only read them before handing the request on).
        """
        saved = self.cid, self.main, self.state
        self.cid, self.main, self.state = m.cid, m.main, m.state
        try:
            yield
        finally:
            self.cid, self.main, self.state = saved

    def _on_member(self, name, client, rid, args):
        """Run the base shim's ``op_<name>`` on the container named by
        ``args['container']``, which must run.
        """
        m = self._member_of(client, rid, args)
        if m is None:
            return
        if m.done or m.state.get('status') != 'running':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container %s is %s' % (
                    m.name, m.state.get('status'))})
        with self._as_member(m):
            getattr(super(), 'op_' + name)(client, rid, args)

    def op_exec(self, client, rid, args):
        self._on_member('exec', client, rid, args)

    def op_ps(self, client, rid, args):
        self._on_member('ps', client, rid, args)

    def op_stats(self, client, rid, args):
        self._on_member('stats', client, rid, args)

    def op_archive_get(self, client, rid, args):
        self._on_member('archive_get', client, rid, args)

    def op_archive_put(self, client, rid, args):
        self._on_member('archive_put', client, rid, args)

    def op_layer_diff(self, client, rid, args):
        self._on_member('layer_diff', client, rid, args)

    def op_update(self, client, rid, args):
        self._on_member('update', client, rid, args)

    def op_resize(self, client, rid, args):
        self._on_member('resize', client, rid, args)

    def op_signal(self, client, rid, args):
        """Signal a process of a container (its main one by default);
        the pod's restart policy then applies to it as to any exit.
        """
        m = self._member_of(client, rid, args)
        if m is None:
            return
        handle = args.get('proc', m.main)
        if not isinstance(handle, int) or m.state.get('status') != 'running':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container %s is %s' % (
                    m.name, m.state.get('status'))})
        self._forward(client, rid, 'signal', {
            'proc': handle, 'signal': int(args.get('signal',
                                                   signal.SIGKILL))})

    def op_attach(self, client, rid, args):
        m = self._member_of(client, rid, args)
        if m is None:
            return
        if m.done:
            return self._respond(client, rid, result=m.exit_info())
        client.subs.add(m.main)
        self._respond(client, rid, result={'exited': False})

    def op_wait(self, client, rid, args):
        if args.get('container') is None:
            return super().op_wait(client, rid, args)
        m = self._member_of(client, rid, args)
        if m is None:
            return
        if m.done:
            return self._respond(client, rid, result=m.exit_info())
        m.waiters.append((client, rid))

    def op_state(self, client, rid, args):
        self._respond(client, rid, result=dict(
            self.state, containers={m.cid: m.state for m in self.members}))

    def op_pause(self, client, rid, args):
        if args.get('container') is not None:
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'the containers of a pod share '
                'its VM: they cannot be paused one by one'})
        super().op_pause(client, rid, args)

    def op_unpause(self, client, rid, args):
        if args.get('container') is not None:
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'the containers of a pod share '
                'its VM: they cannot be paused one by one'})
        super().op_unpause(client, rid, args)

    def op_start(self, client, rid, args):
        self._respond(client, rid, error={
            'code': 'state', 'message': 'a pod starts as a whole'})

    def op_stop(self, client, rid, args):
        """Stop the pod: SIGTERM to every container, SIGKILL after
        ``timeout`` seconds; answers once the VM is going away.
        """
        if args.get('container') is not None:
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'stop the pod, not one of its '
                'containers'})
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        self.manually_stopped = True
        self.save_state(stopped=True)
        if self.state.get('status') == 'paused':
            self._unpause()
        self.waiters.append((client, rid, None))
        running = [m for m in self.members if not m.done and
                   m.state.get('status') == 'running']
        if not running:
            return self._pod_done()
        timeout = float(args.get('timeout', self.stop_timeout))
        sig = int(args.get('signal', signal.SIGTERM))
        for m in running:
            self._agent_call('signal', {'proc': m.main, 'signal': sig},
                             lambda r, e: None)

        def kill():
            for m in running:
                if not m.done:
                    self._agent_call('signal', {
                        'proc': m.main, 'signal': signal.SIGKILL},
                        lambda r, e: None)
        self.timers.append((time.monotonic() + timeout, kill))
