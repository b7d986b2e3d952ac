"""Pod verbs of ``kata-zun``, podman's habits: ``pod create|ps|inspect|
start|stop|rm``, ``run --pod NAME`` and ``play FILE.yaml`` (Zun's
capsule template, the YAML of ``openstack capsule create -f``).

Every verb maps to a method of :mod:`kata_zun.runtime.pods`; per-container
verbs (``logs``, ``exec``, ``top``, ``stats``, ``cp``) take a pod's
container by its name, ``<pod>-<container>``. Never imports zun.
"""

import json
import shlex
import sys

from kata_zun.cmd import cli
from kata_zun import conf
from kata_zun import exception
from kata_zun.runtime import podspec
from kata_zun.shim import guestdata

CONF = conf.CONF
# A template larger than this is refused before it is parsed.
MAX_TEMPLATE_BYTES = 1024 * 1024


def _print(text):
    print(guestdata.printable(text, cli.PRINT_MAX))


def _volume(text, pod_name):
    """``NAME[:SIZE]``: a pod volume, made for the pod (and removed
    with it) unless a volume of that name exists.
    """
    from kata_zun.volume import store
    name, _sep, size = text.partition(':')
    return {'name': name, 'type': 'volume', 'source': name,
            'size': store.parse_size(size) if size else None,
            'owned': False}


def cmd_pod_create(rt, args):
    pod = rt.create_pod(
        [], name=args.name, hostname=args.hostname,
        network=args.network or CONF.kata_network.driver,
        ports=args.publish, restart_policy=args.restart,
        volumes=[_volume(v, args.name) for v in args.volume],
        labels=dict(label.partition('=')[::2] for label in args.label))
    print(pod.id)
    return 0


def _pod_row(pod):
    names = ','.join(c.config.get('pod_member', '?')
                     for c in pod.init_containers + pod.containers)
    return [pod.id[:12], pod.name, pod.status, str(len(
        pod.init_containers) + len(pod.containers)), names,
        pod.error or '']


def cmd_pod_ps(rt, args):
    pods = rt.list_pods()
    if args.quiet:
        for pod in pods:
            print(pod.id)
        return 0
    if args.format == 'json':
        print(json.dumps([p.to_dict() for p in pods], indent=2))
        return 0
    rows = [['POD ID', 'NAME', 'STATUS', '# OF CONTAINERS', 'CONTAINERS',
             'ERROR']] + [_pod_row(p) for p in pods]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _print('   '.join(cell.ljust(w) for cell, w in
                          zip(row, widths)).rstrip())
    return 0


def cmd_pod_inspect(rt, args):
    print(json.dumps([rt.get_pod(ref).to_dict() for ref in args.pods],
                     indent=2))
    return 0


def _each(refs, action):
    code = 0
    for ref in refs:
        try:
            print(action(ref).id)
        except exception.KataZunException as exc:
            print('kata-zun: error: %s' % guestdata.printable(
                exc, cli.PRINT_MAX), file=sys.stderr)
            code = 1
    return code


def cmd_pod_start(rt, args):
    return _each(args.pods, lambda ref: rt.start_pod(ref, wait=args.wait))


def cmd_pod_stop(rt, args):
    return _each(args.pods, lambda ref: rt.stop_pod(ref, timeout=args.time))


def cmd_pod_rm(rt, args):
    return _each(args.pods, lambda ref: rt.remove_pod(ref,
                                                      force=args.force))


def run_in_pod(rt, args):
    """``kata-zun run --pod NAME [--init] IMAGE [COMMAND...]``: add a
    container to a pod that does not run; it starts with the pod.
    """
    unsupported = [opt for opt, value in (
        ('--rm', args.rm), ('--publish', args.publish),
        ('--hostname', args.hostname), ('--network', args.network),
        ('--privileged', args.privileged), ('--user', args.user),
        ('--restart', args.restart != 'no'),
        ('--volume/--mount', args.volume or args.mount),
        ('--health-cmd', args.health_cmd)) if value]
    if unsupported:
        # Never cli.CliError here: the CLI runs as __main__, where that
        # class is another one.
        raise exception.InvalidInput(
            reason='with --pod, %s belong to the pod (pod create) or are '
            'not supported' % ', '.join(unsupported))
    cli._pull(rt, args.image, cli._RUN_PULL[args.pull])
    spec = podspec.ContainerSpec(
        name=args.name, image=args.image,
        command=(shlex.split(args.entrypoint)
                 if args.entrypoint is not None else None),
        args=args.command or None, env=args.env, workdir=args.workdir,
        cpus=args.cpus, memory_mb=args.memory, tty=args.tty,
        stdin=args.interactive)
    pod = rt.add_to_pod(args.pod, spec, init=args.init)
    added = (pod.init_containers if args.init else pod.containers)[-1]
    print(added.id)
    return 0


