"""``kata-zun events``, ``system df``, ``system prune``, ``container
prune`` and ``image prune``: Docker's housekeeping verbs.

Registered into ``kata-zun`` by :func:`add_parsers`.  Never imports zun.
"""

import datetime
import json
import os
import re
import sys
import time

from kata_zun.cmd import cli
from kata_zun import exception
from kata_zun.runtime import events as events_mod
from kata_zun.shim import guestdata

_DURATION_RE = re.compile(r'^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$')
_DURATION_PART = re.compile(r'(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)')
_UNIT_SECONDS = {'ns': 1e-9, 'us': 1e-6, 'ms': 1e-3, 's': 1, 'm': 60,
                 'h': 3600}
_TIME_FORMATS = ('%Y-%m-%dT%H:%M:%S.%f%z', '%Y-%m-%dT%H:%M:%S%z',
                 '%Y-%m-%dT%H:%M:%S.%f', '%Y-%m-%dT%H:%M:%S',
                 '%Y-%m-%dT%H:%M%z', '%Y-%m-%dT%H:%M', '%Y-%m-%d')
EVENT_FILTERS = ('container', 'event', 'image', 'type')
# Seconds between two looks at the event log while following it.
_FOLLOW_POLL = 0.2


def parse_time(value, now=None):
    """Docker's ``--since``/``--until`` values: a Unix timestamp
    (``1700000000.5``), an RFC 3339 date or time (local time without a
    zone) or a duration before now (``10m``, ``1h30m``).

    :returns: seconds since the epoch.
    :raises: CliError
    """
    now = time.time() if now is None else now
    text = str(value).strip()
    if re.match(r'^\d+(\.\d+)?$', text):
        return float(text)
    if _DURATION_RE.match(text):
        return now - sum(float(n) * _UNIT_SECONDS[u]
                         for n, u in _DURATION_PART.findall(text))
    zoned = text[:-1] + '+0000' if text.endswith('Z') else text
    for fmt in _TIME_FORMATS:
        try:
            parsed = datetime.datetime.strptime(zoned, fmt)
        except ValueError:
            continue
        return parsed.timestamp()   # naive: local time, as Docker
    raise cli.CliError('invalid time %r: want a Unix timestamp, an RFC '
                       '3339 date or time, or a duration such as 10m' %
                       value)


def parse_filters(values, allowed):
    """``--filter key=value`` options as {key: set of values}.

    :raises: CliError (Docker's messages)
    """
    out = {}
    for value in values:
        key, sep, val = value.partition('=')
        if not sep or not key:
            raise cli.CliError('bad format of filter (expected '
                               'name=value)')
        if key not in allowed:
            raise cli.CliError('invalid filter %r' % key)
        out.setdefault(key, set()).add(val)
    return out


def event_matches(event, filters):
    """Docker's rule: values of one key are OR'ed, keys are AND'ed."""
    actor = event['Actor']
    attrs = actor['Attributes']
    checks = {
        'type': lambda v: event['Type'] == v,
        'event': lambda v: event['Action'] == v,
        'container': lambda v: event['Type'] == 'container' and (
            actor['ID'].startswith(v) or attrs.get('name') == v),
        'image': lambda v: (attrs.get('image') == v or
                            (event['Type'] == 'image' and (
                                actor['ID'] == v or
                                actor['ID'].split(':')[-1].startswith(v) or
                                v in attrs.get('name', '').split(',')))),
    }
    return all(any(checks[key](v) for v in values)
               for key, values in filters.items())


