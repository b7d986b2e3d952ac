"""The kata-zun guest agent.

Runs as PID 1 inside the VM (exec'd by the initrd's tiny /init), standard
library only, single-threaded: one ``poll`` loop serves the host link, the
stdio of every container process and child reaping. Heavy modules (ctypes,
termios) are imported lazily: under TCG every import costs milliseconds of
boot time. Processes (the table, stdio, exits) are in
:mod:`kata_zun.agent.guestproc`, starting them in
:mod:`kata_zun.agent.guestlaunch`, shared helpers in
:mod:`kata_zun.agent.guestutil`.

The host talks to us over the virtio-serial port named ``agent.0`` using
:mod:`kata_zun.agent.protocol`. Every request is answered with exactly one
RESPONSE; process exits arrive as EVENT frames after the process's output
has been drained, so the host never sees an exit before the last byte.
"""

import errno
import os
import re
import select
import signal
import sys
import time

from kata_zun.agent import guestdev
from kata_zun.agent import guestlaunch
from kata_zun.agent import guestproc
from kata_zun.agent import guestroot
from kata_zun.agent import guestutil
from kata_zun.agent import protocol

# Shared helpers under their old names: guestroot, guestvolumes and
# the tests reach them here.
EXIT_DRAIN_GRACE = guestproc.EXIT_DRAIN_GRACE
exec_path = guestlaunch.exec_path
Process = guestproc.Process
resolve_user = guestlaunch.resolve_user
_bool = guestutil._bool
_id = guestutil._id
_num = guestutil._num
_str = guestutil._str
_strlist = guestutil._strlist
libc = guestutil.libc
log = guestutil.log
mount = guestutil.mount
OpError = guestutil.OpError
read_file = guestutil.read_file
umount = guestutil.umount
write_file = guestutil.write_file

PORT_NAME = 'agent.0'
RUN_DIR = '/run/kz'
CGROUP_ROOT = '/sys/fs/cgroup'

# Stop reading process output while this much is queued for the host:
# back-pressure reaches the process through its pipe instead of our RAM.
MAX_QUEUED_OUT = 4 * 1024 * 1024

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MNT_DETACH = 2
RB_POWER_OFF = 0x4321FEDC

_SERIAL_RE = re.compile(r'^[A-Za-z0-9_-]{1,20}$')
_HOSTNAME_RE = re.compile(r'^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$')
_FSTYPES = ('erofs', 'ext4')


class Container(object):
    def __init__(self, cid, spec):
        self.id = cid
        self.spec = spec
        self.dir = os.path.join(RUN_DIR, cid)
        self.rootfs = os.path.join(self.dir, 'rootfs')
        self.cgroup = os.path.join(CGROUP_ROOT, 'kz-' + cid)
        self.main = None
        self.init_pid = None
        self.join_fds = None          # (init_pid, ns fds, root, cgroup)
        self.user = None
        self.oom_base = 0


