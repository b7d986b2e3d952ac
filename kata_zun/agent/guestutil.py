"""Helpers shared by the guest agent's modules: logging, the request
error, libc calls, small file I/O and argument validation.

Standard library only (copied into the guest initrd).
"""

import os
import re

_ID_RE = re.compile(r'^[0-9a-f]{1,64}$')


def log(msg):
    try:
        os.write(2, ('kata-agent: %s\n' % msg).encode())
    except OSError:
        pass


class OpError(Exception):
    """A request failed; ``code`` is a short machine-readable reason."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


_libc = None


def libc():
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL('libc.so.6', use_errno=True)
    return _libc


def _check(ret, what):
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def mount(source, target, fstype, flags=0, data=None):
    def b(s):
        return s.encode() if isinstance(s, str) else s
    _check(libc().mount(b(source), b(target), b(fstype), flags, b(data)),
           'mount %s' % target)


def umount(target, flags=0):
    _check(libc().umount2(target.encode(), flags), 'umount %s' % target)


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)


def read_file(path, limit=1024 * 1024):
    with open(path, 'rb') as f:
        return f.read(limit)


# ---------------------------------------------------------------- validation

def _str(args, key, default=None, maxlen=4096, required=False):
    value = args.get(key, default)
    if value is None:
        if required:
            raise OpError('invalid', '%s is required' % key)
        return default
    if not isinstance(value, str) or len(value) > maxlen or '\0' in value:
        raise OpError('invalid', '%s must be a string' % key)
    return value


def _strlist(args, key, required=False, maxitems=4096):
    value = args.get(key) or []
    if (not isinstance(value, list) or len(value) > maxitems or
            not all(isinstance(v, str) and '\0' not in v for v in value)):
        raise OpError('invalid', '%s must be a list of strings' % key)
    if required and not value:
        raise OpError('invalid', '%s must not be empty' % key)
    return value


def _num(args, key, default=None, minimum=0):
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OpError('invalid', '%s must be a number' % key)
    if value < minimum:
        raise OpError('invalid', '%s must be >= %s' % (key, minimum))
    return value


def _bool(args, key):
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise OpError('invalid', '%s must be a boolean' % key)
    return value


def _id(args, key='id'):
    value = _str(args, key, required=True, maxlen=64)
    if not _ID_RE.match(value):
        raise OpError('invalid', '%s must be lowercase hex' % key)
    return value
