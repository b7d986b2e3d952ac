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

Everything the guest sends is untrusted: frames are bounded by the
decoder, JSON is type-checked here, and a misbehaving guest gets its link
closed and its VM stopped, never a crashed shim.
"""

import base64
import os
import selectors
import signal
import socket
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.shim import logs

LOG = logging.getLogger(__name__)

# Stop reading the agent while an attached client has this much unread:
# back-pressure goes to the guest instead of the shim's memory.
CLIENT_HIGH_WATER = 8 * 1024 * 1024
# A client that falls this far behind is dropped.
CLIENT_MAX_BACKLOG = 64 * 1024 * 1024
# Time for attached clients to read the last frames before the shim exits.
DRAIN_TIMEOUT = 5.0
# How often the shim checks that its sandbox record still exists.
RECORD_CHECK_INTERVAL = 5.0


class ShimSetupError(Exception):
    pass


class Client(object):
    """One API connection."""

    def __init__(self, sock, max_frame):
        sock.setblocking(False)
        self.sock = sock
        self.chan = protocol.Channel(sock.fileno(), max_frame,
                                     owns_fd=False)
        self.hello = False
        self.subs = set()             # process handles it receives
        self.stdin = set()            # process handles it may feed

    def send_json(self, ftype, obj):
        self.chan.send(protocol.encode_json(ftype, obj))

    def close(self):
        self.chan.close()
        self.sock.close()


# How long the agent may take to configure or release a hotplugged NIC
# (it waits up to 5 s for a new NIC to be probed; a slot powers off in
# about a second). A silent guest does not stop a detach: the tap is cut.
NIC_AGENT_TIMEOUT = 10.0


class Shim(object):

    def __init__(self, state_dir, run_dir, hypervisor, max_frame,
                 agent_timeout, log_max_bytes, stop_timeout):
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.hypervisor = hypervisor
        self.max_frame = max_frame
        self.agent_timeout = agent_timeout
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
        self.state.update(changes)
        fileutils.write_json(self._path('state.json'), self.state)

    # ------------------------------------------------------------ set-up
    def boot(self, vm_config):
        """Boot the VM, shake hands with the agent and create the
        container in it. Blocking: runs before the API is served.

        :raises: ShimSetupError, HypervisorError, OSError
        """
        t0 = time.monotonic()
        self.vm = self.hypervisor.start(vm_config)
        self.save_state(shim_pid=os.getpid(), vm_pid=self.vm.pid,
                        boot_id=fileutils.boot_id())
        timing = {'vmm_started': time.monotonic() - t0}
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.agent_timeout)
        sock.connect(self.vm.agent_socket)
        self._agent_sock = sock
        self.agent = protocol.Channel(sock.fileno(), self.max_frame,
                                      owns_fd=False)
        hello = self._sync_frame(protocol.HELLO, self.agent_timeout)
        if hello.json().get('version') != protocol.VERSION:
            raise ShimSetupError('agent speaks protocol version %r' %
                                 hello.json().get('version'))
        timing['agent_ready'] = time.monotonic() - t0
        sock.sendall(protocol.encode_json(
            protocol.HELLO, {'version': protocol.VERSION}))
        sandbox = self.config['sandbox']
        sandbox_args = {
            'hostname': sandbox['hostname'], 'time': time.time(),
            'entropy': base64.b64encode(os.urandom(64)).decode()}
        # --- network (issue 5): guest interface, DNS, /etc/hosts entry
        from kata_zun import network
        attachment = network.read_attachment(self.state_dir)
        if attachment is not None:
            sandbox_args['network'] = attachment.get('guest') or {}
        result = self._sync_call('create_sandbox', sandbox_args)
        timing['sandbox_created'] = time.monotonic() - t0
        if isinstance(result.get('network'), dict):
            timing['guest_network'] = result['network'].get('seconds', 0)
        spec = network.container_spec(self.config['agent_spec'],
                                      attachment)
        # --- end network
        result = self._sync_call('create_container', spec)
        timing['container_created'] = time.monotonic() - t0
        self.main = result.get('proc')
        if not isinstance(self.main, int):
            raise ShimSetupError('agent returned no process handle')
        self.logw = logs.LogWriter(self._path('container.log'),
                                   self.log_max_bytes)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock_path = os.path.join(self.run_dir, 'shim.sock')
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.listener.bind(sock_path)
        os.chmod(sock_path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        # Where boot time goes, for operators and benchmarks (seconds).
        self.save_state(status='created', error=None, boot_timing={
            k: round(v, 3) for k, v in timing.items()})
        LOG.info('sandbox %s up: %s', self.cid, self.state['boot_timing'])

    def _sync_frame(self, ftype, timeout):
        deadline = time.monotonic() + timeout
        while True:
            frames, eof = self._read_blocking(deadline)
            for frame in frames:
                # Nothing but the HELLO is expected before set-up is done.
                if frame.type == ftype:
                    return frame
            if eof:
                raise ShimSetupError('agent closed the link during set-up')

    def _read_blocking(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ShimSetupError('agent did not answer within %s s' %
                                 self.agent_timeout)
        self._agent_sock.settimeout(remaining)
        try:
            data = self._agent_sock.recv(256 * 1024)
        except socket.timeout:
            raise ShimSetupError('agent did not answer within %s s' %
                                 self.agent_timeout)
        if not data:
            return [], True
        try:
            return self.agent.decoder.feed(data), False
        except protocol.ProtocolError as exc:
            raise ShimSetupError('agent protocol violation: %s' % exc)

    def _sync_call(self, op, args):
        rid = self._rid()
        self._agent_sock.settimeout(self.agent_timeout)
        self._agent_sock.sendall(protocol.encode_json(protocol.REQUEST, {
            'id': rid, 'op': op, 'args': args}))
        deadline = time.monotonic() + self.agent_timeout
        while True:
            frames, eof = self._read_blocking(deadline)
            for frame in frames:
                if frame.type != protocol.RESPONSE:
                    continue
                msg = frame.json()
                if msg.get('id') != rid:
                    continue
                self._agent_sock.setblocking(False)
                if 'error' in msg:
                    raise ShimSetupError('%s failed: %s' % (
                        op, _error_text(msg['error'])))
                result = msg.get('result')
                return result if isinstance(result, dict) else {}
            if eof:
                raise ShimSetupError('agent closed the link during %s' % op)

    def _rid(self):
        rid = self.next_rid
        self.next_rid += 1
        return rid

    # ------------------------------------------------------------ serving
    def serve(self):
        """Run until the container has exited and the VM is gone."""
        self.sel.register(self.listener, selectors.EVENT_READ, 'listen')
        self.vm_fd = os.pidfd_open(self.vm.pid)
        self.sel.register(self.vm_fd, selectors.EVENT_READ, 'vm')
        self.sel.register(self.agent.fd, selectors.EVENT_READ, 'agent')
        self.timers.append((time.monotonic() + RECORD_CHECK_INTERVAL,
                            self._check_record))
        drain_deadline = None
        while True:
            if self.finished:
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                if (time.monotonic() > drain_deadline or
                        not any(c.chan.pending_out for c in self.clients)):
                    break
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
            events = selectors.EVENT_READ
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

    # --------------------------------------------------------------- agent
    def _agent_io(self, mask):
        if mask & selectors.EVENT_WRITE:
            try:
                self.agent.flush()
            except OSError as exc:
                return self._agent_lost('write failed: %s' % exc)
        if mask & selectors.EVENT_READ:
            try:
                frames, eof = self.agent.read()
                for frame in frames:
                    self._agent_frame(frame)
            except protocol.ProtocolError as exc:
                return self._agent_lost(str(exc))
            except OSError as exc:
                return self._agent_lost('read failed: %s' % exc)
            if eof:
                self._agent_lost('agent closed the link')

    def _agent_lost(self, reason):
        if self.agent.closed:
            return
        LOG.error('agent link of %s lost: %s', self.cid, reason)
        self._set_interest(self.agent.fd, 0, 'agent')
        self.agent.close()
        self._agent_sock.close()
        if not self.exited:
            self._container_exited(255, False, error='agent link lost: %s'
                                   % reason)
        self._stop_vm()

    def _agent_frame(self, frame):
        if frame.type in (protocol.STDOUT, protocol.STDERR):
            handle, data = frame.stream()
            if self.probe is not None and handle == self.probe[0]:
                if len(self.probe[2]) < health.OUTPUT_BYTES:
                    self.probe[2].extend(
                        data[:health.OUTPUT_BYTES - len(self.probe[2])])
                return
            if handle == self.main and self.logw is not None:
                self.logw.write(logs.STDOUT if frame.type == protocol.STDOUT
                                else logs.STDERR, data)
            encoded = protocol.encode(frame.type, frame.payload)
            for client in self.clients:
                if handle in client.subs:
                    self._send(client, encoded)
            return
        if frame.type == protocol.RESPONSE:
            msg = frame.json()
            callback = self.pending.pop(msg.get('id'), None)
            if callback is not None:
                result = msg.get('result')
                callback(result if isinstance(result, dict) else {},
                         msg.get('error'))
            return
        if frame.type == protocol.EVENT:
            self._agent_event(frame.json())
        # Anything else from the guest is ignored.

    def _agent_event(self, event):
        if event.get('event') != 'exit':
            return
        handle = event.get('proc')
        code = event.get('exit_code')
        if not isinstance(handle, int) or not isinstance(code, int):
            LOG.warning('ignoring malformed exit event from the guest')
            return
        oom = bool(event.get('oom_killed'))
        if self.probe is not None and handle == self.probe[0]:
            return self._probe_done(code)
        forward = protocol.encode_json(protocol.EVENT, {
            'event': 'exit', 'proc': handle, 'exit_code': code,
            'oom_killed': oom})
        for client in self.clients:
            if handle in client.subs:
                self._send(client, forward)
                client.subs.discard(handle)
                client.stdin.discard(handle)
        if handle == self.main and not self.exited:
            if self._should_restart(code):
                return self._schedule_restart(code, oom)
            self._container_exited(code, oom)
            self._agent_call('shutdown', {}, lambda r, e: self._stop_vm())
            # A guest that never answers must not keep the VM alive.
            self.timers.append((time.monotonic() + 5, self._stop_vm))

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

    def _schedule_restart(self, code, oom):
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
                self._agent_call('shutdown', {},
                                 lambda r, e: self._stop_vm())
            return

        def started(result, error):
            handle = result.get('proc')
            if error or not isinstance(handle, int):
                self._container_exited(255, False, error='restart failed: '
                                       '%s' % _error_text(error))
                self._agent_call('shutdown', {},
                                 lambda r, e: self._stop_vm())
                return
            self.main = handle
            self.save_state(status='running', started_at=time.time(),
                            pid=result.get('pid'),
                            start_error=result.get('error'))
            self._health_start()
        self._agent_call('start', {'id': self.cid}, started)

    def _agent_call_by(self, op, args, timeout, callback):
        """:meth:`_agent_call` that answers ``callback`` with a 'timeout'
        error if the agent is silent for ``timeout`` seconds (a late
        answer is then ignored): for steps that must go on without an
        uncooperative guest.
        """
        answered = []

        def once(result, error):
            if not answered:
                answered.append(True)
                callback(result, error)
        self.timers.append((time.monotonic() + timeout, lambda: once(
            {}, {'code': 'timeout', 'message': 'the agent did not answer '
                 '%s within %s s' % (op, timeout)})))
        self._agent_call(op, args, once)

    def _agent_call(self, op, args, callback):
        if self.agent is None or self.agent.closed:
            callback({}, {'code': 'gone', 'message': 'the VM is gone'})
            return
        rid = self._rid()
        self.pending[rid] = callback
        self.agent.send(protocol.encode_json(protocol.REQUEST, {
            'id': rid, 'op': op, 'args': args}))

    # -------------------------------------------------------- health check
    def _health_start(self):
        """The container (re)started: ``starting`` again.

        The first probe runs after one interval, like Docker's.
        """
        if self.health_tracker is None:
            return
        self.health_tracker.container_started(time.time())
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
            handle = result.get('proc')
            if error or not isinstance(handle, int):
                self.probe = (None, start, bytearray(
                    ('cannot run the health check: %s' %
                     _error_text(error)).encode()), wall)
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
        _handle, _start, output, wall = self.probe
        self.probe = None
        if self.exited or self.health_tracker is None:
            return
        changed = self.health_tracker.record(wall, time.time(), code,
                                             bytes(output))
        if changed:
            LOG.info('container %s is %s', self.cid,
                     self.health_tracker.status)
        self.save_state(health=self.health_tracker.state())
        generation = self.health_generation
        self.timers.append((time.monotonic() + self.health['interval'],
                            lambda: self._probe(generation)))

    # --------------------------------------------------------- transitions
    def _container_exited(self, code, oom, error=None):
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

    def _stop_vm(self):
        if self.vm is not None and self.vm.poll() is None:
            self.vm.stop(0 if self.agent.closed else 3)
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

    # ------------------------------------------------------------- clients
    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.clients.append(Client(sock, self.max_frame))

    def _drop(self, client):
        if client in self.clients:
            self.clients.remove(client)
        self.waiters = [w for w in self.waiters if w[0] is not client]
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.close()

    def _send(self, client, data):
        if client.chan.pending_out > CLIENT_MAX_BACKLOG:
            LOG.warning('dropping a client that stopped reading')
            self._drop(client)
            return
        try:
            client.chan.send(data)
        except OSError:
            self._drop(client)

    def _respond(self, client, rid, result=None, error=None):
        msg = {'id': rid}
        if error is not None:
            msg['error'] = error
        else:
            msg['result'] = result or {}
        self._send(client, protocol.encode_json(protocol.RESPONSE, msg))

    def _client_io(self, client, mask):
        if mask & selectors.EVENT_WRITE:
            try:
                client.chan.flush()
            except OSError:
                return self._drop(client)
        if not mask & selectors.EVENT_READ:
            return
        try:
            frames, eof = client.chan.read()
        except (protocol.ProtocolError, OSError) as exc:
            LOG.warning('dropping client: %s', exc)
            return self._drop(client)
        for frame in frames:
            if client not in self.clients:
                return
            self._client_frame(client, frame)
        if eof:
            self._drop(client)

    def _client_frame(self, client, frame):
        if frame.type == protocol.STDIN:
            handle, _data = frame.stream()
            if handle in client.stdin and self.agent and \
                    not self.agent.closed:
                self.agent.send(protocol.encode(protocol.STDIN,
                                                frame.payload))
            return
        if frame.type == protocol.HELLO:
            client.hello = True
            client.send_json(protocol.HELLO, {'version': protocol.VERSION})
            return
        if frame.type != protocol.REQUEST:
            return
        msg = frame.json()
        rid = msg.get('id')
        op = msg.get('op')
        args = msg.get('args') or {}
        handler = getattr(self, 'op_' + str(op), None)
        if (not client.hello or handler is None or
                not isinstance(args, dict)):
            return self._respond(client, rid, error={
                'code': 'invalid', 'message': 'unknown request %r' % op})
        try:
            handler(client, rid, args)
        except (ValueError, TypeError, KeyError) as exc:
            self._respond(client, rid, error={'code': 'invalid',
                                              'message': str(exc)})

    def _forward(self, client, rid, op, args, on_result=None):
        def done(result, error):
            if error is None and on_result is not None:
                on_result(result)
            self._respond(client, rid, result=result, error=error)
        if self.exited:
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is not running'})
        self._agent_call(op, args, done)

    def _handle(self, args):
        handle = args.get('proc', self.main)
        if not isinstance(handle, int):
            raise ValueError('proc must be an integer')
        return handle

    # ----------------------------------------------------------- API ops
    def op_state(self, client, rid, args):
        self._respond(client, rid, result=dict(self.state, main=self.main))

    def op_attach(self, client, rid, args):
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        client.subs.add(self.main)
        if args.get('stdin') and self.config['agent_spec'].get('stdin'):
            client.stdin.add(self.main)
        self._respond(client, rid, result={'exited': False})

    def op_start(self, client, rid, args):
        if self.state.get('status') != 'created':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' %
                self.state.get('status')})

        def started(result):
            # An exec failure (no such command) stays the container's
            # error after its exit, as Zun shows it.
            self.save_state(status='running', started_at=time.time(),
                            pid=result.get('pid'),
                            start_error=result.get('error'))
            self._health_start()
        self._forward(client, rid, 'start', {'id': self.cid}, started)

    def op_exec(self, client, rid, args):
        spec = {'id': self.cid, 'argv': args.get('argv'),
                'env': args.get('env') or [], 'tty': bool(args.get('tty')),
                'stdin': bool(args.get('stdin'))}
        for key in ('workdir', 'user'):
            if args.get(key):
                spec[key] = args[key]

        self._forward_process(client, rid, 'exec', spec, spec['stdin'])

    def _forward_process(self, client, rid, op, spec, stdin):
        """Forward an operation that starts a process in the guest.

        The client receives its output (and may feed its stdin).
        """
        def subscribed(result):
            handle = result.get('proc')
            if isinstance(handle, int):
                client.subs.add(handle)
                if stdin:
                    client.stdin.add(handle)
        if self.state.get('status') == 'paused':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is paused'})
        self._forward(client, rid, op, spec, subscribed)

    def op_archive_get(self, client, rid, args):
        self._forward_process(client, rid, 'archive_get', {
            'id': self.cid, 'path': str(args['path'])}, False)

    def op_archive_put(self, client, rid, args):
        self._forward_process(client, rid, 'archive_put', {
            'id': self.cid, 'path': str(args['path'])}, True)

    def op_layer_diff(self, client, rid, args):
        self._forward_process(client, rid, 'layer_diff', {'id': self.cid},
                              False)

    def op_signal(self, client, rid, args):
        handle = self._handle(args)
        sig = int(args.get('signal', signal.SIGKILL))
        if handle == self.main and sig in (signal.SIGKILL, signal.SIGTERM,
                                           signal.SIGINT):
            self.manually_stopped = True
        if self.state.get('status') == 'restarting':
            return self._respond(client, rid)    # nothing runs right now
        self._forward(client, rid, 'signal', {'proc': handle,
                                              'signal': sig})

    def op_resize(self, client, rid, args):
        self._forward(client, rid, 'resize', {
            'proc': self._handle(args), 'rows': int(args['rows']),
            'cols': int(args['cols'])})

    def op_stats(self, client, rid, args):
        self._forward(client, rid, 'stats', {'id': self.cid})

    def op_ps(self, client, rid, args):
        self._forward(client, rid, 'ps', {'id': self.cid})

    def op_update(self, client, rid, args):
        spec = {'id': self.cid}
        for key in ('memory_bytes', 'cpus'):
            if args.get(key) is not None:
                spec[key] = args[key]
        self._forward(client, rid, 'update', spec)

    def op_wait(self, client, rid, args):
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        timeout = args.get('timeout')
        deadline = (time.monotonic() + float(timeout)
                    if timeout is not None else None)
        self.waiters.append((client, rid, deadline))

    def op_stop(self, client, rid, args):
        """SIGTERM, then SIGKILL after ``timeout`` seconds.

        Answers once the container has exited.
        """
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        self.manually_stopped = True
        if self.state.get('status') == 'restarting':
            # Between two runs: nothing to signal, just do not restart.
            self.waiters.append((client, rid, None))
            return
        timeout = float(args.get('timeout', self.stop_timeout))
        if self.state.get('status') == 'paused':
            self._unpause()
        if self.state.get('status') == 'created':
            # Never started: there is no process to signal.
            self._container_exited(0, False)
            self._agent_call('shutdown', {}, lambda r, e: self._stop_vm())
            return self._respond(client, rid, result=self._exit_info())
        self.waiters.append((client, rid, None))
        sig = int(args.get('signal', signal.SIGTERM))

        def kill():
            if not self.exited:
                self._agent_call('signal', {'proc': self.main,
                                            'signal': signal.SIGKILL},
                                 lambda r, e: None)
        self._agent_call('signal', {'proc': self.main, 'signal': sig},
                         lambda r, e: None)
        self.timers.append((time.monotonic() + timeout, kill))

    # ------------------------------------------------------- NIC hotplug
    def _hotplug_refused(self, client, rid):
        """:returns: True (and answers the client) when the VM cannot
        take or give up a NIC now: gone, or paused (its vCPUs stopped).
        """
        status = self.state.get('status')
        if self.exited or self.vm is None or status not in (
                'created', 'running', 'restarting'):
            self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' % status})
            return True
        return False

    def op_nic_add(self, client, rid, args):
        """Hotplug a NIC on an existing tap, then have the agent configure
        it (``interface``: a guest interface spec). On failure the NIC is
        taken out again: nothing is left half-made.
        """
        if self._hotplug_refused(client, rid):
            return
        nic = hv_base.Nic(str(args['tap']), str(args['mac']).lower())
        interface = args.get('interface')
        try:
            self.vm.add_nic(nic)
        except exception.HypervisorError as exc:
            return self._respond(client, rid, error={
                'code': 'hotplug', 'message': str(exc)})

        def configured(result, error):
            if error is not None:
                self._remove_nic(nic.tap)
            self._respond(client, rid, result=result, error=error)
        if interface is None:
            return configured({}, None)
        self._agent_call_by('add_interface', {'interface': interface},
                            NIC_AGENT_TIMEOUT, configured)

    def op_nic_remove(self, client, rid, args):
        """The agent unconfigures the NIC and powers its slot off, then
        the tap is cut from the VM (even if the guest did not cooperate).
        """
        if self._hotplug_refused(client, rid):
            return
        tap = str(args['tap'])
        mac = str(args['mac']).lower()

        def released(result, error):
            if error is not None:
                LOG.warning('agent could not release NIC %s: %s', mac,
                            _error_text(error))
            try:
                gone = self.vm.remove_nic(tap)
            except exception.HypervisorError as exc:
                return self._respond(client, rid, error={
                    'code': 'hotplug', 'message': str(exc)})
            self._respond(client, rid, result={
                'guest': result if error is None else None,
                'device_gone': gone})
        self._agent_call_by('remove_interface', {'mac': mac},
                            NIC_AGENT_TIMEOUT, released)

    def op_nic_configure(self, client, rid, args):
        """(Re)configure a NIC the VM already has, e.g. to give it the
        default route after the NIC that had it was detached.
        """
        if self._hotplug_refused(client, rid):
            return
        self._agent_call_by('add_interface',
                            {'interface': args['interface']},
                            NIC_AGENT_TIMEOUT,
                            lambda result, error: self._respond(
                                client, rid, result=result, error=error))

    def _remove_nic(self, tap):
        try:
            self.vm.remove_nic(tap)
        except exception.HypervisorError as exc:
            LOG.warning('undoing the hotplug of %s: %s', tap, exc)

    def op_pause(self, client, rid, args):
        if self.state.get('status') != 'running':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' %
                self.state.get('status')})
        self.vm.pause()
        self.save_state(status='paused')
        self._respond(client, rid)

    def op_unpause(self, client, rid, args):
        if self.state.get('status') != 'paused':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is not paused'})
        self._unpause()
        self._respond(client, rid)

    def _unpause(self):
        self.vm.resume()
        self.save_state(status='running')


def _error_text(error):
    if isinstance(error, dict):
        return str(error.get('message') or error.get('code'))
    return str(error)
