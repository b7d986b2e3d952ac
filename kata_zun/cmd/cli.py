"""kata-zun: a Docker-like command line for containers in micro-VMs.

No OpenStack service is needed: images come from local archives, state
lives under ``[kata] state_path``. Every sub-command maps to one method of
:class:`kata_zun.runtime.manager.Runtime`; this module only parses, prints
and pumps the terminal.
"""

import argparse
import contextlib
import json
import os
import select
import shlex
import signal
import sys
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun import conf
from kata_zun import exception
from kata_zun.shim import guestdata
from kata_zun.shim import logs

# Characters of one table cell or error message printed: what the guest
# or a damaged record says is escaped before it reaches the terminal.
_PRINT_MAX = PRINT_MAX = 64 * 1024

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class CliError(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def _runtime():
    from kata_zun.runtime import manager
    return manager.Runtime()


def parse_signal(value):
    """:returns: a signal number from 9, KILL or SIGKILL."""
    text = str(value).strip().upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = text if text.startswith('SIG') else 'SIG' + text
        sig = getattr(signal.Signals, name, None) if name.isidentifier() \
            else None
        if isinstance(sig, signal.Signals):
            return int(sig)
    raise CliError('invalid signal: %s' % value)


def memory_size(value):
    """The argparse type of ``--memory``: MiB from Docker's sizes
    (``512m``, ``1g``, ``1.5G``, ``1GiB``: 1024-based units, rounded up
    to a whole MiB). A bare number is MiB, as this option always took
    (Docker reads it as bytes).

    :raises: argparse.ArgumentTypeError
    """
    text = str(value).strip()
    if text.isascii() and text.isdigit() and len(text) <= 16:
        return int(text)
    from kata_zun.runtime import layer
    try:
        return layer.parse_size(text)
    except exception.InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc))


# ------------------------------------------------------------ the terminal

@contextlib.contextmanager
def _raw_terminal(enabled):
    if not enabled or not os.isatty(0):
        yield
        return
    import termios
    import tty
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _terminal_size():
    try:
        size = os.get_terminal_size(0)
        return size.lines, size.columns
    except OSError:
        return None


def stream(client, handle, stdin=False, tty=False):
    """Pump stdio between this process and a container process.

    :returns: the process's exit code once its exit event arrives.
    :raises: CliError if the shim goes away first.
    """
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    watch_stdin = stdin
    if tty and os.isatty(0):
        size = _terminal_size()
        if size:
            client.call('resize', {'proc': handle, 'rows': size[0],
                                   'cols': size[1]})
    with _raw_terminal(tty and stdin):
        while True:
            frames = client.read_frames(0)
            if not frames:
                fds = [client.fileno()] + ([0] if watch_stdin else [])
                ready, _, _ = select.select(fds, [], [], 1.0)
                if 0 in ready:
                    data = os.read(0, 65536)
                    client.send_stdin(handle, data)
                    if not data:
                        watch_stdin = False
                if client.fileno() not in ready:
                    continue
                try:
                    frames = client.read_frames(0)
                except exception.ShimError as exc:
                    raise CliError('lost the container: %s' % exc, 125)
            for frame in frames:
                if frame.type in (protocol.STDOUT, protocol.STDERR):
                    h, data = frame.stream()
                    if h == handle:
                        target = out if frame.type == protocol.STDOUT \
                            else err
                        target.write(data)
                        target.flush()
                elif frame.type == protocol.EVENT:
                    event = frame.json()
                    if (event.get('event') == 'exit' and
                            event.get('proc') == handle):
                        if event.get('oom_killed'):
                            err.write(b'kata-zun: the container was killed '
                                      b'by the OOM killer (memory limit)\n')
                            err.flush()
                        return int(event.get('exit_code', 255))


# --------------------------------------------------------------- commands

def _healthcheck(args):
    """docker run's --health-* options, as runtime.create takes them."""
    if args.no_healthcheck:
        return {'test': ['NONE']}
    if args.health_cmd is None:
        return None     # the image's, if any
    return {'test': args.health_cmd, 'interval': args.health_interval,
            'timeout': args.health_timeout, 'retries': args.health_retries,
            'start_period': args.health_start_period}


