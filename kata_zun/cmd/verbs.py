"""Docker verbs of ``kata-zun`` beyond run/ps/logs: create, restart,
wait, rename, port, tag, login, logout, version and info.

Registered into ``kata-zun`` by :func:`add_parsers`.  Each prints what
Docker prints and exits as Docker does (errors: ``kata-zun: error: ...``
on stderr, exit 1; ``create``: 125).  Never imports zun.
"""

import os
import platform
import socket
import subprocess
import sys

from kata_zun.cmd import cli
from kata_zun import conf
from kata_zun import exception
from kata_zun.shim import guestdata

CONF = conf.CONF
# Loopback registries are plain HTTP without configuration (see
# kata_zun.image.registry), shown by ``info`` like Docker's default.
LOOPBACK_REGISTRIES = ('127.0.0.0/8', '::1', 'localhost')


def _error(message):
    print('kata-zun: error: %s' % guestdata.printable(message,
                                                      cli.PRINT_MAX),
          file=sys.stderr)


# ---------------------------------------------------------- containers

def cmd_create(rt, args):
    """``docker create``: the container of ``run``, not started."""
    print(cli.create_container(rt, args).id)
    return 0


def _each(refs, action):
    """Run ``action(ref)`` for every reference like Docker's multi-
    container verbs: an error is printed and the others go on.

    :returns: 0, or 1 when any failed.
    """
    code = 0
    for ref in refs:
        try:
            action(ref)
        except exception.KataZunException as exc:
            _error(exc)
            code = 1
    return code


def cmd_restart(rt, args):
    def restart(ref):
        _container, client = rt.restart(ref, timeout=args.time)
        client.close()
        print(ref)
    return _each(args.containers, restart)


def cmd_wait(rt, args):
    """``docker wait``: prints each exit code; exits 0 (1 when a
    container could not be waited for).
    """
    def wait(ref):
        code = rt.wait(ref)
        print(code)
        sys.stdout.flush()
    return _each(args.containers, wait)


def cmd_rename(rt, args):
    rt.rename(args.container, args.new_name)
    return 0


def parse_port_filter(value):
    """``80``, ``80/tcp`` or ``53/udp`` as (port, proto).

    :raises: CliError
    """
    port, _, proto = value.partition('/')
    proto = (proto or 'tcp').lower()
    if not port.isdigit() or not 1 <= int(port) <= 65535 or \
            proto not in ('tcp', 'udp'):
        raise cli.CliError('invalid port %r: want PORT[/PROTO]' % value)
    return int(port), proto


def published_ports(container):
    """What a container publishes on the host, as Docker's
    ``NetworkSettings.Ports``: only while it runs.

    :returns: sorted list of (container port, proto, host ip, host port).
    """
    from kata_zun.runtime import record
    if container.status not in (record.RUNNING, record.PAUSED):
        return []
    ports = container.to_dict()['NetworkSettings'].get('Ports') or {}
    out = []
    for key, bindings in ports.items():
        port, _, proto = key.partition('/')
        for b in bindings or ():
            out.append((int(port), proto, b['HostIp'], b['HostPort']))
    return sorted(out)


def cmd_port(rt, args):
    """``docker port``: ``80/tcp -> 0.0.0.0:8080`` lines, or the host
    addresses of one container port.
    """
    c = rt.get(args.container)
    ports = published_ports(c)
    if args.private_port is None:
        for port, proto, host_ip, host_port in ports:
            print('%d/%s -> %s:%s' % (port, proto, host_ip, host_port))
        return 0
    want = parse_port_filter(args.private_port)
    found = [p for p in ports if p[:2] == want]
    if not found:
        raise cli.CliError('No public port \'%d/%s\' published for %s'
                           % (want + (c.name,)))
    for _port, _proto, host_ip, host_port in found:
        print('%s:%s' % (host_ip, host_port))
    return 0


# -------------------------------------------------------------- images

def cmd_tag(rt, args):
    """``docker tag SOURCE TARGET``: prints nothing."""
    rt.images.tag(args.source, args.target)
    return 0


def _read_password(args):
    if args.password is not None:
        if args.password_stdin:
            raise cli.CliError('--password and --password-stdin are '
                               'mutually exclusive')
        print('WARNING! Using --password via the CLI is insecure. Use '
              '--password-stdin.', file=sys.stderr)
        return args.password
    if args.password_stdin:
        return sys.stdin.readline().rstrip('\r\n')
    if not os.isatty(0):
        raise cli.CliError('Cannot perform an interactive login from a '
                           'non TTY device: use --password-stdin')
    import getpass
    return getpass.getpass('Password: ')


def cmd_login(rt, args):
    """``docker login``: check the credentials with the registry, then
    keep them (0600) for later pulls.
    """
    from kata_zun.image import logins
    from kata_zun.image import registry
    server = logins.server_name(args.server)
    username = args.username
    if not username:
        if args.password_stdin or not os.isatty(0):
            raise cli.CliError('Must provide --username with '
                               '--password-stdin' if args.password_stdin
                               else 'Cannot perform an interactive login '
                               'from a non TTY device: use --username and '
                               '--password-stdin')
        username = input('Username: ').strip()
    password = _read_password(args)
    if not username or not password:
        raise cli.CliError('Error: a username and a password are needed')
    client = registry.Client(server, None, {'username': username,
                                            'password': password})
    client.login()
    logins.save(rt.images, server, username, password)
    print('Login Succeeded')
    return 0


def cmd_logout(rt, args):
    from kata_zun.image import logins
    server = logins.server_name(args.server)
    if logins.remove(rt.images, server):
        print('Removing login credentials for %s' % server)
    else:
        print('Not logged in to %s' % server)
    return 0


# --------------------------------------------------------------- system

