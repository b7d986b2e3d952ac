"""``kata-zun volume create|ls|inspect|rm`` and the ``run`` options
``-v`` and ``--mount`` (:func:`requests`).
"""

import json

from kata_zun import exception
from kata_zun.volume import spec
from kata_zun.volume import store


def add_run_options(p):
    """Add ``-v`` and ``--mount`` to the ``run`` parser."""
    p.add_argument('-v', '--volume', action='append', default=[],
                   metavar='SRC:DST[:ro]',
                   help='a named volume (NAME:/path) or a host path')
    p.add_argument('--mount', action='append', default=[],
                   metavar='type=volume|block|bind,source=...,target=...',
                   help='a volume, a raw image file as a block device, or '
                   'a host path; add ",readonly" for read-only')


def requests(args):
    """:returns: the volume requests of a ``run`` command line.
    :raises: InvalidInput
    """
    return ([spec.parse_v(v) for v in args.volume] +
            [spec.parse_mount(m) for m in args.mount])


def cmd_create(rt, args):
    size = store.parse_size(args.size) if args.size else None
    print(rt.volumes.create(args.name, size)['name'])
    return 0


def cmd_ls(rt, args):
    vols = rt.volumes.list()
    if args.quiet:
        for vol in vols:
            print(vol['name'])
        return 0
    print('%-8s %-32s %12s %12s' % ('DRIVER', 'VOLUME NAME', 'SIZE', 'USED'))
    for vol in vols:
        print('%-8s %-32s %12d %12d' % (vol['driver'], vol['name'],
                                        vol['size'] or 0, vol['used_bytes']))
    return 0


def cmd_inspect(rt, args):
    out = []
    code = 0
    for name in args.names:
        try:
            vol = rt.volumes.get(name)
        except exception.KataZunException as exc:
            print('kata-zun: error: %s' % exc)
            code = 1
            continue
        vol['containers'] = rt.volume_users(name)
        out.append(vol)
    print(json.dumps(out, indent=2, sort_keys=True))
    return code


def cmd_rm(rt, args):
    code = 0
    for name in args.names:
        try:
            rt.remove_volume(name)
            print(name)
        except exception.KataZunException as exc:
            print('kata-zun: error: %s' % exc)
            code = 1
    return code


def add_parsers(sub):
    p = sub.add_parser('volume', help='manage named volumes')
    vsub = p.add_subparsers(dest='volume_cmd', metavar='COMMAND')
    vsub.required = True
    v = vsub.add_parser('create', help='create a named volume')
    v.add_argument('--size', help='e.g. 512M, 10G (default 4G, sparse)')
    v.add_argument('name')
    v.set_defaults(func=cmd_create)
    v = vsub.add_parser('ls', help='list named volumes')
    v.add_argument('-q', '--quiet', action='store_true')
    v.set_defaults(func=cmd_ls)
    v = vsub.add_parser('inspect', help='show named volumes as JSON')
    v.add_argument('names', nargs='+', metavar='NAME')
    v.set_defaults(func=cmd_inspect)
    v = vsub.add_parser('rm', help='remove named volumes no container uses')
    v.add_argument('names', nargs='+', metavar='NAME')
    v.set_defaults(func=cmd_rm)