def create_container(rt, args):
    """Pull (per ``--pull``) and create the container of a ``run`` or
    ``create`` command line.

    :returns: the :class:`kata_zun.runtime.record.Container`.
    """
    from kata_zun.runtime import layer
    from kata_zun.runtime import validate
    from kata_zun.volume import cli as volumecli
    if args.rm and args.restart != 'no':
        raise CliError('--rm and --restart cannot be combined', 125)
    # Checked before any pull: a typo costs nothing.
    storage = layer.parse_storage_opts(args.storage_opt)
    image = _pull(rt, args.image, _RUN_PULL[args.pull])
    return rt.create(
        # Images pulled by digest have no name: run them by id.
        image.id if '@' in args.image else args.image,
        command=args.command or None,
        entrypoint=(shlex.split(args.entrypoint)
                    if args.entrypoint is not None else None),
        env=args.env, workdir=args.workdir, user=args.user, tty=args.tty,
        stdin=args.interactive, memory_mb=args.memory, cpus=args.cpus,
        name=args.name, hostname=args.hostname, auto_remove=args.rm,
        restart_policy=validate.parse_restart_policy(args.restart),
        # --- network (issue 5)
        network=args.network or CONF.kata_network.driver,
        ports=args.publish, healthcheck=_healthcheck(args),
        volumes=volumecli.requests(args), privileged=args.privileged,
        pids_limit=args.pids_limit, disk_mb=storage['size_mb'],
        cpuset_cpus=args.cpuset_cpus, cpuset_mems=args.cpuset_mems)


def cmd_run(rt, args):
    if getattr(args, 'pod', None):
        from kata_zun.cmd import podcli
        return podcli.run_in_pod(rt, args)
    container = create_container(rt, args)
    holder = {}

    def attach(client, main):
        holder['main'] = main
        if not args.detach:
            client.call('attach', {'stdin': args.interactive})
    try:
        container, client = rt.start(container.id, before_start=attach)
    except exception.KataZunException as exc:
        if args.rm:
            rt.remove(container.id, force=True)
        raise CliError(str(exc), 125)
    if args.detach:
        client.close()
        print(container.id)
        return 0
    with client:
        with _forward_signals(rt, container.id, enabled=not args.tty):
            code = stream(client, holder['main'], stdin=args.interactive,
                          tty=args.tty)
    if args.rm:
        rt._wait_shim_gone(container)
        rt.release_network(container.id)      # network (issue 5)
    return code


