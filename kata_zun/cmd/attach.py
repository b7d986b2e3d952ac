"""``kata-zun attach``: the terminal joins a running container's main
process, as ``docker attach`` does.

* its output (stdout, stderr) streams to ours until it exits; we exit
  with its exit code;
* with ``-i``/``--interactive`` (Docker's default ``--no-stdin=false``
  when the container was created with ``-i``) our stdin feeds it;
* ``--sig-proxy`` (default on, never with a TTY): SIGINT and SIGTERM
  go to the container; with ``--sig-proxy=false`` Ctrl-C ends only
  this command;
* ``--detach-keys`` (default ``ctrl-p,ctrl-q``) detach when typed on a
  TTY stdin; the container goes on.

Never imports zun.
"""

import argparse
import os
import select
import sys

from kata_zun.agent import protocol
from kata_zun.cmd import cli
from kata_zun import exception

DEFAULT_DETACH_KEYS = 'ctrl-p,ctrl-q'


class Detached(Exception):
    """The user typed the detach keys."""


def parse_detach_keys(text):
    """Docker's ``--detach-keys``: ``ctrl-<c>`` (``a``-``z``, ``@``,
    ``[``, ``\\``, ``]``, ``^``, ``_``) or single characters, comma
    separated.

    :returns: the byte sequence.
    :raises: CliError
    """
    out = bytearray()
    for key in str(text).split(','):
        key = key.strip()
        if key.startswith('ctrl-') and len(key) == 6:
            c = key[5]
            if c.isalpha():
                out.append(ord(c.lower()) - ord('a') + 1)
                continue
            if c in '@[\\]^_':
                out.append(ord(c) - 64)
                continue
        elif len(key) == 1 and 32 <= ord(key) < 127:
            out.append(ord(key))
            continue
        raise cli.CliError('invalid detach keys %r: want ctrl-<value> or '
                           'a character, comma separated' % text)
    if not out:
        raise cli.CliError('invalid detach keys %r' % text)
    return bytes(out)


class KeyMatcher(object):
    """Finds the detach sequence in what the user types, holding back a
    prefix of it until it is complete or broken (then it is sent).
    """

    def __init__(self, keys):
        self.keys = keys
        self.held = b''

    def feed(self, data):
        """:returns: the bytes to send on.
        :raises: Detached once the whole sequence was typed.
        """
        out = bytearray()
        for byte in data:
            self.held += bytes([byte])
            if self.keys.startswith(self.held):
                if self.held == self.keys:
                    raise Detached()
                continue
            out += self.held
            self.held = b''
        return bytes(out)


def _pump(client, handle, stdin, keys):
    """Stream until the process exits or the user detaches.

    :returns: the exit code.
    :raises: Detached, CliError
    """
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    matcher = KeyMatcher(keys) if keys else None
    watch_stdin = stdin
    while True:
        frames = client.read_frames(0)
        if not frames:
            fds = [client.fileno()] + ([0] if watch_stdin else [])
            ready, _, _ = select.select(fds, [], [], 1.0)
            if 0 in ready:
                data = os.read(0, 65536)
                if data and matcher is not None:
                    data = matcher.feed(data)
                    if not data:
                        continue
                client.send_stdin(handle, data)
                if not data:
                    watch_stdin = False
            if client.fileno() not in ready:
                continue
            try:
                frames = client.read_frames(0)
            except exception.ShimError as exc:
                raise cli.CliError('lost the container: %s' % exc, 125)
        for frame in frames:
            if frame.type in (protocol.STDOUT, protocol.STDERR):
                h, data = frame.stream()
                if h == handle:
                    target = out if frame.type == protocol.STDOUT else err
                    target.write(data)
                    target.flush()
            elif frame.type == protocol.EVENT:
                event = frame.json()
                if (event.get('event') == 'exit' and
                        event.get('proc') == handle):
                    return int(event.get('exit_code', 255))


def cmd_attach(rt, args):
    from kata_zun.runtime import record
    c = rt.get(args.container)
    if c.status == record.PAUSED:
        raise cli.CliError('You cannot attach to a paused container, '
                           'unpause it first')
    if not c.shim_alive or c.status != record.RUNNING:
        raise cli.CliError('You cannot attach to a stopped container, '
                           'start it first')
    spec = c.config['agent_spec']
    tty = bool(spec.get('tty'))
    stdin = bool(spec.get('stdin')) and not args.no_stdin
    keys = parse_detach_keys(args.detach_keys) if stdin and tty and \
        os.isatty(0) else None
    client = rt.connect(c)
    with client:
        main = client.call('state').get('main')
        result = client.call('attach', {'stdin': stdin})
        if result.get('exited'):
            code = result.get('exit_code')
            return 0 if code is None else int(code)
        if tty and os.isatty(0):
            size = cli._terminal_size()
            if size:
                client.call('resize', {'proc': main, 'rows': size[0],
                                       'cols': size[1]})
        proxy = args.sig_proxy and not tty
        try:
            with cli._raw_terminal(tty and stdin), \
                    cli._forward_signals(rt, c.id, enabled=proxy):
                # Without the proxy, Ctrl-C ends only this command (130)
                # and the container goes on.
                return _pump(client, main, stdin, keys)
        except Detached:
            print('read escape sequence', file=sys.stderr)
            return 0


def _bool(text):
    value = str(text).lower()
    if value in ('true', '1', 'yes'):
        return True
    if value in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError('invalid boolean %r' % text)


def add_parsers(sub):
    """Add ``attach`` to ``kata-zun``'s sub-commands."""
    p = sub.add_parser('attach', help="attach to a running container's "
                       'output (and input)')
    p.add_argument('--no-stdin', action='store_true',
                   help='do not attach stdin')
    p.add_argument('--sig-proxy', type=_bool, default=True,
                   metavar='true|false', nargs='?', const=True,
                   help='send SIGINT/SIGTERM to the container '
                        '(default true; never with a TTY)')
    p.add_argument('--detach-keys', default=DEFAULT_DETACH_KEYS,
                   help='keys that detach from a TTY container '
                        '(default %s)' % DEFAULT_DETACH_KEYS)
    p.add_argument('container')
    p.set_defaults(func=cmd_attach)
