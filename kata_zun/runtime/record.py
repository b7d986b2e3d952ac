"""A container's record on disk, read as untrusted data.

A record is ``<state_path>/containers/<id>/`` (see
:mod:`kata_zun.runtime.manager` for its files). ``config.json`` is
written by whoever creates the container; ``state.json`` by its shim,
which bounds what the guest says. Both are read back from disk and may
have been damaged since (a full disk, a crash, a hand edit): what is
read here is type-checked field by field, and a record that cannot be
used becomes a :class:`Container` with its error, never an exception
(one broken record must not hide the others).
"""

import os
import re

from kata_zun.runtime import fileutils
from kata_zun.runtime import health
from kata_zun.runtime import layer

# 64 hex digits of our own, or a Zun uuid without its dashes (32).
ID_RE = re.compile(r'^[0-9a-f]{32,64}\Z')
NAME_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\Z')

CREATED = 'created'
RUNNING = 'running'
PAUSED = 'paused'
RESTARTING = 'restarting'      # between two runs of a restart policy
EXITED = 'exited'
# A record that cannot be read (or makes no sense): shown, never hidden.
UNKNOWN = 'unknown'
LIVE = (RUNNING, PAUSED, RESTARTING)
# In a container's directory while ``restart`` stops it: its shim then
# keeps an auto_remove record (see kata_zun.cmd.shim).
RESTART_MARK = 'restarting'


# The types of what state.json holds; anything else is left out (and
# the record's error says so). Written by the shim, which bounds what the
# guest says, but read back from disk: it may have been damaged since.
_NUMBER = (int, float)
_STATE_TYPES = {
    'status': str, 'exit_code': int, 'oom_killed': bool, 'error': str,
    'start_error': str, 'started_at': _NUMBER, 'finished_at': _NUMBER,
    'shim_pid': int, 'vm_pid': int, 'pid': int, 'boot_id': str,
    'restart_count': int, 'health': dict, 'boot_timing': dict,
    'guest_version': str,
}
_STATUSES = (CREATED, RUNNING, PAUSED, RESTARTING, EXITED)
# Characters of a record's error kept (they are shown by ps and Zun).
RECORD_ERROR_MAX = 1024


def check_config(config, cid):
    """:returns: why a config.json cannot be used, or None."""
    if not isinstance(config, dict):
        return 'config.json does not hold an object'
    if config.get('id') != cid:
        return 'config.json names another container'
    if not isinstance(config.get('name'), str) or \
            not NAME_RE.match(config['name']):
        return 'config.json has no valid name'
    created = config.get('created')
    if isinstance(created, bool) or not isinstance(created, _NUMBER):
        return 'config.json has no creation time'
    for key in ('image', 'agent_spec', 'vm', 'sandbox', 'pod'):
        if key in config and not isinstance(config[key], dict):
            return 'config.json has a malformed %s' % key
    return None


def clean_state(state):
    """:returns: (state with only well-typed fields, problem or None)."""
    if not isinstance(state, dict):
        return {}, 'state.json does not hold an object'
    clean, bad = {}, []
    for key, value in state.items():
        wanted = _STATE_TYPES.get(key)
        if wanted is None or value is None:
            clean[key] = value
        elif isinstance(value, wanted) and not (
                wanted is not bool and isinstance(value, bool)):
            clean[key] = value
        else:
            bad.append(key)
    health_ = clean.get('health')
    if health_ is not None and not (
            isinstance(health_.get('log', []), list) and
            all(isinstance(e, dict) for e in health_.get('log', [])) and
            isinstance(health_.get('status', ''), str)):
        clean.pop('health')
        bad.append('health')
    if clean.get('status', CREATED) not in _STATUSES:
        clean.pop('status')
        bad.append('status')
    return clean, ('state.json has malformed %s' % ', '.join(sorted(bad))
                   if bad else None)


