"""CLI commands for commit, save, image garbage collection and Glance.

Registered into ``kata-zun`` by :func:`add_parsers`.  Never imports zun.
"""

import os
import sys

from kata_zun import exception
from kata_zun.runtime import fileutils


def _progress_reporter():
    """Progress on stderr: live lines on a terminal, status lines only
    elsewhere (see :mod:`kata_zun.image.progress`).
    """
    from kata_zun.image import progress
    return progress.Terminal(sys.stderr)


def _changes(items):
    changes = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep:
            raise exception.InvalidInput(reason='--change wants KEY=VALUE')
        if key in ('Cmd', 'Entrypoint', 'Env'):
            import json
            try:
                value = json.loads(value)
            except ValueError:
                value = [value] if key != 'Env' else value.split(',')
        changes[key] = value
    return changes


def cmd_commit(rt, args):
    record = rt.commit(args.container, args.repository,
                       changes=_changes(args.change),
                       comment=args.message,
                       progress=_progress_reporter())
    env = (record.config or {}).get('Env') or []
    if env:
        # Env often holds secrets (passwords, tokens given with -e).
        print('Warning: the image holds the container\'s %d environment '
              'variables (Env); whoever can read or pull the image reads '
              'them' % len(env), file=sys.stderr)
    print(record.id)
    return 0


def cmd_save(rt, args):
    if not args.output:
        if sys.stdout.isatty():
            raise exception.InvalidInput(
                reason='refusing to write a tar to a terminal: use -o FILE')
        rt.images.export(args.images, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    tmp = '%s.tmp-%d' % (args.output, os.getpid())
    from kata_zun.image import progress
    report = progress.Terminal(sys.stderr)
    try:
        with open(tmp, 'wb') as f:
            writer = progress.CountingWriter(f, report, args.output)
            rt.images.export(args.images, writer)
            # On disk before the name is: a crash must not leave an
            # empty or short tar named as the output.
            fileutils.fsync_file(f)
        if report.tty:      # docker save prints nothing otherwise
            report(progress.Update('%s: saved %s' % (
                args.output, progress.human(writer.done)),
                key=args.output))
        os.replace(tmp, args.output)
        fileutils.fsync_dir(os.path.dirname(os.path.abspath(args.output)))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


def cmd_gc(rt, args):
    # Containers keep their image's record, which gc never removes.
    removed = rt.images.gc()
    for kind in ('blobs', 'block'):
        for name in removed[kind]:
            print('Removed %s %s' % (kind, name))
    return 0


def _glance(args):
    from kata_zun.image import glance
    return glance.GlanceClient.from_env(endpoint=args.glance_url)


def cmd_glance_load(rt, args):
    client = _glance(args)
    for image in client.load(rt.images, args.image_id,
                             progress=_progress_reporter()):
        for tag in image.repo_tags or [image.id]:
            print('Loaded image: %s' % tag)
    return 0


def cmd_glance_upload(rt, args):
    client = _glance(args)
    image_id = client.upload(rt.images, args.image, args.name,
                             progress=_progress_reporter())
    print(image_id)
    return 0


def add_parsers(sub):
    """Add commit, save, image-gc, glance-load and glance-upload."""
    p = sub.add_parser('commit', help="create an image from a container's "
                       'changes')
    p.add_argument('-m', '--message', help='commit message (history)')
    p.add_argument('-c', '--change', action='append',
                   help='image config KEY=VALUE (Cmd, Entrypoint, Env as '
                   'JSON lists; WorkingDir, User)')
    p.add_argument('container')
    p.add_argument('repository', nargs='?', metavar='REPO[:TAG]')
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser('save', help='write images as a docker-save tar')
    p.add_argument('-o', '--output', help='file (default: stdout)')
    p.add_argument('images', nargs='+')
    p.set_defaults(func=cmd_save)

    p = sub.add_parser('image-gc', help='remove unreferenced image blobs '
                       'and block images')
    p.set_defaults(func=cmd_gc)

    for name, func, what in (
            ('glance-load', cmd_glance_load, 'load a Glance image'),
            ('glance-upload', cmd_glance_upload,
             'upload an image to Glance')):
        p = sub.add_parser(name, help=what + ' (OS_* environment for '
                           'keystone)')
        p.add_argument('--glance-url', help='Glance endpoint (default: '
                       'from the keystone catalog)')
        if name == 'glance-load':
            p.add_argument('image_id')
        else:
            p.add_argument('image')
            p.add_argument('name')
        p.set_defaults(func=func)
