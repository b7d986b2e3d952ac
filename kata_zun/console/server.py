"""The console server: attach websockets and Docker's exec start.

Routes (anything else is 404, a wrong method 405):

``GET /_ping``, ``GET [/v<api>]/version``
    what docker-py asks before anything else (API version negotiation).
``POST [/v<api>]/exec/<exec id>/start``
    body ``{"Tty": true, "Detach": false}``; answered ``101 UPGRADED``
    (``Upgrade: tcp``) or ``200`` and then a raw bidirectional stream to a
    new process in the container, the one registered under that id by
    ``execute_create``. The connection closes when the process exits.
``GET [/v<api>]/exec/<exec id>/json``
    Docker's exec inspect (``Running``, ``ExitCode``).
``GET /attach/<container id>?token=<token>``
    a websocket to the container's main process: data frames go to its
    stdin, its output comes back in binary frames.

One thread per connection (green threads inside zun-compute), at most
``max_connections`` of them, and at most ``max_per_project`` exec and
attach sessions of one project (the container's owner, recorded with its
exec id or attach token): one project cannot take every slot. The TLS
handshake (when ``[kata_console] tls_cert_file`` is set: https and wss
only, plain clients get nothing) and the request must arrive complete
within ``HEAD_TIMEOUT`` seconds.
"""

import json
import platform
import re
import select
import signal
import socket
import ssl
import threading
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun.console import http
from kata_zun.console import sessions
from kata_zun.console import streams
from kata_zun.console import websocket
from kata_zun import exception
from kata_zun import version

LOG = logging.getLogger(__name__)

API_VERSION = '1.41'
MIN_API_VERSION = '1.24'
HEAD_TIMEOUT = 10.0
# After the peer's end of an exec stream closes, the process gets this
# long to finish by itself (a tty turns the EOF into ^D) before a SIGHUP,
# then as long again before a SIGKILL: a terminal that is gone hangs up.
HANGUP_AFTER = 10.0
POLL_INTERVAL = 1.0

_VERSIONED_RE = re.compile(r'^/v(\d{1,3}\.\d{1,3})(/.*)$')
_EXEC_RE = re.compile(r'^/exec/([^/]+)/(start|json)$')
_ATTACH_RE = re.compile(r'^/attach/([^/]+)$')
_CID_RE = re.compile(r'^[0-9a-f]{32,64}$')