def format_event(event):
    """One line as ``docker events`` prints it (local time, RFC 3339 with
    nanoseconds).
    """
    ns = event['timeNano']
    when = datetime.datetime.fromtimestamp(ns // 10 ** 9).astimezone()
    stamp = when.strftime('%Y-%m-%dT%H:%M:%S') + '.%09d' % (ns % 10 ** 9) \
        + when.strftime('%z')
    stamp = stamp[:-2] + ':' + stamp[-2:]
    attrs = event['Actor']['Attributes']
    text = '%s %s %s %s' % (stamp, event['Type'], event['Action'],
                            event['Actor']['ID'])
    if attrs:
        text += ' (%s)' % ', '.join('%s=%s' % (k, attrs[k])
                                    for k in sorted(attrs))
    return guestdata.printable(text, cli.PRINT_MAX)


def _printer(fmt):
    if fmt is None:
        return format_event
    if fmt.replace(' ', '') in ('{{json.}}', 'json'):
        return lambda e: json.dumps(e, sort_keys=True)
    raise cli.CliError('unsupported --format %r: only json ({{json .}})'
                       % fmt)


def cmd_events(rt, args):
    """``docker events``: past events with ``--since``; new ones until
    ``--until`` (for ever without it, until interrupted).
    """
    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    filters = parse_filters(args.filter, EVENT_FILTERS)
    show = _printer(args.format)
    # Opened before the history is read: nothing appended in between is
    # missed (what both see is printed once).
    follower = None if until is not None and until <= now else \
        events_mod.Follower(rt.state_path)
    seen = set()

    def emit(event):
        ns = event['timeNano']
        if since is not None and ns < since * 1e9:
            return
        if until is not None and ns > until * 1e9:
            return
        if event_matches(event, filters):
            print(show(event))
            sys.stdout.flush()
    try:
        if since is not None:
            for event in events_mod.read(rt.state_path):
                seen.add(json.dumps(event, sort_keys=True))
                emit(event)
        while follower is not None:
            if until is not None and time.time() > until:
                break
            for event in follower.poll():
                key = json.dumps(event, sort_keys=True)
                if key not in seen:
                    emit(event)
            seen.clear()
            time.sleep(_FOLLOW_POLL)
    finally:
        if follower is not None:
            follower.close()
    return 0


# ------------------------------------------------------------ df, prune

def human_size(size):
    """Docker's sizes: decimal units, 4 significant digits (``16.43MB``,
    ``0B``).
    """
    size = float(size)
    units = ('B', 'kB', 'MB', 'GB', 'TB', 'PB')
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return '%.4g%s' % (size, units[i])


def _container_bytes(c):
    """Bytes the container's record takes on disk (its writable layer,
    log and console output).
    """
    total = 0
    try:
        names = os.listdir(c.dir)
    except OSError:
        return 0
    for name in names:
        try:
            st = os.lstat(os.path.join(c.dir, name))
        except OSError:
            continue
        total += st.st_blocks * 512
    return total


def _running(c):
    from kata_zun.runtime import record
    return c.shim_alive or c.status in record.LIVE


def disk_usage(rt):
    """:returns: rows of ``system df``: (type, total, active, size,
        reclaimable) with sizes in bytes.
    """
    containers = rt.list()
    usage = rt.images.usage()
    used_images = {c.config['image']['id'] for c in containers}
    images = usage['images']
    image_bytes = sum(images.values())
    image_free = sum(b for i, b in images.items() if i not in used_images)
    sizes = {c.id: _container_bytes(c) for c in containers}
    running = [c for c in containers if _running(c)]
    container_free = sum(sizes[c.id] for c in containers
                         if not _running(c))
    volumes = rt.volumes.list()
    busy = [v for v in volumes if rt.volume_users(v['name'])]
    volume_bytes = sum(v['used_bytes'] for v in volumes)
    volume_free = volume_bytes - sum(v['used_bytes'] for v in busy)
    return [
        ('Images', len(images), len(used_images & set(images)),
         image_bytes, image_free),
        ('Containers', len(containers), len(running),
         sum(sizes.values()), container_free),
        ('Local Volumes', len(volumes), len(busy), volume_bytes,
         volume_free),
        ('Build Cache', 0, 0, usage['cache'], usage['cache']),
    ]


def cmd_df(rt, args):
    rows = [('TYPE', 'TOTAL', 'ACTIVE', 'SIZE', 'RECLAIMABLE')]
    for kind, total, active, size, free in disk_usage(rt):
        reclaim = human_size(free)
        if kind != 'Containers' and kind != 'Build Cache' and size:
            reclaim += ' (%d%%)' % (100 * free // size)
        rows.append((kind, str(total), str(active), human_size(size),
                     reclaim))
    cli._table(rows)
    return 0


def _confirm(warning, force):
    """Docker's prompt; :returns: whether to go on."""
    if force:
        return True
    sys.stdout.write('WARNING! %s\nAre you sure you want to continue? '
                     '[y/N] ' % warning)
    sys.stdout.flush()
    answer = sys.stdin.readline(64).strip().lower()
    return answer in ('y', 'yes')


def prune_containers(rt, until=None):
    """Remove every container that does not run.

    :returns: (removed ids, bytes freed).
    """
    removed, freed = [], 0
    for c in rt.list():
        if _running(c) or (until is not None and
                           c.config['created'] > until):
            continue
        size = _container_bytes(c)
        try:
            rt.remove(c.id)
        except exception.KataZunException as exc:
            # Started meanwhile, or removed by someone else: not ours.
            print('kata-zun: %s: %s' % (c.id[:12], exc), file=sys.stderr)
            continue
        removed.append(c.id)
        freed += size
    return removed, freed


def prune_images(rt, all_images=False):
    """Remove images no container uses: the untagged ones, or with
    ``all_images`` every one.

    :returns: (list of ``(untagged|deleted, ref)``, bytes freed).
    """
    usage = rt.images.usage()['images']
    used = {c.config['image']['id'] for c in rt.list()}
    done, freed = [], 0
    for image in rt.images.list():
        if image.id in used or (image.repo_tags and not all_images):
            continue
        if rt.images.named_by_projects(image.id):
            continue        # a Zun tenant's image: never pruned here
        try:
            for tag in image.repo_tags or ():
                deleted = rt.images.remove(tag,
                                           users=rt.image_users(image.id))
                done.append(('untagged', tag))
                if deleted:
                    break
            else:
                rt.images.remove(image.id, users=rt.image_users(image.id))
        except exception.ImageNotFound:
            continue
        except exception.KataZunException as exc:
            print('kata-zun: %s: %s' % (image.id[:19], exc),
                  file=sys.stderr)
            continue
        done.append(('deleted', image.id))
        freed += usage.get(image.id, 0)
    return done, freed


def prune_volumes(rt):
    """:returns: (names of the removed volumes, bytes freed)."""
    removed, freed = [], 0
    for v in rt.volumes.list():
        try:
            rt.remove_volume(v['name'])
        except exception.KataZunException:
            continue        # in use
        removed.append(v['name'])
        freed += v['used_bytes']
    return removed, freed


def _until(args):
    filters = parse_filters(args.filter, ('until',))
    values = filters.get('until')
    if values and len(values) > 1:
        raise cli.CliError('only one until filter is allowed')
    return parse_time(next(iter(values))) if values else None


def cmd_container_prune(rt, args):
    until = _until(args)
    if not _confirm('This will remove all stopped containers.', args.force):
        return 0
    removed, freed = prune_containers(rt, until)
    if removed:
        print('Deleted Containers:\n%s\n' % '\n'.join(removed))
    print('Total reclaimed space: %s' % human_size(freed))
    return 0


def cmd_image_prune(rt, args):
    warning = ('This will remove all images without at least one '
               'container associated to them.' if args.all else
               'This will remove all dangling images.')
    if not _confirm(warning, args.force):
        return 0
    done, freed = prune_images(rt, args.all)
    if done:
        print('Deleted Images:\n%s\n' % '\n'.join(
            '%s: %s' % item for item in done))
    print('Total reclaimed space: %s' % human_size(freed))
    return 0


def cmd_system_prune(rt, args):
    items = ['all stopped containers']
    if args.volumes:
        items.append('all volumes not used by at least one container')
    items.append('all images without at least one container associated '
                 'to them' if args.all else 'all dangling images')
    items.append('unused build cache')
    if not _confirm('This will remove:\n%s\n' % '\n'.join(
            '  - ' + i for i in items), args.force):
        return 0
    removed, freed = prune_containers(rt)
    if removed:
        print('Deleted Containers:\n%s\n' % '\n'.join(removed))
    if args.volumes:
        names, size = prune_volumes(rt)
        freed += size
        if names:
            print('Deleted Volumes:\n%s\n' % '\n'.join(names))
    done, size = prune_images(rt, args.all)
    freed += size
    if done:
        print('Deleted Images:\n%s\n' % '\n'.join(
            '%s: %s' % item for item in done))
    cache = rt.images.usage()['cache']
    gone = rt.images.gc()
    if gone['blobs'] or gone['block']:
        print('Deleted build cache objects:\n%s\n' % '\n'.join(
            gone['blobs'] + gone['block']))
    freed += cache
    print('Total reclaimed space: %s' % human_size(freed))
    return 0


# ----------------------------------------------------------------- parser

def _prune_options(p, what):
    p.add_argument('-f', '--force', action='store_true',
                   help='do not prompt for confirmation')
    p.add_argument('--filter', action='append', default=[],
                   metavar='until=TIME',
                   help='only %s created before TIME' % what)


def add_parsers(sub):
    """Add events, system, container and image to ``kata-zun``'s
    sub-commands.
    """
    p = sub.add_parser('events', help='lifecycle events of this host')
    p.add_argument('--since', metavar='TIME',
                   help='show events since TIME (timestamp, RFC 3339 or '
                        'a duration such as 10m)')
    p.add_argument('--until', metavar='TIME',
                   help='stream events until TIME')
    p.add_argument('-f', '--filter', action='append', default=[],
                   metavar='KEY=VALUE',
                   help='container=, event=, image= or type= '
                        '(repeatable)')
    p.add_argument('--format', help="'{{json .}}': one JSON object a line")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser('system', help='disk usage and clean-up')
    ssub = p.add_subparsers(dest='system_cmd', metavar='COMMAND')
    ssub.required = True
    s = ssub.add_parser('df', help='disk usage of images, containers, '
                        'volumes and cache')
    s.set_defaults(func=cmd_df)
    s = ssub.add_parser('prune', help='remove stopped containers, unused '
                        'images and cache')
    s.add_argument('-a', '--all', action='store_true',
                   help='every image no container uses, not only '
                        'untagged ones')
    s.add_argument('-f', '--force', action='store_true',
                   help='do not prompt for confirmation')
    s.add_argument('--volumes', action='store_true',
                   help='also volumes no container uses')
    s.set_defaults(func=cmd_system_prune)

    p = sub.add_parser('container', help='manage containers')
    csub = p.add_subparsers(dest='container_cmd', metavar='COMMAND')
    csub.required = True
    s = csub.add_parser('prune', help='remove every stopped container')
    _prune_options(s, 'containers')
    s.set_defaults(func=cmd_container_prune)

    p = sub.add_parser('image', help='manage images')
    isub = p.add_subparsers(dest='image_cmd', metavar='COMMAND')
    isub.required = True
    s = isub.add_parser('prune', help='remove unused images')
    s.add_argument('-a', '--all', action='store_true',
                   help='every image no container uses, not only '
                        'untagged ones')
    s.add_argument('-f', '--force', action='store_true',
                   help='do not prompt for confirmation')
    s.set_defaults(func=cmd_image_prune)
