"""The shim's link to the guest agent: set-up handshake, then frames.

Everything the guest sends is untrusted: frames are bounded by the
decoder, JSON is type-checked and bounded here (:mod:`guestdata`), and a
misbehaving guest gets its link closed and its VM stopped, never a
crashed shim.
"""

import base64
import fcntl
import os
import selectors
import socket
import struct
import termios
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.shim import guestdata
from kata_zun.shim import logs
from kata_zun.shim import progress

LOG = logging.getLogger(__name__)

# Warnings the guest can trigger that reach the shim's log in a minute.
GUEST_WARNINGS_PER_MINUTE = 10
# Seconds between two looks at a booting VM's progress.
PROGRESS_POLL = 0.5


class ShimSetupError(Exception):
    pass


def _unread(sock):
    """:returns: the socket buffer (bytes, overhead included) held by
        what we wrote to unix socket ``sock`` and its peer (QEMU) has not
        read yet (SIOCOUTQ): 0 once all was read, or when unknown.
    """
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b'\0' * 4)
    except OSError:
        return 0
    return struct.unpack('i', buf)[0]


class AgentLink(object):
    """Mixin of :class:`kata_zun.shim.server.Shim`: the agent side."""

    _warn_window = None
    # Bytes read from the agent during set-up (for the error message).
    _setup_rx = 0
    # QEMU was woken once during set-up (see _wake_qemu).
    _woken = False

    # ------------------------------------------------------------ set-up
    def start_vm(self, vm_config, reservation=None):
        """Start the VM (``self.vm``), admitted by ``reservation``, which
        then names its QEMU (its claim shrinks by what QEMU touched).

        :raises: HypervisorError, InsufficientResources
        """
        self.vm = self.hypervisor.start(
            vm_config, admit=reservation.need if reservation else None)
        if reservation is not None:
            reservation.attach(self.vm.pid)

    def boot(self, vm_config, reservation=None):
        """Boot the VM, shake hands with the agent and create the
        container in it. Blocking: runs before the API is served.

        :param reservation: the start's host memory claim
            (:class:`kata_zun.runtime.admission.Reservation`), or None.
        :raises: ShimSetupError, HypervisorError, OSError,
            InsufficientResources
        """
        t0 = time.monotonic()
        self.start_vm(vm_config, reservation)
        self.save_state(shim_pid=os.getpid(), vm_pid=self.vm.pid,
                        boot_id=fileutils.boot_id())
        timing = {'vmm_started': time.monotonic() - t0}
        self._shake_hands()
        timing['agent_ready'] = time.monotonic() - t0
        result, attachment = self._create_sandbox()
        timing['sandbox_created'] = time.monotonic() - t0
        if isinstance(result.get('network'), dict):
            timing['guest_network'] = guestdata.number(
                result['network'].get('seconds')) or 0.0
        from kata_zun import network
        spec = network.container_spec(self.config['agent_spec'],
                                      attachment)
        result = self._sync_call('create_container', spec)
        timing['container_created'] = time.monotonic() - t0
        self.main = guestdata.started(result)['proc']
        if self.main is None:
            raise ShimSetupError('agent returned no process handle')
        self.logw = logs.LogWriter(self._path('container.log'),
                                   self.log_max_bytes)
        self._listen()
        # Where boot time goes, for operators and benchmarks (seconds).
        self.save_state(status='created', error=None, boot_timing={
            k: round(v, 3) for k, v in timing.items()})
        LOG.info('sandbox %s up: %s', self.cid, self.state['boot_timing'])

    def _shake_hands(self):
        """Connect to the VM's agent and exchange HELLOs, waiting as long
        as the VM makes progress (see :mod:`kata_zun.shim.progress`).

        :raises: ShimSetupError, OSError
        """
        self._progress = progress.BootProgress(
            self.vm.pid, window=self.agent_timeout,
            cpu_budget=self.boot_cpu_budget)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.agent_timeout)
        sock.connect(self.vm.agent_socket)
        self._agent_sock = sock
        self.agent = protocol.Channel(sock.fileno(), self.max_frame,
                                      owns_fd=False)
        # Our HELLO goes first: a freshly booted agent greets whoever
        # connects, an agent restored from a VM template (greeted once
        # when the template was made) greets each new HELLO; either way
        # exactly one HELLO comes back (QEMU holds our bytes until the
        # guest has opened its port).
        sock.sendall(protocol.encode_json(
            protocol.HELLO, {'version': protocol.VERSION}))
        hello = self._sync_frame(protocol.HELLO)
        version = hello.json().get('version')
        if version != protocol.VERSION:
            raise ShimSetupError('agent speaks protocol version %s' %
                                 guestdata.printable(repr(version),
                                                     guestdata.MAX_WORD))

    def _create_sandbox(self):
        """The guest's identity and network (issue 5: interface, DNS,
        /etc/hosts entry).

        :returns: (the agent's result, the network attachment or None)
        :raises: ShimSetupError
        """
        sandbox_args = {
            'hostname': self.config['sandbox']['hostname'],
            'time': time.time(),
            'entropy': base64.b64encode(os.urandom(64)).decode()}
        from kata_zun import network
        attachment = network.read_attachment(self.state_dir)
        if attachment is not None:
            sandbox_args['network'] = attachment.get('guest') or {}
        return self._sync_call('create_sandbox', sandbox_args), attachment

    def _listen(self):
        """Open the shim's API socket (``shim.sock``, 0600)."""
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

    def _sync_frame(self, ftype):
        while True:
            frames, eof = self._read_blocking()
            for frame in frames:
                # Nothing but the HELLO is expected before set-up is done.
                if frame.type == ftype:
                    return frame
            if eof:
                raise ShimSetupError('agent closed the link during set-up')

    def _read_blocking(self):
        """Wait for the agent's next bytes while the VM makes progress.

        :raises: ShimSetupError
        """
        while True:
            try:
                self._progress.check()
            except progress.NoProgress as exc:
                if self._wake_qemu():
                    continue
                # What crossed the link tells a silent agent from a link
                # that lost or held back its bytes.
                raise ShimSetupError(
                    'agent did not answer: %s (%d bytes from it so far; '
                    'QEMU %s)' % (exc, self._setup_rx, 'has not read what '
                                  'we sent' if _unread(self._agent_sock)
                                  else 'read all we sent'))
            self._agent_sock.settimeout(PROGRESS_POLL)
            try:
                data = self._agent_sock.recv(256 * 1024)
                break
            except socket.timeout:
                continue
        if not data:
            return [], True
        self._setup_rx += len(data)
        try:
            return self.agent.decoder.feed(data), False
        except protocol.ProtocolError as exc:
            raise ShimSetupError('agent protocol violation: %s' % exc)

    def _wake_qemu(self):
        """Once per boot: when the VM idles while QEMU has not even read
        what we sent (seen under 50 concurrent boots: the agent greeted
        us, then waited for our bytes, which stayed in QEMU's socket),
        wake QEMU's main loop with a QMP command (it re-checks whether
        the guest takes input on each wake-up) and wait another window.

        :returns: True to wait again.
        """
        unread = _unread(self._agent_sock)
        if self._woken or not unread:
            return False
        self._woken = True
        LOG.warning('sandbox %s: the VM idles and QEMU has not read what '
                    'we sent on the agent link; waking QEMU', self.cid)
        try:
            self.vm.execute('query-status', timeout=self.agent_timeout)
        except Exception as exc:     # the next check tells what is left
            LOG.warning('sandbox %s: waking QEMU: %s', self.cid, exc)
        self._progress = progress.BootProgress(
            self.vm.pid, window=self.agent_timeout,
            cpu_budget=self.boot_cpu_budget)
        return True

    def _sync_call(self, op, args):
        rid = self._rid()
        self._agent_sock.settimeout(self.agent_timeout)
        self._agent_sock.sendall(protocol.encode_json(protocol.REQUEST, {
            'id': rid, 'op': op, 'args': args}))
        while True:
            frames, eof = self._read_blocking()
            for frame in frames:
                if frame.type != protocol.RESPONSE:
                    continue
                msg = frame.json()
                if msg.get('id') != rid:
                    continue
                self._agent_sock.setblocking(False)
                if 'error' in msg:
                    raise ShimSetupError('%s failed: %s' % (
                        op, guestdata.error_text(msg['error'])))
                result = msg.get('result')
                return result if isinstance(result, dict) else {}
            if eof:
                raise ShimSetupError('agent closed the link during %s' % op)

    def _rid(self):
        rid = self.next_rid
        self.next_rid += 1
        return rid

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
        LOG.error('agent link of %s lost: %s', self.cid,
                  guestdata.printable(reason))
        self._set_interest(self.agent.fd, 0, 'agent')
        self.agent.close()
        self._agent_sock.close()
        if not self.exited:
            self._container_exited(255, False, error='agent link lost: %s'
                                   % guestdata.printable(reason))
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
            # Header and payload go out as they are (writev): no copy of
            # the bulk of the traffic.
            header = protocol.HEADER.pack(frame.type, len(frame.payload))
            for client in self.clients:
                if handle in client.subs:
                    self._send(client, header, frame.payload)
            return
        if frame.type == protocol.RESPONSE:
            msg = frame.json()
            callback = self.pending.pop(msg.get('id'), None)
            if callback is not None:
                result = msg.get('result')
                callback(result if isinstance(result, dict) else {},
                         guestdata.error(msg.get('error')))
            return
        if frame.type == protocol.EVENT:
            self._agent_event(frame.json())
        # Anything else from the guest is ignored.

    def _agent_event(self, event):
        if event.get('event') != 'exit':
            return
        handle = guestdata.integer(event.get('proc'), 0, 2 ** 32 - 1)
        code = guestdata.integer(event.get('exit_code'), 0, 255)
        if handle is None or code is None:
            self._guest_warning('ignoring a malformed exit event from the '
                                'guest')
            return
        oom = event.get('oom_killed') is True
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
            self._shutdown_vm()
            # A guest that never answers must not keep the VM alive.
            self.timers.append((time.monotonic() + 5, self._stop_vm))

    def _guest_warning(self, message, *args):
        """Log a warning the guest can trigger at will, at most
        :data:`GUEST_WARNINGS_PER_MINUTE` a minute (then one line tells
        how many were left out): a guest cannot fill the host's disk with
        the shim's log. ``args`` must be printable already.
        """
        now = time.monotonic()
        if self._warn_window is None:
            self._warn_window = [now, 0, 0]   # start, logged, left out
        window = self._warn_window
        if now - window[0] >= 60.0:
            if window[2]:
                LOG.warning('%d more warnings about the guest of %s were '
                            'left out in the last minute', window[2],
                            self.cid)
            window[:] = [now, 0, 0]
        if window[1] < GUEST_WARNINGS_PER_MINUTE:
            window[1] += 1
            LOG.warning(message, *args)
        else:
            window[2] += 1

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