class Agent(guestproc.ProcessOps):

    def __init__(self, port_fd):
        self.chan = protocol.Channel(port_fd)
        self.containers = {}
        self.procs = {}               # handle -> Process
        self.fd_owner = {}            # fd -> Process (outputs and stdin)
        self.pid_proc = {}            # pid -> Process
        self.next_handle = 1
        self.hello = False
        self.restored = False         # from a VM template (guestidentity)
        self.after_reply = []
        self.port_idle_until = 0.0
        self.poweroff = False
        self.sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        signal.set_wakeup_fd(sig_w)
        # We speak first: guest writes wait until the host side connects,
        # while host writes to a port the guest has not opened are lost.
        self.chan.send(protocol.encode_json(protocol.HELLO, {
            'version': protocol.VERSION, 'agent': 'kata-zun',
            'pid': os.getpid()}))
        self.ops = {
            'archive_get': self.op_archive_get,
            'archive_put': self.op_archive_put,
            'layer_diff': self.op_layer_diff,
            'ping': self.op_ping,
            'create_sandbox': self.op_create_sandbox,
            'create_container': self.op_create_container,
            'start': self.op_start,
            'exec': self.op_exec,
            'signal': self.op_signal,
            'resize': self.op_resize,
            'stats': self.op_stats,
            'ps': self.op_ps,
            'update': self.op_update,
            'add_interface': self.op_add_interface,
            'remove_interface': self.op_remove_interface,
            'shutdown': self.op_shutdown,
        }

    # ------------------------------------------------------------- the loop
    def run(self):
        poller = select.poll()
        registered = {}
        while not (self.poweroff and not self.chan.pending_out):
            want = {self.sig_r: select.POLLIN}
            now = time.monotonic()
            port_ev = select.POLLOUT if self.chan.pending_out else 0
            if now >= self.port_idle_until:
                port_ev |= select.POLLIN
            if port_ev:
                want[self.chan.fd] = port_ev
            reading = self.chan.pending_out < MAX_QUEUED_OUT
            for fd, proc in self.fd_owner.items():
                ev = 0
                if fd in proc.out_fds and reading:
                    ev |= select.POLLIN
                if fd == proc.stdin_fd and (proc.stdin_buf or
                                            proc.stdin_eof):
                    ev |= select.POLLOUT
                if ev:
                    want[fd] = ev
            for fd in list(registered):
                if fd not in want:
                    poller.unregister(fd)
                    del registered[fd]
            for fd, ev in want.items():
                if registered.get(fd) != ev:
                    poller.register(fd, ev)
                    registered[fd] = ev
            timeout = self._timeout(now)
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self.sig_r:
                    self._drain_signals()
                elif fd == self.chan.fd:
                    self._port_event(ev)
                elif fd in self.fd_owner:
                    self._proc_event(fd, ev)
            self._report_exits()
        self._power_off()

    def _timeout(self, now):
        deadlines = [self.port_idle_until] if self.port_idle_until else []
        deadlines += [p.reaped_at + EXIT_DRAIN_GRACE
                      for p in self.procs.values()
                      if p.reaped_at and not p.reported]
        future = [d - now for d in deadlines if d > now]
        # Nothing due: sleep until an event (signals come through
        # sig_r); an idle agent that woke each second cost its host CPU.
        return int(min(future) * 1000) + 1 if future else -1

    def _port_event(self, ev):
        if ev & select.POLLOUT:
            try:
                self.chan.flush()
            except OSError:
                self._host_gone()
        if ev & (select.POLLIN | select.POLLHUP):
            try:
                frames, eof = self.chan.read()
            except protocol.ProtocolError as exc:
                log('bad frame from host: %s' % exc)
                self.chan.decoder = protocol.Decoder()
                return
            for frame in frames:
                self._handle_frame(frame)
            if eof or (ev & select.POLLHUP and not frames):
                self._host_gone()

    def _host_gone(self):
        # No host connected to the port: reads return EOF straight away.
        # Poll again a little later instead of spinning.
        self.port_idle_until = time.monotonic() + 0.05

    # -------------------------------------------------------------- frames
    def _handle_frame(self, frame):
        if frame.type in protocol.STREAM_TYPES:
            if frame.type != protocol.STDIN:
                return
            try:
                handle, data = frame.stream()
            except protocol.ProtocolError:
                return
            proc = self.procs.get(handle)
            if proc is None or proc.stdin_fd is None:
                return
            if data:
                proc.stdin_buf += data
            else:
                proc.stdin_eof = True
            self._write_stdin(proc)
            return
        try:
            msg = frame.json()
        except protocol.ProtocolError as exc:
            log('malformed control frame: %s' % exc)
            return
        if frame.type == protocol.HELLO:
            if self.hello:
                # A HELLO after the handshake: a new host side. That is
                # the shim of a VM restored from a template (the
                # template's builder had the first): greet it too.
                self.restored = True
                self.chan.send(protocol.encode_json(protocol.HELLO, {
                    'version': protocol.VERSION, 'agent': 'kata-zun',
                    'pid': os.getpid()}))
            # The host answers our HELLO with the version it speaks.
            self.hello = msg.get('version') == protocol.VERSION
            if not self.hello:
                log('host speaks protocol %r, we speak %d' %
                    (msg.get('version'), protocol.VERSION))
            return
        if frame.type != protocol.REQUEST:
            return
        rid = msg.get('id')
        op = msg.get('op')
        args = msg.get('args') or {}
        try:
            if not self.hello:
                raise OpError('handshake', 'HELLO first')
            if op not in self.ops or not isinstance(args, dict):
                raise OpError('unknown', 'unknown operation %r' % (op,))
            result = self.ops[op](args)
            reply = {'id': rid, 'result': result}
        except OpError as exc:
            reply = {'id': rid, 'error': {'code': exc.code,
                                          'message': exc.message}}
        except OSError as exc:
            reply = {'id': rid, 'error': {'code': 'os', 'message': str(exc)}}
        except Exception as exc:      # never let one request kill PID 1
            reply = {'id': rid, 'error': {'code': 'internal',
                                          'message': repr(exc)}}
        self.chan.send(protocol.encode_json(protocol.RESPONSE, reply),
                       *self.after_reply)
        self.after_reply = []

    # ----------------------------------------------------------- operations
    def op_ping(self, args):
        if args.get('warm') is True:
            # A VM template's last request before it is saved.
            from kata_zun.agent import guestidentity
            return {'time': time.time(), 'warm': guestidentity.warm_up()}
        return {'time': time.time()}

    def op_create_sandbox(self, args):
        entropy = _str(args, 'entropy', maxlen=8192)
        hostname = _str(args, 'hostname', maxlen=63)
        if hostname and not _HOSTNAME_RE.match(hostname):
            raise OpError('invalid', 'bad hostname')
        import base64
        import binascii
        try:
            entropy = base64.b64decode(entropy or '', validate=True)
        except (binascii.Error, ValueError):
            raise OpError('invalid', 'bad entropy')
        # A fresh identity (RNG, clock, hostname, disks of a restored
        # VM) before any container code runs.
        from kata_zun.agent import guestidentity
        guestidentity.renew(_num(args, 'time'), entropy, hostname,
                            self.restored)
        # --- network (issue 5): interfaces, routes; lo up even without NICs
        network = args.get('network')
        from kata_zun.agent import guestnet
        if network is None:
            # No network (--network none): still a loopback, as Docker
            # gives one (a clone's template brought it up already).
            guestnet.loopback_up()
            return {}
        try:
            return {'network': guestnet.configure(network)}
        except ValueError as exc:
            raise OpError('invalid', 'network: %s' % exc)
        # --- end network

    def op_add_interface(self, args):
        """Configure a NIC the host has just hotplugged (waits a bounded
        time for it to appear).
        """
        from kata_zun.agent import guestnet
        try:
            return guestnet.add_interface(args.get('interface'))
        except ValueError as exc:
            raise OpError('invalid', 'network: %s' % exc)

    def op_remove_interface(self, args):
        """Unconfigure the NIC with ``mac`` and power off its hotplug slot
        so the host's unplug completes at once.
        """
        from kata_zun.agent import guestnet
        try:
            return guestnet.remove_interface(_str(args, 'mac', maxlen=17,
                                                  required=True))
        except ValueError as exc:
            raise OpError('invalid', 'network: %s' % exc)

    def op_create_container(self, args):
        cid = _id(args)
        if cid in self.containers:
            raise OpError('exists', 'container %s exists' % cid)
        spec = {
            'argv': _strlist(args, 'argv', required=True),
            'env': _strlist(args, 'env'),
            'workdir': _str(args, 'workdir', '/') or '/',
            'user': _str(args, 'user', '', maxlen=256),
            'tty': bool(args.get('tty')),
            'stdin': bool(args.get('stdin')),
            'hostname': _str(args, 'hostname', '', maxlen=63),
            'dns': _strlist(args, 'dns', maxitems=8),
            'dns_search': _strlist(args, 'dns_search', maxitems=8),
            'hosts': _strlist(args, 'hosts', maxitems=64),
            'privileged': _bool(args, 'privileged'),
        }
        if spec['hostname'] and not _HOSTNAME_RE.match(spec['hostname']):
            raise OpError('invalid', 'bad hostname')
        image_serial = _str(args, 'image_serial', required=True)
        layer_serial = _str(args, 'layer_serial', required=True)
        image_fs = _str(args, 'image_fs', 'erofs')
        if (not _SERIAL_RE.match(image_serial) or
                not _SERIAL_RE.match(layer_serial) or
                image_fs not in _FSTYPES):
            raise OpError('invalid', 'bad disk description')
        c = Container(cid, spec)
        os.makedirs(c.dir, exist_ok=True)
        from kata_zun.agent import guestidentity
        guestidentity.new_container_ids(c.dir)
        self._mount_rootfs(c, find_disk(image_serial), image_fs,
                           find_disk(layer_serial))
        # --- volumes (issue 11): block and shared volumes at their targets
        from kata_zun.agent import guestvolumes
        try:
            # Shared files' exports are staged next to the root, never
            # in it: the container never sees them.
            guestvolumes.mount_all(c.rootfs, args.get('volumes'), find_disk,
                                   self._volume_mount(),
                                   os.path.join(c.dir, 'shared'))
        except guestvolumes.VolumeError as exc:
            raise OpError('volume', str(exc))
        # --- end volumes
        c.user = resolve_user(c.rootfs, spec['user'])
        self._make_cgroup(c, args)
        if not spec['privileged']:
            # Any node may be made (CAP_MKNOD), only /dev's may be opened.
            guestdev.restrict(libc(), c.cgroup)
        self._write_etc(c)
        c.main = self._new_proc(c, spec['tty'], spec['stdin'])
        self.containers[cid] = c
        return {'proc': c.main.handle}

    def _volume_mount(self):
        # Several containers (a pod) may mount one block volume.
        if getattr(self, 'shared_mounts', None) is None:
            from kata_zun.agent import guestshare
            self.shared_mounts = guestshare.SharedMounts(mount)
        return self.shared_mounts

    def _mount_rootfs(self, c, image_dev, image_fs, layer_dev):
        lower = os.path.join(c.dir, 'lower')
        rw = os.path.join(c.dir, 'rw')
        for d in (lower, rw, c.rootfs):
            os.makedirs(d, exist_ok=True)
        mount(image_dev, lower, image_fs, MS_RDONLY)
        mount(layer_dev, rw, 'ext4', MS_NODEV)
        for d in ('upper', 'work'):
            os.makedirs(os.path.join(rw, d), exist_ok=True)
        mount('overlay', c.rootfs, 'overlay', 0,
              'lowerdir=%s,upperdir=%s/upper,workdir=%s/work' %
              (lower, rw, rw))

    def _make_cgroup(self, c, args):
        os.makedirs(c.cgroup, exist_ok=True)
        self._apply_limits(c, args)

    def _apply_limits(self, c, args):
        memory = _num(args, 'memory_bytes', minimum=0)
        cpus = _num(args, 'cpus', minimum=0)
        if memory:
            memory = max(int(memory), 4 * 1024 * 1024)
            write_file(c.cgroup + '/memory.max', str(memory))
            try:
                write_file(c.cgroup + '/memory.swap.max', '0')
            except OSError:
                pass                   # no swap accounting in this kernel
        if cpus:
            period = 100000
            write_file(c.cgroup + '/cpu.max',
                       '%d %d' % (max(1000, int(cpus * period)), period))
        pids = _num(args, 'pids_limit', minimum=0)
        if pids is not None:
            # 0 is "no limit", like Docker's --pids-limit 0. The agent
            # itself is outside this cgroup: a fork bomb in the container
            # stops here and never starves PID 1.
            write_file(c.cgroup + '/pids.max',
                       str(int(pids)) if pids else 'max')

    def _write_etc(self, c):
        spec = c.spec
        name = spec['hostname'] or c.id[:12]
        write_file(os.path.join(c.dir, 'hostname'), name + '\n')
        hosts = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost',
                 '127.0.1.1\t%s' % name] + spec['hosts']
        write_file(os.path.join(c.dir, 'hosts'), '\n'.join(hosts) + '\n')
        resolv = ['nameserver %s' % s for s in spec['dns']]
        if spec['dns_search']:
            resolv.append('search %s' % ' '.join(spec['dns_search']))
        write_file(os.path.join(c.dir, 'resolv.conf'),
                   '\n'.join(resolv) + '\n')

    def _container(self, args):
        c = self.containers.get(_id(args))
        if c is None:
            raise OpError('notfound', 'no such container')
        return c

    def op_start(self, args):
        c = self._container(args)
        if c.init_pid is not None and not c.main.reported:
            raise OpError('state', 'container already running')
        spec = c.spec
        if c.main.reported:
            # A restart (restart policy): a fresh main process in fresh
            # namespaces, on the same root filesystem.
            c.main = self._new_proc(c, spec['tty'], spec['stdin'])
        c.oom_base = self._oom_count(c)
        env = self._env(spec['env'], c.user)
        error = self._spawn(c, c.main, spec['argv'], env, spec['workdir'],
                            c.user, join=False)
        c.init_pid = c.main.pid
        return {'pid': c.main.pid, 'error': error, 'proc': c.main.handle}

    # -------------------------------------------------------- archives
    def op_archive_get(self, args):
        """Stream a tar of ``path`` in the container.

        The tar is the output of a helper process; its stat is in the
        reply.
        """
        c = self._container(args)
        inner = secure_resolve(c.rootfs, _str(args, 'path', required=True))
        try:
            st = os.lstat(c.rootfs + inner)
        except FileNotFoundError:
            raise OpError('notfound', 'no such file or directory: %s' %
                          args['path'])
        stat_info = {'name': os.path.basename(inner) or '/',
                     'size': st.st_size, 'mode': st.st_mode,
                     'mtime': st.st_mtime, 'linkTarget': ''}
        if os.path.islink(c.rootfs + inner):
            stat_info['linkTarget'] = os.readlink(c.rootfs + inner)
        proc = self._new_proc(c, False, False)
        self._spawn_helper(c, proc, _tar_out, inner)
        return {'proc': proc.handle, 'stat': stat_info}

    def op_archive_put(self, args):
        """Extract a tar under ``path`` (a directory in the container).

        The tar is fed on a helper process's stdin.
        """
        c = self._container(args)
        inner = secure_resolve(c.rootfs, _str(args, 'path', required=True),
                               follow_final=True)
        if not os.path.isdir(c.rootfs + inner):
            raise OpError('notfound', 'not a directory in the container: '
                          '%s' % args['path'])
        proc = self._new_proc(c, False, True)
        self._spawn_helper(c, proc, _tar_in, inner)
        return {'proc': proc.handle}

    def op_layer_diff(self, args):
        """Stream the writable layer as an OCI layer tar (see
        kata_zun.agent.guestlayer); the container stays frozen until the
        helper exits.
        """
        from kata_zun.agent import guestlayer
        c = self._container(args)
        proc = self._new_proc(c, False, False)
        thaw = guestlayer.freeze(c.cgroup)
        try:
            self._spawn_helper(
                guestlayer.Upper(os.path.join(c.dir, 'rw', 'upper')), proc,
                guestlayer.layer_out, '/',
                # trusted.overlay.* xattrs (whiteouts, opaque dirs) are
                # readable with CAP_SYS_ADMIN only.
                extra_caps=('SYS_ADMIN',))
        except BaseException:
            thaw()
            raise
        proc.on_exit = thaw
        return {'proc': proc.handle}

    def op_update(self, args):
        c = self._container(args)
        self._apply_limits(c, args)
        return {}

    def op_stats(self, args):
        c = self._container(args)
        cg = c.cgroup

        def value(name, default=0):
            try:
                text = read_file(cg + '/' + name).decode().strip()
            except OSError:
                return default
            return text

        cpu = 0
        for line in value('cpu.stat', '').splitlines():
            key, _, val = line.partition(' ')
            if key == 'usage_usec':
                cpu = int(val)
        rbytes = wbytes = 0
        for line in value('io.stat', '').splitlines():
            for field in line.split()[1:]:
                key, _, val = field.partition('=')
                if key == 'rbytes':
                    rbytes += int(val)
                elif key == 'wbytes':
                    wbytes += int(val)
        rx = tx = 0
        try:
            for line in read_file('/proc/net/dev').decode().splitlines()[2:]:
                name, _, rest = line.partition(':')
                if name.strip() != 'lo':
                    fields = rest.split()
                    rx += int(fields[0])
                    tx += int(fields[8])
        except (OSError, ValueError, IndexError):
            pass
        mem_limit = value('memory.max', 'max')
        total = 0
        for line in read_file('/proc/meminfo').decode().splitlines():
            if line.startswith('MemTotal:'):
                total = int(line.split()[1]) * 1024
        return {
            'cpu_usage_usec': cpu,
            'memory_usage': int(value('memory.current', 0)),
            'memory_limit': total if mem_limit == 'max'
            else min(int(mem_limit), total),
            'pids': int(value('pids.current', 0)),
            'blkio_read': rbytes, 'blkio_write': wbytes,
            'net_rx': rx, 'net_tx': tx,
            'online_cpus': os.cpu_count(), 'time': time.time(),
        }

    def op_ps(self, args):
        c = self._container(args)
        try:
            pids = [int(p) for p in
                    read_file(c.cgroup + '/cgroup.procs').split()]
        except OSError:
            pids = []
        ticks = os.sysconf('SC_CLK_TCK')
        boot = time.time() - float(read_file('/proc/uptime').split()[0])
        out = []
        for pid in sorted(pids):
            try:
                stat = read_file('/proc/%d/stat' % pid).decode()
                cmd = read_file('/proc/%d/cmdline' % pid, 65536)
                status = read_file('/proc/%d/status' % pid).decode()
            except OSError:
                continue
            comm = stat[stat.index('(') + 1:stat.rindex(')')]
            fields = stat[stat.rindex(')') + 2:].split()
            uid = 0
            for line in status.splitlines():
                if line.startswith('Uid:'):
                    uid = int(line.split()[1])
            args_ = [a.decode('utf-8', 'replace')
                     for a in cmd.split(b'\0') if a]
            out.append({
                'pid': pid, 'ppid': int(fields[1]), 'state': fields[0],
                'uid': uid,
                'cpu_time': (int(fields[11]) + int(fields[12])) / ticks,
                'start_time': boot + int(fields[19]) / ticks,
                'rss_kb': int(fields[21]) * 4,
                'cmd': ' '.join(args_) if args_ else '[%s]' % comm,
            })
        return {'processes': out}

    def op_shutdown(self, args):
        for c in self.containers.values():
            self._kill_all(c)
        os.sync()
        for c in self.containers.values():
            for d in (c.rootfs, os.path.join(c.dir, 'rw'),
                      os.path.join(c.dir, 'lower')):
                try:
                    umount(d, MNT_DETACH)
                except OSError:
                    pass
        os.sync()
        self.poweroff = True
        return {}

    def _kill_all(self, c):
        try:
            write_file(c.cgroup + '/cgroup.kill', '1')
            return
        except OSError:
            pass
        try:
            for pid in read_file(c.cgroup + '/cgroup.procs').split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        except OSError:
            pass

    def _oom_count(self, c):
        try:
            for line in read_file(c.cgroup + '/memory.events').splitlines():
                key, _, val = line.decode().partition(' ')
                if key == 'oom_kill':
                    return int(val)
        except (OSError, ValueError):
            pass
        return 0

    def _oom_killed(self, c):
        # The counter is cumulative: compare with its value at start.
        return self._oom_count(c) > c.oom_base

    def _power_off(self):
        os.sync()
        libc().reboot(RB_POWER_OFF)
        while True:                    # PID 1 must never exit
            time.sleep(60)