class Container(object):
    """A container record with its live status resolved."""

    def __init__(self, directory, config, state, alive, record_error=None):
        """:param record_error: why the record is (partly) unreadable;
            a container whose config or state could not be read at all
            has status :data:`UNKNOWN`.
        """
        self.dir = directory
        self.config = config
        self.state = state
        self.shim_alive = alive
        self.record_error = record_error
        self.unreadable = False

    @classmethod
    def unreadable_record(cls, directory, cid, reason):
        """A record that cannot be read: listed with its error (never
        hidden: ``ps`` and Zun's sync show it, ``rm`` removes it).
        """
        try:
            created = os.stat(directory).st_mtime
        except OSError:
            created = 0.0
        config = {'id': cid, 'name': 'broken-' + cid[:12],
                  'created': created, 'image': {'name': '', 'id': ''},
                  'agent_spec': {'argv': []}, 'vm': {}}
        c = cls(directory, config, {}, False,
                record_error=record_error(reason))
        c.unreadable = True
        return c

    @property
    def id(self):
        return self.config['id']

    @property
    def name(self):
        return self.config['name']

    @property
    def status(self):
        """created, running, paused, exited (resolved, not as stored) or
        unknown (an unreadable record).
        """
        if self.unreadable:
            return UNKNOWN
        stored = self.state.get('status', CREATED)
        if stored in LIVE:
            return stored if self.shim_alive else EXITED
        if stored == CREATED and self.shim_alive:
            return CREATED
        return stored

    @property
    def lost(self):
        """Why a live sandbox is gone without having said so, or None:
        ``host-restart`` (it ran under another boot of the host) or
        ``crash`` (its shim died on this boot).
        """
        if self.status != EXITED or self.state.get('status') == EXITED:
            return None
        recorded = self.state.get('boot_id')
        current = fileutils.boot_id()
        if recorded and current and recorded != current:
            return 'host-restart'
        return 'crash'

    @property
    def exit_code(self):
        if self.lost:
            return 255
        return self.state.get('exit_code')

    @property
    def error(self):
        if self.record_error:
            return 'damaged sandbox record: %s' % self.record_error
        lost = self.lost
        if lost == 'host-restart':
            return 'the host restarted while the container ran'
        if lost:
            return 'the sandbox shim died (crash)'
        if (self.state.get('error') is None and self.status == CREATED and
                self.state.get('shim_pid') and not self.shim_alive):
            # Its shim was killed while it booted the VM: nothing else
            # would say why the container is not running.
            return 'the sandbox shim died before the container started'
        return self.state.get('error')

    @property
    def health(self):
        """``starting``, ``healthy`` or ``unhealthy`` while the container
        runs with a health check; None otherwise.
        """
        if not self.config.get('healthcheck') or self.status not in (
                RUNNING, PAUSED):
            return None
        stored = self.state.get('health') or {}
        return stored.get('status', health.STARTING)

    def to_dict(self):
        return {'Id': self.id, 'Name': self.name,
                'Created': self.config['created'],
                'Image': self.config['image']['name'],
                'ImageId': self.config['image']['id'],
                'Config': {k: self.config['agent_spec'].get(k) for k in
                           ('argv', 'env', 'workdir', 'user', 'tty',
                            'stdin', 'hostname', 'privileged')},
                'Limits': {'memory_mb': self.config.get('memory_mb'),
                           'cpus': self.config.get('cpus'),
                           'pids_limit': self.config['agent_spec'].get(
                               'pids_limit'),
                           'disk_mb': layer.size_mb_of(self.config,
                                                       self.dir)},
                'VM': self.config['vm'],
                'NetworkSettings': self._network_settings(),
                'Labels': self.config.get('labels', {}),
                'AutoRemove': self.config.get('auto_remove', False),
                'State': {'Status': self.status,
                          'ExitCode': self.exit_code,
                          'OOMKilled': self.state.get('oom_killed', False),
                          'Error': self.error,
                          'RestartCount': self.state.get('restart_count',
                                                         0),
                          'StartedAt': self.state.get('started_at'),
                          'FinishedAt': self.state.get('finished_at'),
                          'ShimPid': self.state.get('shim_pid'),
                          'VMPid': self.state.get('vm_pid'),
                          'Health': self._health_dict()},
                'Healthcheck': self.config.get('healthcheck'),
                'LogPath': os.path.join(self.dir, 'container.log')}

    def _health_dict(self):
        if not self.config.get('healthcheck'):
            return None
        stored = self.state.get('health') or {}
        return {'Status': self.health or stored.get('status'),
                'FailingStreak': stored.get('failing_streak', 0),
                'Log': [{'Start': e.get('start'), 'End': e.get('end'),
                         'ExitCode': e.get('exit_code'),
                         'Output': e.get('output')}
                        for e in stored.get('log') or []]}

    def _network_settings(self):
        # --- network (issue 5)
        from kata_zun import network
        return network.settings(self.dir, self.config.get('network'))


def record_error(reason):
    """:returns: ``reason`` as bounded, printable text (or None)."""
    if reason is None:
        return None
    from kata_zun.shim import guestdata
    return guestdata.printable(reason, RECORD_ERROR_MAX)