def load_template(path):
    """:returns: the parsed template of a YAML or JSON file.
    :raises: InvalidInput
    """
    import yaml
    try:
        with open(path, 'rb') as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise exception.InvalidInput(reason='cannot read %s: %s' % (
            path, exc.strerror))
    if len(data) > MAX_TEMPLATE_BYTES:
        raise exception.InvalidInput(reason='%s is larger than %d bytes' % (
            path, MAX_TEMPLATE_BYTES))
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise exception.InvalidInput(reason='%s is not valid YAML: %s' % (
            path, exc))


def template_volumes(template, pod_name):
    """Zun's Cinder volumes as volumes of a standalone pod: a volume of
    ``size`` GiB made for the pod (``<pod>-<volume>``) and removed with
    it; an existing Cinder volume (``volumeID``) needs Zun.
    """
    out = []
    for vol in template.volumes:
        if vol['volume_id'] is not None:
            raise exception.InvalidInput(
                reason='volume %s: an existing Cinder volume (volumeID) '
                'needs Zun; give a size instead' % vol['name'])
        out.append({'name': vol['name'], 'type': 'volume',
                    'source': '%s-%s' % (pod_name, vol['name']),
                    'size': vol['size_gb'] * 1024 ** 3, 'owned': True})
    return out


def cmd_play(rt, args):
    """Create and start the pod of a capsule template; on any failure
    nothing of it is left.
    """
    template = podspec.from_template(load_template(args.file))
    name = args.name or template.name
    if name is None:
        raise exception.InvalidInput(reason='the template has no '
                                     'metadata.name: give --name')
    for spec in template.init_containers + template.containers:
        cli._pull(rt, spec.image, cli._RUN_PULL[args.pull])
    pod = rt.create_pod(
        template.containers, template.init_containers, name=name,
        network=args.network or CONF.kata_network.driver,
        volumes=template_volumes(template, name),
        restart_policy=template.restart_policy, labels=template.labels)
    if args.no_start:
        print(pod.id)
        return 0
    try:
        pod = rt.start_pod(pod.id, wait=True)
    except BaseException:
        rt.remove_pod(pod.id, force=True)
        raise
    print(pod.id)
    if pod.status == podspec.FAILED:
        print('kata-zun: error: pod %s failed: %s' % (
            pod.name, guestdata.printable(pod.error, cli.PRINT_MAX)),
            file=sys.stderr)
        return 1
    return 0


def add_parsers(sub):
    """Add ``pod`` (create, ps, inspect, start, stop, rm) and ``play``."""
    p = sub.add_parser('pod', help='pods: several containers in one VM')
    psub = p.add_subparsers(dest='pod_cmd', metavar='COMMAND')
    psub.required = True

    c = psub.add_parser('create', help='create an empty pod (add '
                        'containers with run --pod)')
    c.add_argument('--name')
    c.add_argument('--hostname')
    c.add_argument('--network', help='bridge or none (default: '
                   '[kata_network] driver)')
    c.add_argument('-p', '--publish', action='append', default=[],
                   metavar='[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]')
    c.add_argument('--restart', default='always',
                   choices=('always', 'on-failure', 'no'),
                   help='restart policy of its containers (default '
                   'always, as Zun\'s capsules)')
    c.add_argument('-v', '--volume', action='append', default=[],
                   metavar='NAME[:SIZE]',
                   help='a named volume its containers may mount '
                   '(made if missing)')
    c.add_argument('--label', action='append', default=[],
                   metavar='KEY=VALUE')
    c.set_defaults(func=cmd_pod_create)

    c = psub.add_parser('ps', help='list pods')
    c.add_argument('-q', '--quiet', action='store_true')
    c.add_argument('--format', choices=('table', 'json'), default='table')
    c.set_defaults(func=cmd_pod_ps)

    c = psub.add_parser('inspect', help='show pods as JSON')
    c.add_argument('pods', nargs='+')
    c.set_defaults(func=cmd_pod_inspect)

    c = psub.add_parser('start', help='start pods')
    c.add_argument('--wait', action='store_true',
                   help='until the init containers are done')
    c.add_argument('pods', nargs='+')
    c.set_defaults(func=cmd_pod_start)

    c = psub.add_parser('stop', help='stop pods')
    c.add_argument('-t', '--time', type=int, default=None)
    c.add_argument('pods', nargs='+')
    c.set_defaults(func=cmd_pod_stop)

    c = psub.add_parser('rm', help='remove pods')
    c.add_argument('-f', '--force', action='store_true')
    c.add_argument('pods', nargs='+')
    c.set_defaults(func=cmd_pod_rm)

    p = sub.add_parser('play', help='create and start the pod of a Zun '
                       'capsule template (kind: capsule)')
    p.add_argument('--name', help='instead of metadata.name')
    p.add_argument('--network')
    p.add_argument('--no-start', action='store_true')
    p.add_argument('--pull', choices=sorted(cli._RUN_PULL),
                   default='missing')
    p.add_argument('file')
    p.set_defaults(func=cmd_play)
