"""The Zun container driver: zun-compute runs each container in a VM.

Loaded by real zun-compute through stevedore (``zun.container.driver``
entry point ``kata``, ``[DEFAULT] container_driver = kata``). This is the
only module that imports zun. It translates Zun's objects and shapes to
:class:`kata_zun.runtime.manager.Runtime` calls and back; everything that
runs a VM lives in the per-sandbox shims, which outlive zun-compute.

zun-compute is eventlet-patched: socket, select, subprocess and time are
green there, so shim calls never block the hub; CPU- or disk-heavy work
(unpacking an image) goes through ``eventlet.tpool``.
"""

import collections
import copy
import os
import platform
import shlex
import signal as signal_mod
import time
import urllib.parse

import eventlet
from eventlet import patcher
from eventlet import tpool
import os_resource_classes as orc
from oslo_log import log as logging
from oslo_utils import units
from zun.common import consts
from zun.common import exception as zun_exc
from zun.container import driver as zun_driver
from zun import objects

from kata_zun import conf
from kata_zun.console import server as console_server
from kata_zun.console import sessions as console_sessions
from kata_zun.driver import capsule as zun_capsule
from kata_zun.driver import common
from kata_zun.driver.common import runtime_id
from kata_zun.driver.common import wrap as _wrap
from kata_zun.driver import heal as zun_heal
from kata_zun.driver import images as zun_images
from kata_zun.driver import network as zun_network
from kata_zun.driver import orphans as zun_orphans
from kata_zun.driver import status as zun_status
from kata_zun.driver import steadyclock
from kata_zun.driver import volumes as zun_volumes
from kata_zun import exception
from kata_zun.runtime import manager
from kata_zun.runtime import record
from kata_zun.runtime import validate
from kata_zun.shim import guestdata
from kata_zun.shim import logs

CONF = conf.CONF
LOG = logging.getLogger(__name__)

RUNTIME_NAME = 'kata'
#: Non-interactive execs kept between execute_create and execute_run.
EXECS_MAX = 256


def _healthcheck(container):
    """Zun's healthcheck (``test`` as a shell command, seconds), as the
    runtime takes it; None lets the image's health check apply.
    """
    hc = container.healthcheck
    if not hc or not hc.get('test'):
        return None
    return {'test': hc['test'], 'interval': hc.get('interval'),
            'timeout': hc.get('timeout'), 'retries': hc.get('retries')}


def _cpuset(container):
    """The host CPUs and NUMA nodes zun-compute claimed for a container
    with ``cpu_policy=dedicated`` (its resource claim fills
    ``container.cpuset``), as the runtime takes them.

    :returns: (CPU ids, node ids) or (None, None) for a shared policy.
    :raises: kata_zun.exception.InvalidInput for a dedicated container
        without a claim: it would run unpinned.
    """
    if getattr(container, 'cpu_policy', None) != 'dedicated':
        return None, None
    claim = getattr(container, 'cpuset', None)
    cpus = getattr(claim, 'cpuset_cpus', None) if claim else None
    if not cpus:
        raise exception.InvalidInput(
            reason='cpu_policy dedicated without claimed host CPUs')
    return (sorted(cpus),
            sorted(getattr(claim, 'cpuset_mems', None) or ()) or None)


def _disk_mb(container):
    """:returns: the writable layer size Zun asks for, in MiB, or None
        (the runtime's default) for an object without a disk.
    """
    disk = getattr(container, 'disk', None)
    return int(disk) * 1024 if disk else None


