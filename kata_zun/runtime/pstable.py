"""``docker top``'s ``ps`` options, rendered from the guest's process
list.

Docker runs the host's ``ps ARGS`` and keeps the rows of the
container's processes.  A kata container's processes live in its VM:
the guest agent reports them as typed fields (bounded and checked by
:func:`kata_zun.shim.guestdata.processes`), and this module lays them
out as ``ps`` would for the options users give ``docker top``:

* none (or ``-ef``, ``-f``, ``ef`` ...): ``UID PID PPID C STIME TTY TIME
  CMD``, Docker's default;
* ``-e``/``-A``/``ax`` alone: ``PID TTY TIME CMD``;
* ``-o LIST`` / ``o LIST`` / ``--format LIST`` (with ``-e``, ``ax`` ...
  or not): the columns of :data:`FIELDS`.

Every process listed belongs to the container (its VM has no others to
select from), so selection options only change the columns.  Options
asking for what the guest does not report (``u``/``aux``: VSZ) or that
this module does not know are refused with a message naming what is
supported: never a silently different table.  Guest text is never
parsed, so no guest output can forge a column.
"""

import datetime
import shlex
import time

from kata_zun import exception
from kata_zun.shim import guestdata

#: Longest ``ps_args`` accepted (Zun passes a user's string through).
ARGS_MAX = 256

_ALL = frozenset('eAaxgNdTr')  # selection letters: everything, here