def _version():
    from kata_zun import version
    return version.version_info.version_string()


def _qemu_version():
    try:
        out = subprocess.run([CONF.kata_hypervisor.qemu_path, '--version'],
                             capture_output=True, timeout=10, check=True,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return 'unavailable (%s)' % exc
    first = out.decode('utf-8', 'replace').splitlines()[:1]
    return first[0].strip() if first else 'unknown'


def _guest_version():
    from kata_zun.guest import builder
    try:
        return builder.find().version
    except exception.KataZunException as exc:
        return 'not built (%s)' % exc


def cmd_version(rt, args):
    """``docker version``: this CLI, and what runs the containers."""
    from kata_zun.agent import protocol
    rows = [
        ('Client: kata-zun', None),
        ('Version', _version()),
        ('Python version', platform.python_version()),
        ('OS/Arch', '%s/%s' % (sys.platform, platform.machine())),
        ('', None),
        ('Runtime: kata-zun (one QEMU micro-VM per container)', None),
        ('Agent protocol', str(protocol.VERSION)),
        ('QEMU', _qemu_version()),
        ('Guest assets', _guest_version()),
    ]
    for key, value in rows:
        print(key if value is None else ' %s: %s' % (key, value))
    return 0


def _os_name():
    try:
        with open('/etc/os-release') as f:
            for line in f:
                if line.startswith('PRETTY_NAME='):
                    return line.split('=', 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _memory():
    try:
        return '%.2fGiB' % (os.sysconf('SC_PAGE_SIZE') *
                            os.sysconf('SC_PHYS_PAGES') / 2 ** 30)
    except (ValueError, OSError):
        return 'unknown'


def container_counts(containers):
    """:returns: dict of Docker's info counts: Containers, Running,
    Paused, Stopped (anything else: created, exited, unknown).
    """
    counts = {'Containers': 0, 'Running': 0, 'Paused': 0, 'Stopped': 0}
    for c in containers:
        counts['Containers'] += 1
        status = c.status
        key = ('Running' if status in ('running', 'restarting') else
               'Paused' if status == 'paused' else 'Stopped')
        counts[key] += 1
    return counts


def cmd_info(rt, args):
    """``docker info``: counts, versions and where things are."""
    counts = container_counts(rt.list())
    images = rt.images.list()
    opts = CONF.kata_image
    print('Containers: %d' % counts['Containers'])
    for key in ('Running', 'Paused', 'Stopped'):
        print(' %s: %d' % (key, counts[key]))
    print('Images: %d' % len(images))
    rows = [
        ('Server Version', _version()),
        ('Storage Driver', '%s block image per image, ext4 writable layer '
         'per container' % opts.block_fs),
        ('Runtimes', 'kata'),
        ('Default Runtime', 'kata'),
        ('Hypervisor', '%s (machine %s, accelerator %s)' % (
            CONF.kata_hypervisor.qemu_path, CONF.kata_hypervisor.machine_type,
            CONF.kata_hypervisor.accelerator)),
        ('Guest Assets', _guest_version()),
        ('Kernel Version', platform.release()),
        ('Operating System', _os_name()),
        ('OSType', 'linux'),
        ('Architecture', platform.machine()),
        ('CPUs', str(os.cpu_count())),
        ('Total Memory', _memory()),
        ('Name', socket.gethostname()),
        ('Root Dir', CONF.kata.state_path),
        ('Default Network', CONF.kata_network.driver),
        ('Registry', opts.default_registry),
    ]
    for key, value in rows:
        print('%s: %s' % (key, value))
    print('Insecure Registries:')
    for entry in list(opts.insecure_registries) + list(LOOPBACK_REGISTRIES):
        print(' %s' % entry)
    return 0


# --------------------------------------------------------------- parser

def add_parsers(sub):
    """Add create, restart, wait, rename, port, tag, login, logout,
    version and info.
    """
    p = sub.add_parser('create', help='create a container (not started; '
                       'see start)')
    cli.add_create_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser('restart', help='restart containers')
    p.add_argument('-t', '--time', type=int, default=None,
                   help='seconds to wait for a stop before SIGKILL')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser('wait', help='wait for containers to stop, print '
                       'their exit codes')
    p.add_argument('containers', nargs='+')
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser('rename', help='rename a container')
    p.add_argument('container')
    p.add_argument('new_name', metavar='NEW_NAME')
    p.set_defaults(func=cmd_rename)

    p = sub.add_parser('port', help='published ports of a container')
    p.add_argument('container')
    p.add_argument('private_port', nargs='?',
                   metavar='PRIVATE_PORT[/PROTO]')
    p.set_defaults(func=cmd_port)

    p = sub.add_parser('tag', help='name an image (TARGET refers to '
                       'SOURCE)')
    p.add_argument('source', metavar='SOURCE_IMAGE[:TAG]')
    p.add_argument('target', metavar='TARGET_IMAGE[:TAG]')
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser('login', help='log in to a registry (the '
                       'credentials are kept, 0600, for later pulls)')
    p.add_argument('-u', '--username')
    p.add_argument('-p', '--password', help='insecure: use '
                   '--password-stdin')
    p.add_argument('--password-stdin', action='store_true',
                   help='read the password from the first line of stdin')
    p.add_argument('server', nargs='?', metavar='SERVER',
                   help='registry host[:port] (default: [kata_image] '
                   'default_registry)')
    p.set_defaults(func=cmd_login)

    p = sub.add_parser('logout', help='forget the credentials of a '
                       'registry')
    p.add_argument('server', nargs='?', metavar='SERVER')
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser('version', help='show version information')
    p.set_defaults(func=cmd_version)

    p = sub.add_parser('info', help='show system-wide information')
    p.set_defaults(func=cmd_info)