class KataDriver(zun_images.ImageDriverMixin,
                 zun_network.NetworkDriverMixin,
                 zun_volumes.VolumeDriverMixin, zun_driver.BaseDriver,
                 zun_driver.ContainerDriver):
    """Runs every Zun container in its own QEMU micro-VM."""

    # BaseDriver reads this attribute but never defines it.
    capabilities = {}

    def __init__(self):
        super().__init__()
        # Before zun-compute's clients pace a request on the wall clock.
        steadyclock.install()
        self.rt = manager.Runtime()
        # Non-interactive execs, from execute_create to execute_run.
        self._execs = collections.OrderedDict()
        # Interactive exec and attach for zun-wsproxy (kata_zun.console):
        # served from zun-compute itself, in green threads. Started now in
        # zun-compute (eventlet-patched), on first use anywhere else.
        self._console = None
        self._healer = zun_heal.Healer()
        # In zun-compute (eventlet-patched), the first list() is
        # init_containers' at start-up, before any request is served:
        # then, and only then, a hostless create is an orphan.
        self._adopt_pending = patcher.is_monkey_patched('socket')
        if patcher.is_monkey_patched('socket'):
            # In zun-compute: bring back what the host's restart stopped.
            eventlet.spawn_n(self._resume_after_host_restart)
        if CONF.kata_console.enabled and patcher.is_monkey_patched('socket'):
            try:
                self._console_server()
            except zun_exc.ZunException as exc:
                LOG.error('%s', exc)

    def _resume_after_host_restart(self):
        """Start again the containers with restart policy ``always`` or
        ``unless-stopped`` that were running when the host went down, as
        the Docker daemon does when it starts. (zun's ``[compute]
        resume_container_state`` may start the others.)
        """
        for c in self.rt.list():
            policy = (c.config.get('restart_policy') or {}).get('name')
            if c.lost != 'host-restart' or policy not in ('always',
                                                          'unless-stopped'):
                continue
            try:
                _c, client = self.rt.start(c.id)
                client.close()
                LOG.info('Container %s (restart policy %s) started again '
                         'after the host restarted', c.name, policy)
            except Exception:
                LOG.exception('Starting container %s again after the host '
                              'restarted failed', c.name)

    # -------------------------------------------------------- containers
    @_wrap
    def create(self, context, container, image, requested_networks=None,
               requested_volumes=None):
        runtime = getattr(container, 'runtime', None)
        if runtime not in (None, '', RUNTIME_NAME):
            # The scheduler sends a --runtime to hosts that list it; this
            # host lists only kata: never run a container in another
            # runtime than the one asked for.
            raise zun_exc.Invalid('runtime %s is not available on this '
                                  'host (it runs only %s)'
                                  % (runtime, RUNTIME_NAME))
        if image.get(zun_images.SANDBOX_MARK):
            # zun's capsule sandbox image, run as a container: pull it.
            from zun.common import utils as zun_utils
            image, _loaded = self._pull_image(
                context, image['repo'], image['tag'],
                zun_utils.get_image_pull_policy(
                    container.image_pull_policy, image['tag']),
                container.image_driver, getattr(container, 'registry', None))
        ref = '%s:%s' % (image['repo'], image['tag']) if image.get('tag') \
            else image['repo']
        image_rec = self.rt.images.get(image.get('id') or ref)
        zun_status.fill_from_image(container, image_rec.config)
        env = ['%s=%s' % (k, v) for k, v in
               (container.environment or {}).items()]
        memory = int(container.memory) if container.memory else None
        policy = None
        if container.restart_policy:
            name = container.restart_policy.get('Name') or 'no'
            count = container.restart_policy.get('MaximumRetryCount')
            policy = validate.parse_restart_policy(
                '%s:%s' % (name, count) if name == 'on-failure' and count
                else name)
        # Attached by zun-compute before create (attach_volume).
        volume_requests = zun_volumes.requests(
            (requested_volumes or {}).get(container.uuid) or [])
        # --- network (Zun mode): Neutron ports now, plugged at start
        # (A Zun Container always has addresses; a caller's lighter
        # object may not.)
        before = dict(getattr(container, 'addresses', None) or {})
        addresses, net_request = self._setup_network(
            context, container, requested_networks, persist=True)
        try:
            c = self._rt_create(container, image_rec, env, memory, policy,
                                net_request, volume_requests)
        except BaseException:
            self._release_network(context, container, addresses)
            if addresses:
                self._persist_addresses(context, container, before)
            raise
        container.container_id = c.id
        container.status = consts.CREATED
        container.status_reason = None
        container.status_detail = 'Created'
        container.runtime = RUNTIME_NAME
        container.addresses = addresses
        container.save(context)
        return container

    def _rt_create(self, container, image_rec, env, memory, policy,
                   net_request, volume_requests=()):
        cpuset_cpus, cpuset_mems = _cpuset(container)
        return self.rt.create(
            image_rec.id, command=list(container.command or []) or None,
            entrypoint=(list(container.entrypoint)
                        if container.entrypoint else None),
            env=env, workdir=container.workdir, tty=bool(container.tty),
            stdin=bool(container.interactive), memory_mb=memory,
            cpus=float(container.cpu) if container.cpu else None,
            name='zun-' + container.uuid,
            hostname=container.hostname or None,
            auto_remove=bool(container.auto_remove),
            labels=dict(container.labels or {}),
            cid=runtime_id(container), restart_policy=policy,
            healthcheck=_healthcheck(container), network=net_request,
            volumes=volume_requests,
            # Every capability inside the guest, never a host device:
            # the VM is the boundary.
            privileged=bool(container.privileged),
            # Zun's --disk in GiB; zun-compute fills in [DEFAULT]
            # default_disk when none was asked for.
            disk_mb=_disk_mb(container),
            # cpu_policy=dedicated: every QEMU thread on the claimed CPUs.
            cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems)

    @_wrap
    def start(self, context, container):
        if not container.container_id:
            # Not "No such container: None": zun-compute died before the
            # create finished (zun then says "failed to create").
            raise zun_exc.Conflict(
                'container %s has no sandbox: its create never finished '
                '(zun-compute stopped during it); delete it and create it '
                'again' % container.uuid)
        self._bind_volumes(context, container)
        _c, client = self.rt.start(container.container_id)
        client.close()
        if getattr(client, 'start_error', None):
            # As Docker's start fails (OCI runtime error) and zun then
            # marks the container Error with this reason, and the action
            # failed.
            raise exception.ContainerStartFailed(
                reason=client.start_error)
        container.status = consts.RUNNING
        container.status_reason = None
        return container

    @_wrap
    def stop(self, context, container, timeout=None):
        timeout = int(timeout) if timeout not in (None, 'None') else None
        self.rt.stop(container.container_id, timeout=timeout)
        self._refresh(container)
        return container

    @_wrap
    def reboot(self, context, container, timeout=None):
        self.stop(context, container, timeout)
        return self.start(context, container)

    @_wrap
    def pause(self, context, container):
        self.rt.pause(container.container_id)
        container.status = consts.PAUSED
        return container

    @_wrap
    def unpause(self, context, container):
        self.rt.unpause(container.container_id)
        container.status = consts.RUNNING
        return container

    @_wrap
    def kill(self, context, container, signal=None):
        sig = signal_mod.SIGKILL
        if signal not in (None, 'None', ''):
            text = str(signal).upper()
            if text.isdigit():
                sig = int(text)
            else:
                name = text if text.startswith('SIG') else 'SIG' + text
                sig = int(getattr(signal_mod.Signals, name))
        self.rt.kill(container.container_id, sig)
        return container

    def delete(self, context, container, force):
        if not container.container_id:
            # zun-compute died in the middle of its create: the record it
            # was making, if any, is incomplete; remove it with the
            # container, not at some later create.
            self.rt.sweep_incomplete()
        if container.container_id:
            try:
                self.rt.remove(container.container_id, force=True)
            except exception.ContainerNotFound:
                LOG.info('container %s has no sandbox on this host',
                         container.uuid)
        # After the taps are gone: delete the ports we made, unbind the
        # user's, then the exposed ports' security group.
        self._release_network(context, container, container.addresses)

    def check_container_exist(self, container):
        try:
            self.rt.get(container.container_id)
            return True
        except exception.KataZunException:
            return False

    # -------------------------------------------------------------- state
    def _sandbox_or_none(self, cid):
        """:returns: the sandbox ``cid`` of this host, or None."""
        try:
            return self.rt.get(cid)
        except exception.ContainerNotFound:
            return None

    def _refresh(self, container, c=None):
        """Copy the sandbox state into the Zun object (never raises)."""
        if c is None:
            c = self.rt.get(container.container_id)
        zun_status.copy_state(container, c)

    def show(self, context, container):
        if not container.container_id:
            return container
        if container.task_state:
            return container    # another operation owns it right now
        if container.status in (consts.DELETING, consts.DELETED):
            # zun-compute clears the task state before it frees the
            # placement allocation and drops the row: the sandbox is
            # gone by design then, not lost (a soak found a deleted
            # container shown, and saved, as Error "gone from host").
            return container
        try:
            self._refresh(container)
        except exception.ContainerNotFound:
            if container.auto_remove:
                container.status = consts.DELETED
            else:
                # A show may see the loss before the periodic sync: the
                # heal must still start what was running (it once
                # rebuilt a container Error, and left it Created).
                self._healer.lost(container)
                container.status = consts.ERROR
                container.status_reason = ('the sandbox of this container '
                                           'is gone from host %s' %
                                           CONF.host)
        except Exception as exc:          # show must never fail a GET
            LOG.warning('show %s: %s', container.uuid,
                        guestdata.printable(exc))
        return container

    def list(self, context):
        """:returns: (local, non_existent) as zun-compute expects."""
        if self._adopt_pending:
            self._adopt_pending = False
            try:
                zun_orphans.adopt_cut_creates(context, CONF.host)
            except Exception:
                # Never stop zun-compute's start for it: the orphans stay
                # as zun left them (Creating), and the log says why.
                LOG.exception('adopting creates cut by a zun-compute '
                              'stop failed')
        sandboxes = {c.id: c for c in self.rt.list()}
        by_host = objects.Container.list_by_host(context, CONF.host)
        local, missing, found = [], [], []
        for container in by_host:
            local.append(container)
            if container.status in (consts.CREATING, consts.DELETING,
                                    consts.DELETED):
                continue
            c = sandboxes.get(container.container_id)
            if c is None:
                missing.append(container)
                continue
            found.append(container.uuid)
            if not container.task_state:
                try:
                    self._refresh(container, c)
                except Exception as exc:
                    # One odd record must not stop the sync of the rest.
                    LOG.warning('refreshing container %s: %s',
                                container.uuid, guestdata.printable(exc))
        # Found again: whether they ran before a loss no longer matters.
        self._healer.found(found)
        return local, missing

    def update_containers_states(self, context, containers, manager_):
        # zun-compute's sync calls this twice: with every container, then
        # with every capsule (zun's capsule drivers have no sync call).
        capsules = [c for c in containers if isinstance(c, objects.Capsule)]
        for capsule in capsules:
            if capsule.host == CONF.host:
                zun_capsule.sync_capsule(self.rt, context, capsule)
        if all(isinstance(c, objects.Capsule) for c in containers):
            # The capsule call (or no container at all). Containers are
            # not synced again: with no capsules this call (an empty
            # list) healed every missing container a second time.
            self._release_orphan_networks()
            return
        self._healer.forget_others(c.uuid for c in containers)
        zun_orphans.settle_lost_results(
            context, containers, CONF.host, self._sandbox_or_none,
            self._refresh)
        self._release_orphan_networks()
        local, missing = self.list(context)
        local_by_id = {c.container_id: c for c in local if c.container_id}
        for container in containers:
            if (not isinstance(container, objects.Container) or
                    container.host != CONF.host or container.task_state):
                continue
            fresh = local_by_id.get(container.container_id)
            if fresh is not None and fresh.status != container.status:
                LOG.info('Status of container %s changed from %s to %s',
                         container.uuid, container.status, fresh.status)
                container.status = fresh.status
                container.status_reason = fresh.status_reason
                container.status_detail = fresh.status_detail
                self._save(context, container)
        for container in missing:
            if not container.container_id:
                continue    # never got a sandbox (e.g. its image failed)
            if container.task_state:
                # Another operation owns it: a rebuild between its delete
                # and its create has no sandbox, and an Error saved now
                # could land after the rebuild saved it Created.
                continue
            if container.auto_remove:
                container.status = consts.DELETED
            elif self._healer.heal(context, container, manager_):
                continue
            elif container.status == consts.ERROR:
                continue    # keep the reason it already has
            else:
                container.status = consts.ERROR
                container.status_reason = ('sandbox missing on host %s' %
                                           CONF.host)
            self._save(context, container)

    def _release_orphan_networks(self):
        """Retry the network releases that failed for removed containers
        (an OVS port of a deleted container once stayed on the bridge
        until the host's next start). A failure is logged; the next sync
        tries again.
        """
        try:
            done = self.rt.release_orphan_networks()
        except Exception as exc:
            LOG.warning('releasing the networks of removed containers: %s',
                        guestdata.printable(exc))
            return
        if done:
            LOG.info('released the networks of removed containers: %s',
                     ', '.join(cid[:12] for cid in done))

    @staticmethod
    def _save(context, container):
        """Save one container of the periodic sync: a failure is logged
        and the sync goes on with the others.
        """
        try:
            container.save(context)
        except Exception as exc:
            LOG.warning('saving the status of container %s: %s',
                        container.uuid, guestdata.printable(exc))

    # ------------------------------------------------------------ I/O
    @_wrap
    def show_logs(self, context, container, stdout=True, stderr=True,
                  timestamps=False, tail='all', since=None):
        """The container's log, read from its end: ``tail`` costs the
        records it returns, and at most ``[kata] log_read_max_bytes`` of
        output are returned (the newest, after a line saying so).
        """
        tail_n = None
        if tail not in (None, 'all', 'None'):
            try:
                tail_n = int(tail)
            except (TypeError, ValueError):
                raise zun_exc.Invalid('tail must be a number or "all", '
                                      'not %r' % str(tail)[:64])
        try:
            since_ts = logs.parse_since(since)
        except ValueError as exc:
            raise common.zun_error(zun_exc.Invalid, exc)
        limit = CONF.kata.log_read_max_bytes
        _c, (records, truncated) = tpool.execute(
            self.rt.logs, container.container_id, stdout=stdout,
            stderr=stderr, since=since_ts, tail=tail_n, max_bytes=limit)
        out = []
        if truncated:
            out.append('[kata-zun: older output left out: a logs request '
                       'returns at most %d bytes ([kata] '
                       'log_read_max_bytes); ask for a tail]\n' % limit)
        for ts, _stream, data in records:
            line = data.decode('utf-8', 'replace')
            out.append(logs.format_time(ts) + ' ' + line if timestamps
                       else line)
        return ''.join(out)

    def _console_server(self):
        """:returns: the running console server (started if needed).

        :raises: zun Invalid when disabled, ZunException if it cannot
            listen.
        """
        if self._console is not None and self._console.running:
            return self._console
        if not CONF.kata_console.enabled:
            raise zun_exc.Invalid('interactive exec and attach are '
                                  'disabled on host %s ([kata_console] '
                                  'enabled = false)' % CONF.host)
        try:
            console = console_server.from_conf(self.rt, CONF)
        except exception.KataZunException as exc:
            raise common.zun_error(zun_exc.ZunException, exc)
        try:
            self._console = console.start()
        except OSError as exc:
            raise zun_exc.ZunException(
                'the console of host %s (interactive exec, attach) cannot '
                'listen on %s:%s: %s' % (CONF.host, console.host,
                                         console.port, exc))
        # zun-compute gives zun-wsproxy this URL for interactive exec.
        docker_url = CONF.docker.docker_remote_api_url
        try:
            port = urllib.parse.urlsplit(docker_url).port
        except ValueError:
            port = None
        scheme = 'https' if self._console.ssl_context else 'tcp'
        if port != self._console.port or (
                self._console.ssl_context and
                not str(docker_url).startswith('https://')):
            LOG.warning('[docker] docker_remote_api_url is %s: zun-wsproxy '
                        'will not reach the kata console (port %s%s) and '
                        'interactive exec will fail; set it to %s://%s:%s',
                        docker_url, self._console.port,
                        ', TLS' if self._console.ssl_context else '',
                        scheme, self._console.advertise_host,
                        self._console.port)
        return self._console

    def execute_create(self, context, container, command, interactive=False):
        argv = shlex.split(command) if isinstance(command, str) \
            else list(command)
        if not argv:
            raise zun_exc.Invalid('no command given')
        if interactive:
            # zun-wsproxy starts it with Docker's exec start API, which
            # the console serves: the id is a single-use secret.
            try:
                # Sessions count against the owner's per-project cap.
                return self._console_server().add_exec(
                    container.container_id, argv, tty=True, stdin=True,
                    project=getattr(container, 'project_id', None))
            except console_sessions.Busy as exc:
                raise common.zun_error(zun_exc.Conflict, exc)
        exec_id = os.urandom(16).hex()
        self._execs[exec_id] = (container.container_id, argv, interactive)
        # zun runs an exec right after creating it (run=true); one made
        # with run=false is never run by anyone: keep the newest few
        # only, or every such API call grows zun-compute for good.
        while len(self._execs) > EXECS_MAX:
            self._execs.popitem(last=False)
        return exec_id

    @_wrap
    def execute_run(self, exec_id, command):
        cid, argv, _interactive = self._execs.pop(exec_id)
        client, handle, _error = self.rt.exec_client(cid, argv)
        with client:
            try:
                out, err, code = client.collect(
                    handle, timeout=CONF.kata_agent.request_timeout * 10)
            except exception.ShimError as exc:
                # Not always a timeout: the sandbox may have died under
                # the command (its record says how).
                raise zun_exc.Conflict('Command %s did not complete: %s%s' % (
                    command, guestdata.printable(exc), self._gone(cid)))
        return (out + err).decode('utf-8', 'replace'), code

    def _gone(self, cid):
        """:returns: ' (the container exited: <why>)' for a container
            that no longer runs, else ''.
        """
        try:
            c = self.rt.get(cid)
        except exception.KataZunException:
            return ' (the container is gone)'
        if c.status in record.LIVE:
            return ''
        return ' (the container %s: %s)' % (
            c.status, guestdata.printable(c.error or 'exit code %s' %
                                          c.exit_code, 200))

    def execute_resize(self, exec_id, height, width):
        try:
            rows, cols = console_server.tty_size(height, width)
        except ValueError as exc:
            raise common.zun_error(zun_exc.Invalid, exc)
        if self._console is None:
            raise zun_exc.Invalid('no such interactive exec: %s' %
                                  str(exec_id)[:12])
        try:
            self._console.resize_exec(exec_id, rows, cols)
        except console_sessions.NotFound:
            raise zun_exc.Invalid('no such interactive exec: %s' %
                                  str(exec_id)[:12])
        except exception.KataZunException as exc:
            # The process may have just exited: not worth an error.
            LOG.info('resizing exec %s: %s', str(exec_id)[:8], exc)

    def get_websocket_url(self, context, container):
        """:returns: a single-use ws:// (wss:// with TLS) URL of the
        console for zun-wsproxy (it expires after ``[kata_console]
        token_ttl``).
        """
        try:
            return self._console_server().attach_url(
                container.container_id,
                project=getattr(container, 'project_id', None))
        except console_sessions.Busy as exc:
            raise common.zun_error(zun_exc.Conflict, exc)

    @_wrap
    def resize(self, context, container, height, width):
        try:
            rows, cols = console_server.tty_size(height, width)
        except ValueError as exc:
            raise common.zun_error(zun_exc.Invalid, exc)
        if container.tty:          # without a tty there is nothing to size
            self.rt.call(container.container_id, 'resize',
                         {'rows': rows, 'cols': cols})
        return container

    @_wrap
    def top(self, context, container, ps_args=None):
        """``docker top``: the container's processes as ``ps ps_args``
        would list them (see :mod:`kata_zun.runtime.pstable`).

        :raises: InvalidInput (Zun: 400) for options that cannot be
            honoured, before the guest is asked.
        """
        from kata_zun.runtime import pstable
        pstable.columns(ps_args)
        # The shim bounds and types the guest's answer; it is checked
        # again here, where a surprise would fail Zun's request.
        procs = guestdata.processes(self.rt.call(container.container_id,
                                                 'ps'))['processes']
        return pstable.table(procs, ps_args)

    @_wrap
    def stats(self, context, container):
        s1 = guestdata.stats(self.rt.call(container.container_id, 'stats'))
        time.sleep(0.2)
        s2 = guestdata.stats(self.rt.call(container.container_id, 'stats'))
        wall = max(s2['time'] - s1['time'], 1e-3)
        cpu = ((s2['cpu_usage_usec'] - s1['cpu_usage_usec']) / 1e6 / wall *
               100.0)
        mem = s2['memory_usage'] / units.Mi
        limit = s2['memory_limit'] / units.Mi
        return {'CONTAINER': container.name,
                'CPU %': round(cpu, 2),
                'MEM USAGE(MiB)': round(mem, 2),
                'MEM LIMIT(MiB)': round(limit, 2),
                'MEM %': round(mem / limit * 100.0, 2) if limit else 0.0,
                'BLOCK I/O(B)': '%d/%d' % (s2['blkio_read'],
                                           s2['blkio_write']),
                'NET I/O(B)': '%d/%d' % (s2['net_rx'], s2['net_tx'])}

    @_wrap
    def update(self, context, container):
        changes = container.obj_get_changes()
        memory = int(changes['memory']) if changes.get('memory') else None
        cpus = float(changes['cpu']) if changes.get('cpu') else None
        if memory is not None or cpus is not None:
            live = self.rt.update(container.container_id, memory_mb=memory,
                                  cpus=cpus)
            if not live:
                LOG.info('container %s: new limits apply at its next '
                         'start (the running VM is too small)',
                         container.uuid)
        return container

    @_wrap
    def get_archive(self, context, container, path):
        return self.rt.get_archive(container.container_id, path)

    @_wrap
    def put_archive(self, context, container, path, data):
        if isinstance(data, str):
            # Below API microversion 1.25 zun-api passes the tar as the
            # text the client's JSON encoder made of its bytes (UTF-8).
            data = data.encode('utf-8', 'surrogateescape')
        self.rt.put_archive(container.container_id, path, data)

    # ------------------------------------------------------------ host
    def get_available_resources(self):
        data = super().get_available_resources()
        counts = {'total': 0, 'running': 0, 'paused': 0, 'stopped': 0}
        for c in self.rt.list():
            counts['total'] += 1
            key = {record.RUNNING: 'running', record.PAUSED: 'paused'}.get(
                c.status, 'stopped')
            counts[key] += 1
        uname = platform.uname()
        data.update({
            'total_containers': counts['total'],
            'running_containers': counts['running'],
            'paused_containers': counts['paused'],
            'stopped_containers': counts['stopped'],
            'cpus': os.cpu_count(),
            'architecture': uname.machine,
            'os_type': 'linux',
            'os': 'Debian GNU/Linux (kata-zun micro-VMs)',
            'kernel_version': uname.release,
            'labels': {},
            # Only what runs here (zun's RuntimeFilter reads it).
            'runtimes': [RUNTIME_NAME],
        })
        # Each VM costs its guest kernel and agent on top of the limit.
        overhead = CONF.kata_hypervisor.memory_overhead_mb
        data['mem_available'] = max(0, data['mem_available'] -
                                    overhead * counts['running'])
        return data

    def update_provider_tree(self, provider_tree, nodename):
        """Report what a VM can really get.

        Zun's inventory is the host's; every sandbox also costs its guest
        kernel and agent, which placement never allocates: no single
        container may be so big that its VM could not fit. The inventory
        must stay the same from one call to the next (placement answers a
        changed inventory during a claim with 409), so the per-VM overhead
        is accounted in max_unit and in get_available_resources, not as a
        reservation that moves with the number of VMs.
        """
        super().update_provider_tree(provider_tree, nodename)
        inventory = copy.deepcopy(provider_tree.data(nodename).inventory)
        memory = inventory.get(orc.MEMORY_MB)
        if not memory:
            return
        overhead = CONF.kata_hypervisor.memory_overhead_mb
        memory['max_unit'] = max(1, memory['total'] - overhead -
                                 memory.get('reserved', 0))
        provider_tree.update_inventory(nodename, inventory)

    # ------------------------------------------------------------ disk
    def node_support_disk_quota(self):
        """Every container's writable layer is a disk of its own size
        (``--disk``), so zun-compute may pass any size on.
        """
        return True

    def get_host_default_base_size(self):
        """None: no base size (Docker's devicemapper notion) a disk must
        exceed; zun then gives a container without ``--disk`` its
        ``[DEFAULT] default_disk`` GiB.
        """
        return None

    def get_total_disk_for_container(self):
        """The filesystem of ``[kata] state_path`` (writable layers and
        images live there), not zun's ``/``: what placement's DISK_GB
        inventory and the ``disk_total`` of the compute node show.

        :returns: (total GiB, GiB kept for images, as zun's
                  ``[compute] reserve_disk_for_image`` share of it)
        """
        from kata_zun.runtime import layer
        total_mb, _free = layer.filesystem_mb(self.rt.containers_dir)
        total_gb = total_mb / 1024.0
        if 0 < total_gb < 1:
            # Placement refuses an inventory of 0 (and with it VCPU and
            # MEMORY_MB: the node could never be scheduled to). A state
            # filesystem smaller than 1 GiB counts as 1; a full one fails
            # its operations with ENOSPC, named in the container's reason.
            LOG.warning('[kata] state_path is on a filesystem of %d MiB: '
                        'reported as 1 GiB of DISK_GB', total_mb)
            total_gb = 1.0
        return (int(total_gb),
                int(total_gb * CONF.compute.reserve_disk_for_image))