@contextlib.contextmanager
def _forward_signals(rt, cid, enabled):
    """Like docker's sig-proxy: SIGINT/SIGTERM go to the container."""
    if not enabled:
        yield
        return

    def forward(signum, _frame):
        try:
            rt.kill(cid, signum)
        except exception.KataZunException:
            pass
    old = {s: signal.signal(s, forward)
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def cmd_start(rt, args):
    code = 0
    for ref in args.containers:
        holder = {}

        def attach(client, main):
            holder['main'] = main
            if args.attach:
                client.call('attach', {'stdin': args.interactive})
        container, client = rt.start(ref, before_start=attach)
        with client:
            if args.attach:
                code = stream(client, holder['main'],
                              stdin=args.interactive)
            else:
                print(ref)
    return code


def cmd_exec(rt, args):
    client, handle, _error = rt.exec_client(
        args.container, args.command, env=args.env, workdir=args.workdir,
        user=args.user, tty=args.tty, stdin=args.interactive)
    with client:
        return stream(client, handle, stdin=args.interactive, tty=args.tty)


def cmd_ps(rt, args):
    rows = [('CONTAINER ID', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS',
             'PORTS', 'NAMES')]
    for c in rt.list():
        # A record that cannot be read may be running: always shown.
        if not args.all and c.status not in ('running', 'paused',
                                             'unknown'):
            continue
        if args.quiet:
            print(c.id[:12])
            continue
        command = ' '.join(str(a) for a in (
            c.config.get('agent_spec') or {}).get('argv') or [])
        if len(command) > 30:
            command = command[:29] + '…'
        rows.append((c.id[:12], (c.config.get('image') or {}).get('name'),
                     '"%s"' % command, _ago(c.config['created']),
                     _status_text(c), _ports_text(c), c.name))
    if not args.quiet:
        _table(rows)
    return 0


def _ports_text(c):
    """Docker's PORTS column: 0.0.0.0:8080->80/tcp, ..."""
    ports = (c.config.get('network') or {}).get('ports') or []
    return ', '.join('%s:%s->%s/%s' % (p['host_ip'], p['host_port'],
                                       p['container_port'], p['proto'])
                     for p in ports)


def _status_text(c):
    if c.status == 'running':
        text = 'Up %s' % _ago(c.state.get('started_at') or time.time(),
                              suffix='')
        health = c.health
        if health == 'starting':
            health = 'health: starting'
        return text + (' (%s)' % health if health else '')
    if c.status == 'paused':
        return 'Up (Paused)'
    if c.status == 'restarting':
        return 'Restarting (%s)' % c.exit_code
    if c.status == 'exited':
        text = 'Exited (%s) %s' % (c.exit_code, _ago(
            c.state.get('finished_at') or time.time()))
        return text + (' [%s]' % c.error if c.error else '')
    if c.status == 'unknown':
        return 'Unknown [%s]' % c.error
    return 'Created'


def _ago(ts, suffix=' ago'):
    seconds = max(0, int(time.time() - ts))
    for unit, size in (('day', 86400), ('hour', 3600), ('minute', 60)):
        if seconds >= size:
            n = seconds // size
            return '%d %s%s%s' % (n, unit, 's' if n > 1 else '', suffix)
    return '%d second%s%s' % (seconds, '' if seconds == 1 else 's', suffix)


def _table(rows):
    rows = [[guestdata.printable(v, _PRINT_MAX) for v in row]
            for row in rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print('   '.join(str(v).ljust(w) for v, w in zip(row, widths))
              .rstrip())


def _print_records(records, timestamps):
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    for ts, stream_id, data in records:
        target = out if stream_id == logs.STDOUT else err
        if timestamps:
            target.write(logs.format_time(ts).encode() + b' ')
        target.write(data)
    out.flush()
    err.flush()


def cmd_logs(rt, args):
    try:
        since = logs.parse_since(args.since)
    except ValueError as exc:
        raise CliError(str(exc))
    tail = None
    if args.tail not in (None, 'all'):
        if not str(args.tail).isdigit():
            raise CliError('--tail takes a number or "all"')
        tail = int(args.tail)
    c, records = rt.logs(args.container, since=since, tail=tail)
    path = os.path.join(c.dir, 'container.log')
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    _print_records(records, args.timestamps)
    if not args.follow:
        return 0
    follower = logs.Follower(path, offset=offset)
    try:
        while True:
            new = follower.poll()
            _print_records([r for r in new
                            if since is None or r[0] >= since],
                           args.timestamps)
            if not new:
                current = rt.get(c.id)
                if current.status not in ('running', 'paused', 'created') \
                        or not current.shim_alive:
                    _print_records(follower.poll(), args.timestamps)
                    return 0
                time.sleep(0.1)
    finally:
        follower.close()


def cmd_stop(rt, args):
    for ref in args.containers:
        rt.stop(ref, timeout=args.time)
        print(ref)
    return 0


def cmd_kill(rt, args):
    sig = parse_signal(args.signal)
    for ref in args.containers:
        rt.kill(ref, sig)
        print(ref)
    return 0


def cmd_pause(rt, args):
    for ref in args.containers:
        rt.pause(ref)
        print(ref)
    return 0


def cmd_unpause(rt, args):
    for ref in args.containers:
        rt.unpause(ref)
        print(ref)
    return 0


def cmd_rm(rt, args):
    code = 0
    for ref in args.containers:
        try:
            rt.remove(ref, force=args.force)
            print(ref)
        except exception.KataZunException as exc:
            print('kata-zun: error: %s' % guestdata.printable(exc, _PRINT_MAX),
                  file=sys.stderr)
            code = 1
    return code


def cmd_cp(rt, args):
    """docker cp with a tar stream on the host side.

    ``C:PATH -`` writes a tar to stdout, ``- C:DIR`` extracts a tar read
    from stdin.
    """
    if args.src != '-' and args.dest == '-' and ':' in args.src:
        ref, path = args.src.split(':', 1)
        data, _stat = rt.get_archive(ref, path)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    if args.src == '-' and ':' in args.dest:
        ref, path = args.dest.split(':', 1)
        rt.put_archive(ref, path, sys.stdin.buffer.read())
        return 0
    raise CliError('use "cp CONTAINER:PATH -" or "cp - CONTAINER:DIR" '
                   '(tar streams)')


def cmd_inspect(rt, args):
    out = []
    for ref in args.containers:
        out.append(rt.get(ref).to_dict())
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def cmd_stats(rt, args):
    rows = [('CONTAINER', 'CPU TIME', 'MEM USAGE / LIMIT', 'PIDS')]
    for ref in args.containers:
        c = rt.get(ref)
        s = rt.call(c.id, 'stats')
        rows.append((c.id[:12], '%.2fs' % (s['cpu_usage_usec'] / 1e6),
                     '%.1fMiB / %.1fMiB' % (s['memory_usage'] / 2 ** 20,
                                            s['memory_limit'] / 2 ** 20),
                     s['pids']))
    _table(rows)
    return 0


def cmd_top(rt, args):
    """``docker top CONTAINER [ps OPTIONS]`` (see
    :mod:`kata_zun.runtime.pstable`).
    """
    from kata_zun.runtime import pstable
    ps_args = ' '.join(args.ps_args) or None
    pstable.columns(ps_args)        # refused before the guest is asked
    c = rt.get(args.container)
    procs = guestdata.processes(rt.call(c.id, 'ps'))['processes']
    table = pstable.table(procs, ps_args)
    _table([table['Titles']] + table['Processes'])
    return 0


def cmd_images(rt, args):
    rows = [('REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE')]
    for image in rt.images.list():
        tags = image.repo_tags or ['<none>:<none>']
        for tag in tags:
            repo, _, version = tag.rpartition(':')
            rows.append((repo, version, image.id.split(':')[-1][:12],
                         str(image.created or '')[:19],
                         '%.1fMB' % (image.size / 1e6)))
    _table(rows)
    return 0


def cmd_rmi(rt, args):
    for ref in args.images:
        image = rt.images.get(ref)
        rt.images.remove(ref, users=rt.image_users(image.id))
        print('Deleted: %s' % ref)
    return 0


def cmd_load(rt, args):
    from kata_zun.image import progress
    for image in rt.images.load_archive(
            args.input, progress=progress.Terminal(sys.stderr)):
        for tag in image.repo_tags or [image.id]:
            print('Loaded image: %s' % tag)
    return 0


_RUN_PULL = {'missing': 'ifnotpresent', 'always': 'always', 'never': 'never'}


def _pull(rt, ref, policy, credentials=None):
    from kata_zun.image import progress
    return rt.images.pull(ref, policy=policy, credentials=credentials,
                          progress=progress.Terminal(sys.stderr))


def cmd_pull(rt, args):
    credentials = None
    if args.password_stdin:
        if not args.username:
            raise CliError('--password-stdin needs --username')
        credentials = {'username': args.username,
                       'password': sys.stdin.readline().rstrip('\r\n')}
    elif args.username:
        raise CliError('--username needs --password-stdin')
    print(_pull(rt, args.image, 'always', credentials).id)
    return 0


def cmd_check(rt, args):
    from kata_zun.hypervisor import hostcheck
    results = hostcheck.run_checks()
    for r in results:
        mark = 'ok' if r.ok else ('FAIL' if r.required else 'warn')
        print('%-5s %-28s %s' % (mark, r.name, r.detail))
    ok = hostcheck.can_run(results)
    print('System is capable of running kata-zun containers' if ok else
          'System is NOT capable of running kata-zun containers')
    return 0 if ok else 1


def cmd_guest_build(rt, args):
    from kata_zun.guest import builder
    from kata_zun.image import progress
    assets = builder.build(force=args.force,
                           progress=progress.Terminal(sys.stderr))
    print('kernel: %s\ninitrd: %s\nversion: %s' % (
        assets.kernel, assets.initrd, assets.version))
    if CONF.kata.vm_templating:
        from kata_zun.hypervisor.qemu import clone
        from kata_zun.hypervisor.qemu import vm as qemu_vm
        if clone.prebuild_default(qemu_vm.QemuHypervisor(templates=True),
                                  assets):
            print('VM template of the default shape: being built in the '
                  'background', file=sys.stderr)
    return 0


# ----------------------------------------------------------------- parser

def _add_process_options(p):
    p.add_argument('-e', '--env', action='append', default=[],
                   metavar='KEY=VALUE')
    p.add_argument('-w', '--workdir')
    p.add_argument('-u', '--user')
    p.add_argument('-i', '--interactive', action='store_true')
    p.add_argument('-t', '--tty', action='store_true')


def add_create_options(p):
    """The options and arguments ``run`` and ``create`` share."""
    p.add_argument('--rm', action='store_true')
    p.add_argument('--name')
    p.add_argument('--hostname')
    p.add_argument('-m', '--memory', type=memory_size, metavar='SIZE',
                   help='memory limit: 512m, 1g (1024-based units); a '
                        'bare number is MiB. The VM gets [kata_hypervisor] '
                        'memory_overhead_mb on top')
    p.add_argument('--cpus', type=float)
    p.add_argument('--cpuset-cpus', metavar='LIST',
                   help='host CPUs the VM runs on (e.g. 0-3,8; every '
                        'QEMU thread is pinned to them; without --cpus '
                        'one vCPU each)')
    p.add_argument('--cpuset-mems', metavar='LIST',
                   help='NUMA nodes the VM\'s memory comes from '
                        '(default: the nodes of --cpuset-cpus)')
    p.add_argument('--privileged', action='store_true',
                   help='all capabilities, no seccomp filter and no '
                        'masked paths inside the VM (still no host '
                        'device)')
    p.add_argument('--pids-limit', type=int, metavar='N',
                   help='processes the container may have (0: no limit; '
                        'default: [kata] pids_limit)')
    p.add_argument('--storage-opt', action='append', default=[],
                   metavar='size=SIZE',
                   help='size of the writable layer, what df / shows in '
                        'the container (e.g. size=512M, size=5G; default: '
                        '[kata] writable_layer_mb)')
    p.add_argument('--entrypoint')
    p.add_argument('--restart', default='no',
                   help='no, always, unless-stopped or on-failure[:N]')
    p.add_argument('--pull', choices=sorted(_RUN_PULL), default='missing',
                   help='pull the image: always, when missing (default) '
                        'or never')
    # --- network (issue 5)
    p.add_argument('--network', metavar='NETWORK',
                   help='bridge or none (default: [kata_network] driver)')
    p.add_argument('-p', '--publish', action='append', default=[],
                   metavar='[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]',
                   help='publish a container port on the host '
                        '(repeatable; tcp unless /udp)')
    # --- end network
    p.add_argument('--health-cmd', metavar='COMMAND',
                   help='command run in the container (by /bin/sh -c) to '
                        'check its health; exit 0 is healthy')
    p.add_argument('--health-interval', type=float, metavar='SECONDS',
                   help='between checks (default 30)')
    p.add_argument('--health-timeout', type=float, metavar='SECONDS',
                   help='a check that takes longer fails (default 30)')
    p.add_argument('--health-retries', type=int, metavar='N',
                   help='failures in a row that make it unhealthy '
                        '(default 3)')
    p.add_argument('--health-start-period', type=float, metavar='SECONDS',
                   help='failures after a start that do not count '
                        '(default 0)')
    p.add_argument('--no-healthcheck', action='store_true',
                   help="disable the image's health check")
    from kata_zun.volume import cli as volumecli
    volumecli.add_run_options(p)
    _add_process_options(p)
    p.add_argument('image')
    p.add_argument('command', nargs=argparse.REMAINDER)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='kata-zun',
        description='Run OCI containers, each in its own QEMU micro-VM.')
    parser.add_argument('--config-file', action='append', default=[],
                        help='oslo.config file (repeatable)')
    parser.add_argument('--debug', action='store_true')
    sub = parser.add_subparsers(dest='cmd', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser('run', help='create and start a container')
    p.add_argument('--pod', metavar='POD',
                   help='add the container to this pod (not running), '
                   'it starts with the pod')
    p.add_argument('--init', action='store_true',
                   help='with --pod: an init container')
    p.add_argument('-d', '--detach', action='store_true')
    add_create_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser('start', help='start stopped containers')
    p.add_argument('-a', '--attach', action='store_true')
    p.add_argument('-i', '--interactive', action='store_true')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_start)

    p = sub.add_parser('exec', help='run a command in a running container')
    _add_process_options(p)
    p.add_argument('container')
    p.add_argument('command', nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser('ps', help='list containers')
    p.add_argument('-a', '--all', action='store_true')
    p.add_argument('-q', '--quiet', action='store_true')
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser('logs', help='show a container log')
    p.add_argument('-f', '--follow', action='store_true')
    p.add_argument('--tail')
    p.add_argument('--since')
    p.add_argument('-t', '--timestamps', action='store_true')
    p.add_argument('container')
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser('stop', help='stop containers (SIGTERM, SIGKILL)')
    p.add_argument('-t', '--time', type=int, default=None)
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser('kill', help='signal containers')
    p.add_argument('-s', '--signal', default='KILL')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_kill)

    for name, func in (('pause', cmd_pause), ('unpause', cmd_unpause)):
        p = sub.add_parser(name, help='%s the VMs of containers' % name)
        p.add_argument('containers', nargs='+')
        p.set_defaults(func=func)

    p = sub.add_parser('rm', help='remove containers')
    p.add_argument('-f', '--force', action='store_true')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser('cp', help='copy files out of / into a container '
                       'as tar streams')
    p.add_argument('src', help='CONTAINER:PATH or -')
    p.add_argument('dest', help='- or CONTAINER:DIR')
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser('inspect', help='show container records as JSON')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser('stats', help='resource usage of containers')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser('top', help='processes of a container')
    p.add_argument('container')
    p.add_argument('ps_args', nargs=argparse.REMAINDER,
                   help='ps options: -ef (default), -e, -o FIELDS')
    p.set_defaults(func=cmd_top)

    p = sub.add_parser('images', help='list images')
    p.set_defaults(func=cmd_images)

    p = sub.add_parser('rmi', help='remove images')
    p.add_argument('images', nargs='+')
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser('load', help='load a docker-save or OCI archive')
    p.add_argument('-i', '--input', required=True)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser('pull', help='pull an image from a registry')
    p.add_argument('--username', '-u')
    p.add_argument('--password-stdin', action='store_true',
                   help='read the password from the first line of stdin')
    p.add_argument('image')
    p.set_defaults(func=cmd_pull)

    from kata_zun.cmd import imagecli
    imagecli.add_parsers(sub)
    from kata_zun.cmd import verbs
    verbs.add_parsers(sub)
    from kata_zun.cmd import attach
    attach.add_parsers(sub)
    from kata_zun.cmd import system
    system.add_parsers(sub)
    from kata_zun.volume import cli as volumecli
    volumecli.add_parsers(sub)
    from kata_zun.cmd import podcli
    podcli.add_parsers(sub)

    p = sub.add_parser('check', help='can this host run kata-zun VMs?')
    p.set_defaults(func=cmd_check)

    p = sub.add_parser('guest', help='guest assets')
    gsub = p.add_subparsers(dest='guest_cmd', metavar='COMMAND')
    gsub.required = True
    g = gsub.add_parser('build', help='build the guest kernel and initrd')
    g.add_argument('--force', action='store_true')
    g.set_defaults(func=cmd_guest_build)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, 'command', None) is not None and args.cmd in (
            'run', 'create', 'exec') and args.command[:1] == ['--']:
        args.command = args.command[1:]
    if args.cmd == 'exec' and not args.command:
        parser.error('exec needs a command')
    logging.register_options(CONF)
    CONF([], project='kata-zun',
         default_config_files=args.config_file or None)
    if args.debug:
        CONF.set_override('debug', True)
    # Our stdout is the container's: log lines go to stderr (oslo.log
    # would pick stdout when no log file is configured).
    CONF.set_default('use_stderr', True)
    logging.setup(CONF, 'kata-zun')
    try:
        rt = _runtime() if args.cmd not in ('guest', 'version') else None
        return args.func(rt, args)
    except CliError as exc:
        print('kata-zun: error: %s' % guestdata.printable(exc, _PRINT_MAX),
              file=sys.stderr)
        return exc.code
    except exception.KataZunException as exc:
        print('kata-zun: error: %s' % guestdata.printable(exc, _PRINT_MAX),
              file=sys.stderr)
        return 125 if args.cmd in ('run', 'create') else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``kata-zun ps | head``):
        # stop quietly, as a command killed by SIGPIPE does; never let
        # Python complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == '__main__':
    # Run as ``python -m kata_zun.cmd.cli`` this file is ``__main__``, and
    # the command modules that import kata_zun.cmd.cli get a second copy
    # of it, with a CliError of its own that this copy's main() would not
    # catch (a traceback instead of one error line): run that copy's.
    from kata_zun.cmd import cli as _imported
    sys.exit(_imported.main())
