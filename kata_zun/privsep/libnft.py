"""nftables through libnftables (ctypes), in the calling process.

Used by the privileged side only: running ``nft`` instead would exec a
program from a root daemon (and an exec from uid 0 regains every
capability); libnftables does the very same parsing and netlink work
in-process with the daemon's CAP_NET_ADMIN.
"""

import ctypes
import json

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
LIBRARY = 'libnftables.so.1'

_lib = []


class NftError(Exception):
    """nftables refused a command (the message is nft's own)."""


def _load():
    if not _lib:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise NftError('%s is not available (install the Debian '
                           'package nftables): %s' % (LIBRARY, exc))
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ('nft_ctx_buffer_output', 'nft_ctx_buffer_error'):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ('nft_ctx_get_output_buffer',
                     'nft_ctx_get_error_buffer'):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p,
                                                 ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p,
                                                ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib.append(lib)
    return _lib[0]


def run(commands, json_output=False):
    """Run nft commands (one transaction per buffer).

    :returns: (return code, output text, error text)
    :raises: NftError if libnftables cannot be used at all.
    """
    lib = _load()
    ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
    if not ctx:
        raise NftError('nft_ctx_new failed')
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if json_output:
            lib.nft_ctx_output_set_flags(
                ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        out = lib.nft_ctx_get_output_buffer(ctx) or b''
        err = lib.nft_ctx_get_error_buffer(ctx) or b''
        return (rc, out.decode('utf-8', 'replace'),
                err.decode('utf-8', 'replace'))
    finally:
        lib.nft_ctx_free(ctx)


def list_rules(family, table):
    """:returns: [(chain, handle, comment or '')] of a table's rules;
    [] when the table does not exist.
    """
    rc, out, err = run('list table %s %s' % (family, table),
                       json_output=True)
    if rc != 0:
        if 'No such file or directory' in err:
            return []
        raise NftError(err.strip() or 'nft list failed')
    rules = []
    for item in json.loads(out or '{}').get('nftables', []):
        rule = item.get('rule')
        if rule:
            rules.append((rule['chain'], int(rule['handle']),
                          rule.get('comment', '')))
    return rules