def secure_resolve(root, path, follow_final=False):
    """:func:`kata_zun.agent.guestroot.resolve` (creating nothing), its
    refusals as the agent's errors.

    :returns: the resolved path relative to ``root`` (starting with /).
    :raises: OpError
    """
    try:
        return guestroot.resolve(root, path, follow_final=follow_final)
    except guestroot.ResolveError as exc:
        raise OpError('invalid', str(exc))


def _tar_out(inner):
    """Runs chrooted: write a tar of ``inner`` to stdout."""
    import tarfile
    parent, name = os.path.split(inner)
    os.chdir(parent or '/')
    with os.fdopen(1, 'wb', closefd=False) as out:
        with tarfile.open(fileobj=out, mode='w|') as tar:
            tar.add(name or '.', arcname=name or '.')


def _tar_in(inner):
    """Runs chrooted: extract the tar read from stdin into ``inner``."""
    import tarfile
    os.chdir(inner)
    with os.fdopen(0, 'rb', closefd=False) as src:
        with tarfile.open(fileobj=src, mode='r|') as tar:
            for member in tar:
                parts = member.name.split('/')
                if member.name.startswith('/') or '..' in parts:
                    raise ValueError('refusing archive member %r' %
                                     member.name)
                if member.isdev():
                    continue
                tar.extract(member, path='.', set_attrs=True)


