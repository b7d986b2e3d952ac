"""What the guest says, made safe to store, log, forward and print.

The guest (its kernel and agent included) is untrusted. Any value it
returns is type-checked and bounded here before the shim keeps it in the
sandbox record (which must stay within what its readers accept, see
:data:`kata_zun.runtime.fileutils.RECORD_LIMIT`), writes it to a log or
forwards it to a client; and any guest text is made printable first: a
newline, a carriage return or an escape sequence in an error message or
a process name cannot forge a log line or drive a terminal.

Container stdout and stderr are the container's own bytes and never go
through here (they stay raw, like Docker's).

Standard library only: the CLI and the shim use it without zun.
"""

import unicodedata

#: Characters kept of one error message from the guest.
MAX_ERROR = 1024
#: Characters kept of a short text field (a state, a code, a name).
MAX_WORD = 64
#: Characters kept of a process command line in ``ps`` output.
MAX_CMD = 4096
#: Processes kept of one ``ps`` answer.
MAX_PROCESSES = 4096
_MAX_INT = 2 ** 63 - 1
# Categories that are not printed as themselves: controls (newline, CR,
# ESC, DEL, C1), format characters (bidi overrides, zero-width), line and
# paragraph separators, surrogates, private use and unassigned ones.
_UNPRINTABLE = ('Cc', 'Cf', 'Cs', 'Co', 'Cn', 'Zl', 'Zp')
_ESCAPES = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def _escape(char):
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x80 and char.isprintable():
        return char
    if unicodedata.category(char) in _UNPRINTABLE:
        code = ord(char)
        if code <= 0xff:
            return '\\x%02x' % code
        if code <= 0xffff:
            return '\\u%04x' % code
        return '\\U%08x' % code
    return char


def printable(text, limit=MAX_ERROR):
    """Make untrusted text safe for a log line or a terminal.

    Control, format and separator characters become visible escapes
    (``\\n``, ``\\x1b``, ``\\u202e``); the result is cut to ``limit``
    characters with a marker telling how much was left out. Escaping
    twice changes nothing more (backslashes are kept as they are), so the
    CLI can escape again what the shim escaped already.

    :param text: str, bytes (decoded as UTF-8 with replacement) or
                 anything else (its ``str()``).
    :param limit: most characters of ``text`` kept.
    :returns: str
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[:limit * 4]).decode('utf-8', 'replace')
    elif not isinstance(text, str):
        text = str(text)
    cut = len(text) - limit
    out = ''.join(_escape(c) for c in text[:limit])
    if cut > 0:
        out += '...[%d more characters]' % cut
    return out


def error_text(error, limit=MAX_ERROR):
    """:returns: the printable message of a guest error (a dict with
    ``message``/``code``, or anything else).
    """
    if isinstance(error, dict):
        error = error.get('message') or error.get('code')
    return printable('' if error is None else error, limit)


def error(value):
    """:returns: a guest error as ``{'code', 'message'}`` of bounded
    printable strings, or None when ``value`` is None.
    """
    if value is None:
        return None
    code = value.get('code') if isinstance(value, dict) else None
    return {'code': printable(code or 'guest', MAX_WORD),
            'message': error_text(value)}


def integer(value, low=0, high=_MAX_INT):
    """:returns: ``value`` if it is an int (not a bool) in [low, high],
    else None.
    """
    if isinstance(value, int) and not isinstance(value, bool) and \
            low <= value <= high:
        return value
    return None


def number(value, low=0, high=float(_MAX_INT)):
    """:returns: ``value`` as a float if it is a finite number in
    [low, high], else None.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if low <= value <= high else None


def text(value, limit=MAX_WORD):
    """:returns: ``value`` made printable if it is a str, else None."""
    return printable(value, limit) if isinstance(value, str) else None


#: The counters of a ``stats`` answer.
STATS_KEYS = ('cpu_usage_usec', 'memory_usage', 'memory_limit', 'pids',
              'blkio_read', 'blkio_write', 'net_rx', 'net_tx',
              'online_cpus')


def stats(result):
    """:returns: a guest ``stats`` answer with only known keys: counters
    as non-negative ints (0 when missing or wrong), ``time`` a float.
    """
    out = {key: integer(result.get(key)) or 0 for key in STATS_KEYS}
    out['time'] = number(result.get('time')) or 0.0
    return out


def processes(result):
    """:returns: a guest ``ps`` answer: at most :data:`MAX_PROCESSES`
    entries with typed fields and printable, bounded texts; entries that
    are not objects are left out.
    """
    procs = result.get('processes')
    out = []
    for p in procs[:MAX_PROCESSES] if isinstance(procs, list) else ():
        if not isinstance(p, dict):
            continue
        out.append({
            'pid': integer(p.get('pid')) or 0,
            'ppid': integer(p.get('ppid')) or 0,
            'uid': integer(p.get('uid')) or 0,
            'state': text(p.get('state'), 8) or '?',
            'cpu_time': number(p.get('cpu_time')) or 0.0,
            'start_time': number(p.get('start_time')) or 0.0,
            'rss_kb': integer(p.get('rss_kb')) or 0,
            'cmd': text(p.get('cmd'), MAX_CMD) or ''})
    return {'processes': out}


def started(result):
    """:returns: the fields of a ``start`` or ``exec`` answer the shim
    keeps: ``proc`` (handle), ``pid`` (None when not a sane pid) and
    ``error`` (a bounded printable message or None).
    """
    err = result.get('error')
    return {'proc': integer(result.get('proc'), 0, 2 ** 32 - 1),
            'pid': integer(result.get('pid'), 1, 2 ** 31 - 1),
            'error': None if err is None else error_text(err)}


def archive(result):
    """:returns: an ``archive_get`` answer: the handle and the stat of
    the path (as Zun's API passes it on: typed, names bounded).
    """
    stat = result.get('stat')
    stat = stat if isinstance(stat, dict) else {}

    def name(key):
        value = stat.get(key)
        return value[:4096] if isinstance(value, str) else ''
    return {'proc': started(result)['proc'],
            'stat': {'name': name('name'),
                     'size': integer(stat.get('size')) or 0,
                     'mode': integer(stat.get('mode'), 0, 2 ** 32 - 1) or 0,
                     'mtime': number(stat.get('mtime')) or 0.0,
                     'linkTarget': name('linkTarget')}}
