"""The shim's API operations (``op_<name>`` of a REQUEST frame)."""

import signal
import time

from oslo_log import log as logging

from kata_zun import exception
from kata_zun.hypervisor import base as hv_base
from kata_zun.shim import guestdata

LOG = logging.getLogger(__name__)

# How long the agent may take to configure or release a hotplugged NIC
# (it waits up to 5 s for a new NIC to be probed; a slot powers off in
# about a second). A silent guest does not stop a detach: the tap is cut.
NIC_AGENT_TIMEOUT = 10.0


class ApiOps(object):
    """Mixin of :class:`kata_zun.shim.server.Shim`: what clients ask."""

    # ----------------------------------------------------------- API ops
    def op_state(self, client, rid, args):
        self._respond(client, rid, result=dict(self.state, main=self.main))

    def op_attach(self, client, rid, args):
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        client.subs.add(self.main)
        if args.get('stdin') and self.config['agent_spec'].get('stdin'):
            client.stdin.add(self.main)
        self._respond(client, rid, result={'exited': False})

    def op_start(self, client, rid, args):
        if self.state.get('status') != 'created':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' %
                self.state.get('status')})

        def started(result):
            # An exec failure (no such command) stays the container's
            # error after its exit, as Zun shows it.
            self.save_state(status='running', started_at=time.time(),
                            pid=result['pid'], start_error=result['error'])
            self._health_start()
        self._forward(client, rid, 'start', {'id': self.cid}, started,
                      guestdata.started)

    def op_exec(self, client, rid, args):
        spec = {'id': self.cid, 'argv': args.get('argv'),
                'env': args.get('env') or [], 'tty': bool(args.get('tty')),
                'stdin': bool(args.get('stdin'))}
        for key in ('workdir', 'user'):
            if args.get(key):
                spec[key] = args[key]

        self._forward_process(client, rid, 'exec', spec, spec['stdin'],
                              guestdata.started)

    def _forward_process(self, client, rid, op, spec, stdin,
                         clean=guestdata.started):
        """Forward an operation that starts a process in the guest.

        The client receives its output (and may feed its stdin).
        """
        def subscribed(result):
            handle = result.get('proc')
            if handle is not None:
                client.subs.add(handle)
                if stdin:
                    client.stdin.add(handle)
        if self.state.get('status') == 'paused':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is paused'})
        self._forward(client, rid, op, spec, subscribed, clean)

    def op_archive_get(self, client, rid, args):
        self._forward_process(client, rid, 'archive_get', {
            'id': self.cid, 'path': str(args['path'])}, False,
            guestdata.archive)

    def op_archive_put(self, client, rid, args):
        self._forward_process(client, rid, 'archive_put', {
            'id': self.cid, 'path': str(args['path'])}, True)

    def op_layer_diff(self, client, rid, args):
        self._forward_process(client, rid, 'layer_diff', {'id': self.cid},
                              False)

    def op_signal(self, client, rid, args):
        handle = self._handle(args)
        sig = int(args.get('signal', signal.SIGKILL))
        if handle == self.main and sig in (signal.SIGKILL, signal.SIGTERM,
                                           signal.SIGINT):
            self.manually_stopped = True
        if self.state.get('status') == 'restarting':
            return self._respond(client, rid)    # nothing runs right now
        self._forward(client, rid, 'signal', {'proc': handle,
                                              'signal': sig})

    def op_resize(self, client, rid, args):
        self._forward(client, rid, 'resize', {
            'proc': self._handle(args), 'rows': int(args['rows']),
            'cols': int(args['cols'])})

    def op_stats(self, client, rid, args):
        self._forward(client, rid, 'stats', {'id': self.cid},
                      clean=guestdata.stats)

    def op_ps(self, client, rid, args):
        self._forward(client, rid, 'ps', {'id': self.cid},
                      clean=guestdata.processes)

    def op_update(self, client, rid, args):
        spec = {'id': self.cid}
        for key in ('memory_bytes', 'cpus'):
            if args.get(key) is not None:
                spec[key] = args[key]
        self._forward(client, rid, 'update', spec)

    def op_wait(self, client, rid, args):
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        timeout = args.get('timeout')
        deadline = (time.monotonic() + float(timeout)
                    if timeout is not None else None)
        self.waiters.append((client, rid, deadline))

    def op_stop(self, client, rid, args):
        """SIGTERM, then SIGKILL after ``timeout`` seconds.

        Answers once the container has exited.
        """
        if self.exited:
            return self._respond(client, rid, result=self._exit_info())
        self.manually_stopped = True
        if self.state.get('status') == 'restarting':
            # Between two runs: nothing to signal, just do not restart.
            self.waiters.append((client, rid, None))
            return
        timeout = float(args.get('timeout', self.stop_timeout))
        if self.state.get('status') == 'paused':
            self._unpause()
        if self.state.get('status') == 'created':
            # Never started: there is no process to signal.
            self._container_exited(0, False)
            self._shutdown_vm()
            return self._respond(client, rid, result=self._exit_info())
        self.waiters.append((client, rid, None))
        sig = int(args.get('signal', signal.SIGTERM))

        def kill():
            if not self.exited:
                self._agent_call('signal', {'proc': self.main,
                                            'signal': signal.SIGKILL},
                                 lambda r, e: None)
        self._agent_call('signal', {'proc': self.main, 'signal': sig},
                         lambda r, e: None)
        self.timers.append((time.monotonic() + timeout, kill))

    # ------------------------------------------------------- NIC hotplug
    def _hotplug_refused(self, client, rid):
        """:returns: True (and answers the client) when the VM cannot
        take or give up a NIC now: gone, or paused (its vCPUs stopped).
        """
        status = self.state.get('status')
        if self.exited or self.vm is None or status not in (
                'created', 'running', 'restarting'):
            self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' % status})
            return True
        return False

    def op_nic_add(self, client, rid, args):
        """Hotplug a NIC on an existing tap, then have the agent configure
        it (``interface``: a guest interface spec). On failure the NIC is
        taken out again: nothing is left half-made.
        """
        if self._hotplug_refused(client, rid):
            return
        nic = hv_base.Nic(str(args['tap']), str(args['mac']).lower(),
                          checksum_offload=args.get('checksum_offload')
                          is not False)
        interface = args.get('interface')
        try:
            self.vm.add_nic(nic)
        except exception.HypervisorError as exc:
            return self._respond(client, rid, error={
                'code': 'hotplug', 'message': str(exc)})

        def configured(result, error):
            if error is not None:
                self._remove_nic(nic.tap)
            self._respond(client, rid, result=result, error=error)
        if interface is None:
            return configured({}, None)
        self._agent_call_by('add_interface', {'interface': interface},
                            NIC_AGENT_TIMEOUT, configured)

    def op_nic_remove(self, client, rid, args):
        """The agent unconfigures the NIC and powers its slot off, then
        the tap is cut from the VM (even if the guest did not cooperate).
        """
        if self._hotplug_refused(client, rid):
            return
        tap = str(args['tap'])
        mac = str(args['mac']).lower()

        def released(result, error):
            if error is not None:
                self._guest_warning('agent could not release NIC %s: %s',
                                    guestdata.printable(mac),
                                    guestdata.error_text(error))
            try:
                gone = self.vm.remove_nic(tap)
            except exception.HypervisorError as exc:
                return self._respond(client, rid, error={
                    'code': 'hotplug', 'message': str(exc)})
            self._respond(client, rid, result={
                'guest': result if error is None else None,
                'device_gone': gone})
        self._agent_call_by('remove_interface', {'mac': mac},
                            NIC_AGENT_TIMEOUT, released)

    def op_nic_configure(self, client, rid, args):
        """(Re)configure a NIC the VM already has, e.g. to give it the
        default route after the NIC that had it was detached.
        """
        if self._hotplug_refused(client, rid):
            return
        self._agent_call_by('add_interface',
                            {'interface': args['interface']},
                            NIC_AGENT_TIMEOUT,
                            lambda result, error: self._respond(
                                client, rid, result=result, error=error))

    def _remove_nic(self, tap):
        try:
            self.vm.remove_nic(tap)
        except exception.HypervisorError as exc:
            LOG.warning('undoing the hotplug of %s: %s', tap, exc)

    def op_pause(self, client, rid, args):
        if self.state.get('status') != 'running':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is %s' %
                self.state.get('status')})
        self.vm.pause()
        self.save_state(status='paused')
        self._respond(client, rid)

    def op_unpause(self, client, rid, args):
        if self.state.get('status') != 'paused':
            return self._respond(client, rid, error={
                'code': 'state', 'message': 'container is not paused'})
        self._unpause()
        self._respond(client, rid)

    def _unpause(self):
        self.vm.resume()
        self.save_state(status='running')