def find_port(name=PORT_NAME, timeout=10.0):
    """:returns: the /dev path of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for port in os.listdir('/sys/class/virtio-ports'):
                try:
                    pname = read_file('/sys/class/virtio-ports/%s/name' %
                                      port).decode().strip()
                except OSError:
                    continue
                if pname == name:
                    return '/dev/' + port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError('virtio port %s not found' % name)
        time.sleep(0.01)


def find_disk(serial, timeout=5.0):
    """:returns: the /dev path of the virtio-blk disk with ``serial``."""
    deadline = time.monotonic() + timeout
    while True:
        for dev in os.listdir('/sys/block'):
            try:
                if read_file('/sys/block/%s/serial' % dev).decode().strip() \
                        == serial:
                    return '/dev/' + dev
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise OpError('disk', 'no disk with serial %s' % serial)
        time.sleep(0.01)


def setup_guest():
    """Mounts the agent needs beyond what /init did."""
    for path, fstype, flags, data in (
            ('/dev/pts', 'devpts', MS_NOSUID | MS_NOEXEC,
             'ptmxmode=0666,mode=0620'),
            (CGROUP_ROOT, 'cgroup2', MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
            ('/run', 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=755'),
            ('/tmp', 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=1777')):
        os.makedirs(path, exist_ok=True)
        try:
            mount(fstype, path, fstype, flags, data)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log('mount %s: %s' % (path, exc))
    try:
        os.unlink('/dev/ptmx')
    except OSError:
        pass
    os.symlink('pts/ptmx', '/dev/ptmx')
    controllers = read_file(CGROUP_ROOT + '/cgroup.controllers').split()
    for ctl in controllers:
        try:
            write_file(CGROUP_ROOT + '/cgroup.subtree_control',
                       '+' + ctl.decode())
        except OSError:
            pass
    os.makedirs(RUN_DIR, exist_ok=True)


def main():
    try:
        setup_guest()
        fd = os.open(find_port(), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        log('ready at %s s of uptime' %
            read_file('/proc/uptime').split()[0].decode())
        Agent(fd).run()
    except BaseException as exc:       # PID 1: report and power off
        log('fatal: %r' % (exc,))
        try:
            os.sync()
            libc().reboot(RB_POWER_OFF)
        finally:
            while True:
                time.sleep(60)


if __name__ == '__main__':
    sys.exit(main())
