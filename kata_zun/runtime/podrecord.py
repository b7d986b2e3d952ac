"""A pod's record as its readers see it (see :mod:`kata_zun.runtime.pods`).

:class:`Pod` is a pod record with its containers' records and its
Kubernetes-like status; :class:`PodMemberClient` is a client of the
pod's shim that speaks for one of its containers.
"""

import os

from kata_zun.runtime import podspec
from kata_zun.shim import client as shim_client

REMOVING_MARK = 'removing'


class PodMemberClient(shim_client.ShimClient):
    """A client of a pod's shim that speaks for one of its containers:
    every request names it.
    """

    def __init__(self, path, cid, timeout=10.0):
        super().__init__(path, timeout=timeout)
        self.member = cid

    def call(self, op, args=None, timeout=30.0):
        args = dict(args or {}, container=self.member)
        return super().call(op, args, timeout)


class Pod(object):
    """A pod record with its containers' records.

    :ivar containers: the regular containers
        (:class:`kata_zun.runtime.record.Container`), in order.
    :ivar init_containers: the init containers, in order.
    """

    def __init__(self, directory, config, state, alive, init_containers,
                 containers, record_error=None):
        self.dir = directory
        self.config = config
        self.state = state
        self.shim_alive = alive
        self.init_containers = init_containers
        self.containers = containers
        self.record_error = record_error

    @property
    def id(self):
        return self.config['id']

    @property
    def name(self):
        return self.config['name']

    @property
    def removing(self):
        return os.path.exists(os.path.join(self.dir, REMOVING_MARK))

    @property
    def status(self):
        if self.record_error:
            return podspec.UNKNOWN
        return podspec.phase(
            'started_at' in self.state,
            [(c.status, c.exit_code) for c in self.init_containers],
            [(c.status, c.exit_code) for c in self.containers],
            stopped=bool(self.state.get('stopped')))

    @property
    def error(self):
        if self.record_error:
            return self.record_error
        if self.state.get('error'):
            return self.state['error']
        if self.state.get('status') in ('running', 'created') and \
                not self.shim_alive and self.state.get('shim_pid'):
            return 'the pod shim died (crash)'
        return None

    def to_dict(self):
        def member(c):
            return {'Id': c.id, 'Name': c.config['pod_member'],
                    'Image': c.config['image']['name'],
                    'Status': c.status, 'ExitCode': c.exit_code,
                    'Error': c.error,
                    'RestartCount': c.state.get('restart_count', 0),
                    'StartedAt': c.state.get('started_at'),
                    'FinishedAt': c.state.get('finished_at')}
        return {'Id': self.id, 'Name': self.name,
                'Created': self.config['created'], 'Status': self.status,
                'Error': self.error,
                'Hostname': self.config['sandbox']['hostname'],
                'RestartPolicy': self.config['restart_policy']['name'],
                'Labels': self.config.get('labels') or {},
                'VM': self.config['vm'],
                'Volumes': [{'Name': v['name'], 'Type': v['type'],
                             'Source': v['source']}
                            for v in self.config.get('volumes') or ()],
                'NetworkSettings': self._network_settings(),
                'ShimPid': self.state.get('shim_pid') if self.shim_alive
                else None,
                'StartedAt': self.state.get('started_at'),
                'FinishedAt': self.state.get('finished_at'),
                'InitContainers': [member(c) for c in self.init_containers],
                'Containers': [member(c) for c in self.containers]}

    def _network_settings(self):
        if not self.config.get('network'):
            return None
        from kata_zun import network
        return network.settings(self.dir, self.config['network'])