def _keepalive(sock):
    """Notice a peer that vanished without a word (about 2 minutes)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (('TCP_KEEPIDLE', 60), ('TCP_KEEPINTVL', 10),
                            ('TCP_KEEPCNT', 6)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name),
                                value)
    except OSError:
        pass


def _format_host(host):
    return '[%s]' % host if ':' in host else host


class ConsoleServer(object):
    """Serves attach and interactive exec for containers of a runtime.

    :param runtime: a :class:`kata_zun.runtime.manager.Runtime` (or an
        object with ``get``, ``connect``, ``exec_client``, ``call``).
    :param host: address to listen on.
    :param port: TCP port (0: any free port).
    :param advertise_host: host put in attach URLs (default ``host``).
    :param ttl: seconds an unused exec id or attach token lives.
    :param max_connections: connections served at once.
    :param max_per_project: exec and attach sessions one project holds
        at once (default: no cap but ``max_connections``).
    :param ssl_context: a server-side ``ssl.SSLContext``: TLS only.
    :param client_cert_for: the sessions ('attach', 'exec') that need a
        client certificate the context verified.
    """

    def __init__(self, runtime, host, port, advertise_host=None, ttl=120,
                 max_connections=64, max_per_project=None,
                 ssl_context=None, client_cert_for=()):
        self.runtime = runtime
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or host
        self.registry = sessions.Registry(ttl)
        self.max_connections = max_connections
        self.projects = sessions.ProjectSlots(
            max_per_project or max_connections)
        self.ssl_context = ssl_context
        self.client_cert_for = frozenset(client_cert_for)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener = None
        self._thread = None
        self._stopped = False

    # ------------------------------------------------------------ life
    def start(self):
        """Bind and serve in a background thread.

        :returns: self.
        :raises: OSError if the address cannot be bound.
        """
        info = socket.getaddrinfo(self.host, self.port, 0,
                                  socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop,
                                        name='kata-console', daemon=True)
        self._thread.start()
        LOG.info('console (attach, interactive exec) listening on %s:%s',
                 self.host, self.port)
        return self

    def stop(self):
        self._stopped = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()

    @property
    def running(self):
        return (self._thread is not None and self._thread.is_alive() and
                not self._stopped)

    def _accept_loop(self):
        while not self._stopped:
            try:
                conn, addr = self._listener.accept()
            except OSError as exc:
                if self._stopped:
                    return
                LOG.warning('console accept failed: %s', exc)
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                http.send_quietly(conn, http.error_response(http.HttpError(
                    503, 'too many console connections; retry later')))
                conn.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(conn, addr),
                                 name='kata-console-conn',
                                 daemon=True).start()
            except Exception:
                self._slots.release()
                conn.close()
                LOG.exception('cannot start a console connection thread')

    # --------------------------------------------------- driver facade
    def add_exec(self, cid, argv, tty=True, stdin=True, project=None):
        """Register an interactive exec; :returns: its id.

        :param project: the project owning the container (its sessions
            count against that project's cap).
        :raises: sessions.Busy
        """
        return self.registry.add_exec(cid, argv, tty=tty, stdin=stdin,
                                      project=project)

    def resize_exec(self, exec_id, rows, cols):
        """Resize the tty of an exec, now or when it starts.

        :raises: sessions.NotFound; ShimError
        """
        target = self.registry.resize_exec(exec_id, rows, cols)
        if target is not None:
            cid, handle = target
            self.runtime.call(cid, 'resize', {'proc': handle, 'rows': rows,
                                              'cols': cols})

    def attach_url(self, cid, project=None):
        """:returns: a single-use websocket URL (wss:// with TLS) to
            attach to ``cid``.

        :param project: the project owning the container.
        :raises: sessions.Busy
        """
        token = self.registry.add_attach(cid, project=project)
        return '%s://%s:%d/attach/%s?token=%s' % (
            'wss' if self.ssl_context else 'ws',
            _format_host(self.advertise_host), self.port, cid, token)

    # ------------------------------------------------------ connection
    def _handshake(self, conn, deadline):
        """:returns: the TLS socket over ``conn``, or None (the peer is
        refused: a plain client, a bad or missing client certificate when
        one is needed, too slow).
        """
        conn.settimeout(HEAD_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as exc:
            LOG.debug('console TLS refused: %s', exc)
            return None
        try:
            tls.settimeout(max(0.1, deadline - time.monotonic()))
            tls.do_handshake()
            return tls
        except (ssl.SSLError, socket.timeout, OSError) as exc:
            LOG.info('console: TLS handshake failed: %s', exc)
            tls.close()
            return None

    def _serve(self, conn, addr):
        request = None
        try:
            deadline = time.monotonic() + HEAD_TIMEOUT
            if self.ssl_context is not None:
                tls = self._handshake(conn, deadline)
                if tls is None:
                    return
                conn = tls
            try:
                request = http.read_request(conn, deadline=deadline)
            except http.HttpError as exc:
                http.send_quietly(conn, http.error_response(exc))
                return
            except (socket.timeout, OSError):
                return
            if request is None:
                return
            conn.settimeout(None)
            _keepalive(conn)
            try:
                self._dispatch(conn, request)
            except http.HttpError as exc:
                http.send_quietly(conn, http.error_response(exc))
        except Exception:
            LOG.exception('console connection from %s failed', addr[0])
            if request is not None and not request.streaming:
                http.send_quietly(conn, http.error_response(http.HttpError(
                    500, 'internal error; see the zun-compute log')))
        finally:
            try:
                conn.close()
            finally:
                self._slots.release()

    def _client_cert(self, conn, kind):
        """:raises: HttpError 403 if ``kind`` of session needs a client
        certificate and the peer sent none (a bad one fails the TLS
        handshake).
        """
        if kind not in self.client_cert_for:
            return
        try:
            cert = conn.getpeercert()
        except (AttributeError, ValueError, OSError):
            cert = None
        if not cert:
            raise http.HttpError(403, 'a client certificate signed by '
                                 '[kata_console] tls_ca_file is required')

    def _project_slot(self, project):
        """Take a session slot of ``project``.

        :raises: HttpError 503 when it holds its most already.
        """
        try:
            self.projects.acquire(project)
        except sessions.Busy as exc:
            raise http.HttpError(503, str(exc))

    def _dispatch(self, conn, request):
        path = request.path
        match = _ATTACH_RE.match(path)
        if match:
            self._client_cert(conn, 'attach')
            self._method(request, 'GET')
            return self._attach(conn, request, match.group(1))
        self._client_cert(conn, 'exec')
        if path == '/_ping':
            self._method(request, 'GET', 'HEAD')
            return http.send_quietly(conn, http.response(200, 'OK'))
        versioned = _VERSIONED_RE.match(path)
        if versioned:
            path = versioned.group(2)
        if path == '/version':
            self._method(request, 'GET')
            ours = version.version_info.version_string()
            return http.send_quietly(conn, http.json_response(200, {
                'ApiVersion': API_VERSION,
                'MinAPIVersion': MIN_API_VERSION,
                'Version': 'kata-zun-%s' % ours,
                'Os': 'linux', 'Arch': platform.machine(),
                'Components': [{'Name': 'kata-zun console',
                                'Version': ours}]}))
        match = _EXEC_RE.match(path)
        if match:
            exec_id, action = match.groups()
            if action == 'json':
                self._method(request, 'GET')
                return self._exec_inspect(conn, exec_id)
            self._method(request, 'POST')
            return self._exec_start(conn, request, exec_id)
        raise http.HttpError(404, 'page not found: this is kata-zun\'s '
                             'console, it serves attach and interactive '
                             'exec only')

    @staticmethod
    def _method(request, *allowed):
        if request.method not in allowed:
            raise http.HttpError(405, 'method %s not allowed here' %
                                 request.method,
                                 headers={'Allow': ', '.join(allowed)})

    # ------------------------------------------------------------ exec
    def _exec_inspect(self, conn, exec_id):
        try:
            record = self.registry.get_exec(exec_id)
        except sessions.NotFound:
            raise http.HttpError(404, 'No such exec instance')
        http.send_quietly(conn, http.json_response(200, record.inspect()))

    def _exec_start(self, conn, request, exec_id):
        try:
            options = json.loads(request.body.decode('utf-8') or '{}')
        except ValueError:
            raise http.HttpError(400, 'the body must be a JSON object')
        if not isinstance(options, dict):
            raise http.HttpError(400, 'the body must be a JSON object')
        if options.get('Detach'):
            raise http.HttpError(400, 'detached exec start is not '
                                 'supported: this endpoint serves '
                                 'interactive exec')
        tty = options.get('Tty', False)
        if not isinstance(tty, bool):
            raise http.HttpError(400, 'Tty must be a boolean')
        try:
            project = self.registry.get_exec(exec_id).project
        except sessions.NotFound:
            raise http.HttpError(404, 'No such exec instance (unknown, '
                                 'expired or already used)')
        # At its cap the project is refused before the id is spent.
        self._project_slot(project)
        try:
            self._exec_session(conn, request, exec_id, tty)
        finally:
            self.projects.release(project)

    def _exec_session(self, conn, request, exec_id, tty):
        try:
            record = self.registry.start_exec(exec_id)
        except sessions.NotFound:
            raise http.HttpError(404, 'No such exec instance (unknown, '
                                 'expired or already used)')
        except sessions.Conflict as exc:
            raise http.HttpError(409, str(exc))
        try:
            self._check_running(record.cid)
        except http.HttpError:
            self.registry.exec_finished(record, 126)
            raise
        upgrade = 'tcp' in request.header_tokens('upgrade')
        head = {'Content-Type': 'application/vnd.docker.raw-stream'}
        # Like Docker, the process starts after this answer: its first
        # output cannot arrive in the same read as the answer's head,
        # which docker-py's HTTP client would buffer and zun-wsproxy miss.
        request.streaming = True
        if upgrade:
            head.update({'Connection': 'Upgrade', 'Upgrade': 'tcp'})
            conn.sendall(http.response_head(101, head, reason='UPGRADED'))
        else:
            conn.sendall(http.response_head(200, head))
        stream = streams.RawStream(conn, request.rest, multiplex=not tty)
        code = 126
        try:
            code = self._run_exec(stream, record)
        finally:
            self.registry.exec_finished(record, code)
            stream.finish()

    def _check_running(self, cid):
        try:
            c = self.runtime.get(cid)
        except exception.NotFound:
            raise http.HttpError(404, 'No such container: %s' % cid[:12])
        if c.status != 'running' or not c.shim_alive:
            raise http.HttpError(409, 'container %s is %s, not running' %
                                 (cid[:12], c.status))

    def _run_exec(self, stream, record):
        try:
            client, handle, error = self.runtime.exec_client(
                record.cid, record.argv, tty=record.tty,
                stdin=record.stdin)
        except exception.KataZunException as exc:
            self._tell(stream, 'kata-zun: cannot start %s: %s' % (
                record.argv[0], exc))
            return 126
        with client:
            if error:
                self._tell(stream, 'kata-zun: %s' % error)
            if not isinstance(handle, int):
                return 126
            size = self.registry.exec_started(record, handle)
            if size and record.tty:
                try:
                    client.call('resize', {'proc': handle, 'rows': size[0],
                                           'cols': size[1]})
                except exception.KataZunException as exc:
                    LOG.debug('resizing exec %s: %s', record.id[:8], exc)
            LOG.info('console: exec %s started in %s: %s', record.id[:8],
                     record.cid[:12], record.argv[0])
            code = self._pump(stream, client, handle, stdin=record.stdin,
                              hangup=True)
        LOG.info('console: exec %s ended (%s)', record.id[:8], code)
        return 255 if code is None else code

    @staticmethod
    def _tell(stream, text):
        try:
            stream.write(text.encode('utf-8', 'replace') + b'\r\n', 2)
        except streams.PeerGone:
            pass

    # ---------------------------------------------------------- attach
    def _attach(self, conn, request, cid):
        if not _CID_RE.match(cid):
            raise http.HttpError(404, 'No such container')
        upgrade = request.header_tokens('upgrade')
        key = request.header('sec-websocket-key')
        if ('websocket' not in upgrade or
                'upgrade' not in request.header_tokens('connection')):
            raise http.HttpError(426, 'attach is a websocket: send '
                                 'Upgrade: websocket',
                                 headers={'Upgrade': 'websocket'})
        if request.header('sec-websocket-version') != '13':
            raise http.HttpError(426, 'websocket version 13 only',
                                 headers={'Sec-WebSocket-Version': '13'})
        if not websocket.valid_key(key):
            raise http.HttpError(400, 'malformed Sec-WebSocket-Key')
        # A well-formed handshake spends the token, good or bad.
        token = request.query_value('token')
        try:
            project = self.registry.take_attach(cid, token)
        except sessions.NotFound:
            raise http.HttpError(403, 'invalid or expired attach token')
        self._project_slot(project)
        try:
            self._attach_session(conn, request, cid, key)
        finally:
            self.projects.release(project)

    def _attach_session(self, conn, request, cid, key):
        self._check_running(cid)
        try:
            client = self.runtime.connect(self.runtime.get(cid))
        except exception.KataZunException as exc:
            raise http.HttpError(409, 'cannot attach to %s: %s' % (
                cid[:12], exc))
        with client:
            try:
                main = client.call('state').get('main')
                result = client.call('attach', {'stdin': True})
            except exception.KataZunException as exc:
                raise http.HttpError(409, 'cannot attach to %s: %s' % (
                    cid[:12], exc))
            request.streaming = True
            head = {'Upgrade': 'websocket', 'Connection': 'Upgrade',
                    'Sec-WebSocket-Accept': websocket.accept_key(key)}
            protocols = request.header_tokens('sec-websocket-protocol')
            if 'binary' in protocols:
                head['Sec-WebSocket-Protocol'] = 'binary'
            conn.sendall(http.response_head(101, head))
            stream = streams.WebSocketStream(conn, request.rest)
            if result.get('exited') or not isinstance(main, int):
                stream.finish(websocket.CLOSE_NORMAL, 'container exited')
                return
            LOG.info('console: attached to %s', cid[:12])
            code = self._pump(stream, client, main, stdin=True,
                              hangup=False)
        if code is None:
            stream.finish(websocket.CLOSE_GOING_AWAY, 'detached')
        else:
            stream.finish(websocket.CLOSE_NORMAL,
                          'container exited with code %s' % code)
        LOG.info('console: detached from %s', cid[:12])

    # ------------------------------------------------------------ pump
    def _pump(self, stream, client, handle, stdin, hangup):
        """Move bytes between the peer and process ``handle``.

        :param hangup: the peer owns the process (exec): when the peer
            goes away the process gets EOF on its stdin, then SIGHUP, then
            SIGKILL. Otherwise (attach) the peer going away detaches.
        :returns: the exit code, or None when the session ended before
            the process did (detached, shim gone).
        """
        reading = True                # the peer may still send
        writable = True               # the peer may still receive
        gone_at = None                # when the peer stopped sending
        signals = [signal.SIGHUP, signal.SIGKILL]
        while True:
            if gone_at is not None:
                if not hangup:
                    return None
                if time.monotonic() - gone_at > HANGUP_AFTER:
                    if not signals:
                        return None
                    self._signal(client, handle, signals.pop(0))
                    gone_at = time.monotonic()
            try:
                frames = client.read_frames(0)
                if not frames:
                    if reading and stream.has_pending():
                        ready = [stream]
                    else:
                        ready = select.select(
                            [client, stream] if reading else [client],
                            [], [], POLL_INTERVAL)[0]
                    if stream in ready:
                        for chunk in stream.read():
                            if chunk is streams.EOF:
                                reading = False
                                gone_at = time.monotonic()
                                if hangup and stdin:
                                    client.send_stdin(handle, b'')
                                break
                            if stdin:
                                client.send_stdin(handle, chunk)
                    if client not in ready:
                        continue
                    frames = client.read_frames(0)
            except streams.PeerGone:
                reading = writable = False
                gone_at = time.monotonic() - HANGUP_AFTER
                continue
            except (exception.ShimError, OSError) as exc:
                LOG.info('console: lost the shim of process %s: %s',
                         handle, exc)
                return None
            for frame in frames:
                if frame.type in (protocol.STDOUT, protocol.STDERR):
                    h, data = frame.stream()
                    if h != handle or not writable:
                        continue
                    try:
                        stream.write(data, 1 if frame.type ==
                                     protocol.STDOUT else 2)
                    except streams.PeerGone:
                        # Nobody reads any more: hang up at once.
                        reading = writable = False
                        gone_at = time.monotonic() - HANGUP_AFTER
                elif frame.type == protocol.EVENT:
                    event = frame.json()
                    if (event.get('event') == 'exit' and
                            event.get('proc') == handle):
                        code = event.get('exit_code')
                        return code if isinstance(code, int) else 255

    def _signal(self, client, handle, sig):
        LOG.info('console: the peer of process %s is gone: signal %d',
                 handle, sig)
        try:
            client.call('signal', {'proc': handle, 'signal': int(sig)})
        except exception.KataZunException as exc:
            LOG.debug('signalling process %s: %s', handle, exc)


def tty_size(height, width):
    """:returns: (rows, cols) as ints from what zun passes (strings).

    :raises: ValueError when they are not integers in 1..65535.
    """
    try:
        rows, cols = int(height), int(width)
    except (TypeError, ValueError):
        raise ValueError('the tty height and width must be integers')
    if not (0 < rows <= 65535 and 0 < cols <= 65535):
        raise ValueError('the tty height and width must be in 1..65535')
    return rows, cols


def _my_ip(conf):
    try:
        return conf.my_ip           # zun's [DEFAULT] my_ip, in zun-compute
    except Exception:
        return None


def tls_context(cert_file, key_file, ca_file=None):
    """:returns: a server ``ssl.SSLContext`` (TLS 1.2 or later); with
        ``ca_file`` it asks for a client certificate and verifies any
        that is sent.

    :raises: exception.KataZunException when a file cannot be used.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise exception.KataZunException(
            '[kata_console] TLS files (tls_cert_file %s, tls_key_file %s, '
            'tls_ca_file %s) cannot be used: %s' % (cert_file, key_file,
                                                    ca_file, exc))
    return ctx


def from_conf(runtime, conf):
    """:returns: a ConsoleServer (not started) set up from
    ``[kata_console]``; the listen host defaults to ``my_ip``.

    :raises: exception.KataZunException on unusable TLS settings.
    """
    opts = conf.kata_console
    my_ip = _my_ip(conf)
    host = opts.listen_host or my_ip or '0.0.0.0'
    advertise = host
    if host in ('0.0.0.0', '::'):
        advertise = my_ip or socket.gethostname()
    context, cert_for = None, ()
    if bool(opts.tls_cert_file) != bool(opts.tls_key_file):
        raise exception.KataZunException(
            '[kata_console] tls_cert_file and tls_key_file go together')
    if opts.tls_ca_file and not opts.tls_cert_file:
        raise exception.KataZunException(
            '[kata_console] tls_ca_file needs tls_cert_file and '
            'tls_key_file')
    if opts.tls_exec_client_cert and not opts.tls_ca_file:
        raise exception.KataZunException(
            '[kata_console] tls_exec_client_cert needs tls_ca_file')
    if opts.tls_cert_file:
        context = tls_context(opts.tls_cert_file, opts.tls_key_file,
                              opts.tls_ca_file)
        if opts.tls_ca_file:
            cert_for = ('attach', 'exec') if opts.tls_exec_client_cert \
                else ('attach',)
    return ConsoleServer(runtime, host, opts.listen_port,
                         advertise_host=advertise, ttl=opts.token_ttl,
                         max_connections=opts.max_connections,
                         max_per_project=opts.max_connections_per_project,
                         ssl_context=context, client_cert_for=cert_for)
