"""The shim's API clients: connections, flow control, request dispatch.

Clients speak the agent's framing (see :mod:`kata_zun.shim.server`).

Flow control: what a client sends is read one chunk at a time into its
inbox and handed on frame by frame, and its socket is read again only
once the inbox is empty. A frame waits in the inbox (so the client's
further input waits in its socket, and then in the client itself) while:

- it is STDIN, or a request that goes to the agent, and more than
  :data:`AGENT_HIGH_WATER` bytes wait to be written to the agent: a
  paused VM or a guest that stops reading its link holds up the clients
  that feed it, not the shim's memory;
- it is a request and the client already has :data:`MAX_OUTSTANDING`
  requests in progress, or :data:`CLIENT_REQUEST_BACKLOG` bytes of output
  it has not read.

Requests that never queue anything for the agent (``state``, ``pause``,
``unpause``, ``stop``...) are served however congested the agent link is,
so a flooded, paused container can still be unpaused or stopped. So the
shim holds at most one read (:attr:`protocol.Channel.READ_SIZE`) plus one
partial frame per client, for at most :data:`MAX_CLIENTS` clients.
"""

import collections
import selectors

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun.shim import guestdata

LOG = logging.getLogger(__name__)

# A client that falls this far behind reading its output is dropped.
CLIENT_MAX_BACKLOG = 64 * 1024 * 1024
# Connections served at once; more are closed at once.
MAX_CLIENTS = 64
# Bytes queued for the agent above which client input towards it waits.
AGENT_HIGH_WATER = 1024 * 1024
# Unread output of a client above which its next request waits.
CLIENT_REQUEST_BACKLOG = 1024 * 1024
# Requests of one client in progress at once.
MAX_OUTSTANDING = 16
# Requests that queue nothing (or a few bytes, bounded by
# MAX_OUTSTANDING) for the agent: served even when its link is congested.
LOCAL_OPS = frozenset(('state', 'attach', 'wait', 'pause', 'unpause',
                       'stop'))


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
        # Frames read but not handled yet: (frame, decoded request).
        self.inbox = collections.deque()
        self.outstanding = 0          # requests not answered yet

    def send_json(self, ftype, obj):
        self.chan.send(protocol.encode_json(ftype, obj))

    def close(self):
        self.chan.close()
        self.sock.close()


class ClientHandling(object):
    """Mixin of :class:`kata_zun.shim.server.Shim`: the API side."""

    _pump_start = 0

    # ------------------------------------------------------------- clients
    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if len(self.clients) >= MAX_CLIENTS:
            LOG.warning('refusing a connection: %d clients already',
                        MAX_CLIENTS)
            sock.close()
            return
        self.clients.append(Client(sock, self.max_frame))

    def _drop(self, client):
        if client in self.clients:
            self.clients.remove(client)
        self.waiters = [w for w in self.waiters if w[0] is not client]
        client.inbox.clear()
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.close()

    def _send(self, client, *chunks):
        if client.chan.pending_out > CLIENT_MAX_BACKLOG:
            LOG.warning('dropping a client that stopped reading')
            self._drop(client)
            return
        try:
            client.chan.send(*chunks)
        except OSError:
            self._drop(client)

    def _respond(self, client, rid, result=None, error=None):
        if client is not None and client.outstanding > 0:
            client.outstanding -= 1
        msg = {'id': rid}
        if error is not None:
            msg['error'] = error
        else:
            msg['result'] = result or {}
        self._send(client, protocol.encode_json(protocol.RESPONSE, msg))

    def _client_readable(self, client):
        """:returns: whether to read more from ``client`` now."""
        return not client.inbox

    def _client_io(self, client, mask):
        if mask & selectors.EVENT_WRITE:
            try:
                client.chan.flush()
            except OSError:
                return self._drop(client)
        if not mask & selectors.EVENT_READ or client.inbox:
            return
        try:
            frames, eof = client.chan.read()
            for frame in frames:
                msg = (frame.json() if frame.type == protocol.REQUEST
                       else None)
                client.inbox.append((frame, msg))
        except (protocol.ProtocolError, OSError) as exc:
            LOG.warning('dropping client: %s', exc)
            return self._drop(client)
        self._pump_client(client)
        if eof and client in self.clients:
            # What it sent before hanging up is still handed on.
            client.inbox.append((None, None))
            self._pump_client(client)

    def _pump(self):
        """Hand on what clients sent, as far as the limits allow; clients
        take turns at being first.
        """
        clients = [c for c in self.clients if c.inbox]
        if not clients:
            return
        self._pump_start = (self._pump_start + 1) % len(clients)
        first = self._pump_start
        for client in clients[first:] + clients[:first]:
            self._pump_client(client)

    def _pump_client(self, client):
        while client.inbox and client in self.clients:
            frame, msg = client.inbox[0]
            if frame is None:                       # end of its input
                return self._drop(client)
            if not self._may_handle(client, frame, msg):
                return
            client.inbox.popleft()
            try:
                self._client_frame(client, frame, msg)
            except protocol.ProtocolError as exc:
                LOG.warning('dropping client: %s', exc)
                self._drop(client)
            except Exception:
                LOG.exception('shim: error handling a client request')
                self._drop(client)

    def _agent_drains(self):
        agent = self.agent
        return (agent is None or agent.closed or
                agent.pending_out < AGENT_HIGH_WATER)

    def _may_handle(self, client, frame, msg):
        if frame.type == protocol.STDIN:
            return self._agent_drains()
        if frame.type != protocol.REQUEST:
            return True
        if (client.outstanding >= MAX_OUTSTANDING or
                client.chan.pending_out >= CLIENT_REQUEST_BACKLOG):
            return False
        return msg.get('op') in LOCAL_OPS or self._agent_drains()

    def _client_frame(self, client, frame, msg):
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
        rid = msg.get('id')
        op = msg.get('op')
        args = msg.get('args') or {}
        handler = getattr(self, 'op_' + str(op), None)
        client.outstanding += 1
        if (not client.hello or handler is None or
                not isinstance(args, dict)):
            return self._respond(client, rid, error={
                'code': 'invalid', 'message': 'unknown request %s' %
                guestdata.printable(repr(op), guestdata.MAX_WORD)})
        try:
            handler(client, rid, args)
        except (ValueError, TypeError, KeyError) as exc:
            self._respond(client, rid, error={
                'code': 'invalid', 'message': guestdata.printable(exc)})

    def _forward(self, client, rid, op, args, on_result=None,
                 clean=lambda result: {}):
        """Pass a request on to the agent and its answer back.

        :param on_result: called with the cleaned result on success.
        :param clean: makes the guest's result what the client gets:
                      only known fields, typed and bounded (by default
                      nothing).
        """
        def done(result, error):
            if error is None:
                result = clean(result)
                if on_result is not None:
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