def _clock(seconds):
    seconds = int(min(max(seconds, 0), 2 ** 40))
    days, rest = divmod(seconds, 86400)
    text = '%02d:%02d:%02d' % (rest // 3600, rest // 60 % 60, rest % 60)
    return '%d-%s' % (days, text) if days else text


def _stime(p, now):
    started = datetime.datetime.fromtimestamp(
        min(max(p['start_time'], 0), 2 ** 33))
    if now - p['start_time'] < 86400:
        return started.strftime('%H:%M')
    return started.strftime('%b%d')


def _pcpu(p, now):
    elapsed = now - p['start_time']
    if elapsed <= 0:
        return 0.0
    return min(p['cpu_time'] / elapsed * 100, 9999.0)


def _cmd(p):
    return guestdata.printable(p['cmd'], guestdata.MAX_CMD)


def _comm(p):
    argv0 = p['cmd'].split(' ', 1)[0]
    return guestdata.printable(argv0.rsplit('/', 1)[-1][:15], 15)


#: ``-o`` fields: name -> (header, value of a process at time ``now``).
FIELDS = {
    'pid': ('PID', lambda p, now: str(p['pid'])),
    'ppid': ('PPID', lambda p, now: str(p['ppid'])),
    'uid': ('UID', lambda p, now: str(p['uid'])),
    # No user database of the image is read: numeric, as ps prints a
    # user without a name.
    'user': ('USER', lambda p, now: str(p['uid'])),
    'stat': ('STAT', lambda p, now: guestdata.printable(p['state'], 8)),
    'state': ('S', lambda p, now: guestdata.printable(p['state'][:1], 1)),
    'stime': ('STIME', _stime),
    'start': ('START', _stime),
    'time': ('TIME', lambda p, now: _clock(p['cpu_time'])),
    'etime': ('ELAPSED', lambda p, now: _clock(now - p['start_time'])),
    'rss': ('RSS', lambda p, now: str(p['rss_kb'])),
    '%cpu': ('%CPU', lambda p, now: '%.1f' % _pcpu(p, now)),
    'c': ('C', lambda p, now: str(int(_pcpu(p, now)))),
    # The guest does not report terminals: '?', as ps prints a
    # process without one.
    'tty': ('TT', lambda p, now: '?'),
    'tname': ('TTY', lambda p, now: '?'),
    'cmd': ('CMD', lambda p, now: _cmd(p)),
    'args': ('COMMAND', lambda p, now: _cmd(p)),
    'command': ('COMMAND', lambda p, now: _cmd(p)),
    'comm': ('COMMAND', lambda p, now: _comm(p)),
}
_ALIASES = {'pcpu': '%cpu', 'rssize': 'rss', 'rsz': 'rss', 's': 'state',
            'cputime': 'time', 'euid': 'uid', 'euser': 'user',
            'tt': 'tty', 'ucomm': 'comm', 'lstart': 'start'}
DEFAULT = ('uid', 'pid', 'ppid', 'c', 'stime', 'tname', 'time', 'cmd')
_SHORT = ('pid', 'tname', 'time', 'cmd')


def _invalid(ps_args, why):
    return exception.InvalidInput(
        reason='ps_args %r: %s. Supported: none or -ef (UID PID PPID C '
        'STIME TTY TIME CMD), -e/-A/ax (PID TTY TIME CMD), or -o with '
        'any of %s' % (ps_args, why, ','.join(sorted(FIELDS))))


def _parse_fields(ps_args, text):
    fields = []
    for name in text.replace(' ', ',').split(','):
        if not name:
            continue
        key = _ALIASES.get(name.lower(), name.lower())
        if key not in FIELDS:
            raise _invalid(ps_args, 'unknown field %r' % name)
        fields.append(key)
    if not fields:
        raise _invalid(ps_args, 'no field after -o')
    return fields


def columns(ps_args):
    """:returns: the ``-o`` field names ``ps_args`` asks for.

    :raises: InvalidInput for options that cannot be honoured.
    """
    if ps_args is None or str(ps_args).strip() in ('', 'None'):
        return list(DEFAULT)
    ps_args = str(ps_args)
    if len(ps_args) > ARGS_MAX:
        raise _invalid(ps_args[:32] + '...', 'longer than %d characters'
                       % ARGS_MAX)
    try:
        words = shlex.split(ps_args)
    except ValueError as exc:
        raise _invalid(ps_args, str(exc))
    fields = None
    full = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word in ('-o', 'o', '--format', '-O', 'O') or \
                word.startswith('--format='):
            value = word.partition('=')[2] if '=' in word else None
            if value is None:
                if i >= len(words):
                    raise _invalid(ps_args, 'no field after %s' % word)
                value = words[i]
                i += 1
            more = _parse_fields(ps_args, value)
            if word in ('-O', 'O'):
                # -O: the default columns with these after the PID.
                more = ['pid'] + more + ['state', 'tname', 'time', 'cmd']
            fields = (fields or []) + more
            continue
        if word.startswith('-o') and len(word) > 2:
            fields = (fields or []) + _parse_fields(ps_args, word[2:])
            continue
        letters = word[1:] if word.startswith('-') else word
        if not letters or word.startswith('--'):
            raise _invalid(ps_args, 'unknown option %r' % word)
        for n, letter in enumerate(letters):
            if letter in _ALL:
                continue
            if letter == 'o':
                # -eo pid,cmd / axo pid: the rest of the word, or the
                # next word, lists the fields.
                value = letters[n + 1:]
                if not value:
                    if i >= len(words):
                        raise _invalid(ps_args, 'no field after %s' % word)
                    value = words[i]
                    i += 1
                fields = (fields or []) + _parse_fields(ps_args, value)
                break
            if letter in 'fF':
                full = True
            elif letter in 'uvl':
                raise _invalid(ps_args, 'option %r asks for memory '
                               'columns the guest does not report (VSZ)'
                               % word)
            elif letter == 'w':
                continue        # wide output: no column is ever cut here
            else:
                raise _invalid(ps_args, 'unknown option %r' % word)
    if fields is not None:
        return fields
    return list(DEFAULT if full else _SHORT)


def table(processes, ps_args=None, now=None):
    """The processes as ``docker top`` returns them.

    :param processes: the ``processes`` list of
        :func:`kata_zun.shim.guestdata.processes`.
    :param ps_args: the user's ``ps`` options (a string) or None.
    :param now: the time (default: now), for elapsed times and %CPU.
    :returns: ``{'Titles': [...], 'Processes': [[...], ...]}``.
    :raises: InvalidInput
    """
    fields = columns(ps_args)
    now = time.time() if now is None else now
    return {'Titles': [FIELDS[f][0] for f in fields],
            'Processes': [[FIELDS[f][1](p, now) for f in fields]
                          for p in processes]}
