"""Sandbox state as Zun shows it: status, status_reason, status_detail.

Shared by the container driver and the capsule driver (a capsule's
containers are ordinary records of the runtime).
"""

import time

from zun.common import consts

from kata_zun.runtime import record
from kata_zun.shim import guestdata

STATUS = {
    record.CREATED: consts.CREATED,
    record.RUNNING: consts.RUNNING,
    record.PAUSED: consts.PAUSED,
    record.RESTARTING: consts.RESTARTING,
    record.EXITED: consts.STOPPED,
}


def fill_from_image(container, config):
    """Zun shows what will run: fill in the entrypoint, command and
    working directory the user left to the image (its ``config``).
    """
    config = config or {}
    if not container.entrypoint and config.get('Entrypoint'):
        container.entrypoint = list(config['Entrypoint'])
    if not container.command and config.get('Cmd'):
        container.command = list(config['Cmd'])
    if not container.workdir and config.get('WorkingDir'):
        container.workdir = config['WorkingDir']


def _ago(ts):
    if not ts:
        return ''
    seconds = max(0, int(time.time() - ts))
    for unit, size in (('days', 86400), ('hours', 3600),
                       ('minutes', 60)):
        if seconds >= size:
            return '%d %s' % (seconds // size, unit)
    return '%d seconds' % seconds


def copy_state(container, c, failed_start_is_error=True):
    """Copy the state of runtime record ``c`` into the Zun object
    ``container`` (never raises).

    :param failed_start_is_error: show a container whose last start
        failed before it ran as Error (a container's); False keeps it
        Created with its reason (a capsule's member that was never
        started because an init container failed).
    """
    status = c.status
    if c.lost == 'host-restart':
        # Stopped like Docker's containers after a reboot, not an
        # error: zun's [compute] resume_container_state starts the
        # ones that were running.
        container.status = consts.STOPPED
        container.status_reason = guestdata.printable(c.error)
        container.status_detail = 'Exited(255) %s ago' % _ago(
            c.state.get('started_at'))
        return
    if status == record.UNKNOWN:
        # A damaged record: shown with its error, never dropped (nor
        # rebuilt by auto_heal as if it were missing).
        container.status = consts.UNKNOWN
        container.status_reason = guestdata.printable(c.error)
        container.status_detail = 'Unknown'
        return
    if status == record.EXITED and c.error:
        container.status = consts.ERROR
        container.status_reason = guestdata.printable(c.error)
        container.status_detail = 'Exited(%s) %s ago (error)' % (
            c.exit_code, _ago(c.state.get('finished_at')))
        return
    if status == record.CREATED and c.error and failed_start_is_error:
        # Its last start failed before the container ran (refused for
        # memory, or abandoned by its starter): the CLI shows it created
        # like Docker, zun as a failed start. Zun may start it again.
        container.status = consts.ERROR
        container.status_reason = guestdata.printable(c.error)
        container.status_detail = 'Created (start failed)'
        return
    container.status = STATUS.get(status, consts.UNKNOWN)
    if status == record.RUNNING:
        container.status_detail = 'Up %s' % _ago(
            c.state.get('started_at'))
        # Like docker ps: "Up 2 minutes (healthy)".
        if c.health == 'starting':
            container.status_detail += ' (health: starting)'
        elif c.health:
            container.status_detail += ' (%s)' % c.health
        container.status_reason = None
        if c.health == 'unhealthy':
            last = ((c.state.get('health') or {}).get('log') or [{}])[-1]
            output = last.get('output')
            container.status_reason = (
                'health check failing (exit %s): %s' % (
                    guestdata.integer(last.get('exit_code'), -1, 255),
                    guestdata.printable(
                        output.strip() if isinstance(output, str)
                        else '', 200)))
    elif status == record.RESTARTING:
        container.status_detail = 'Restarting'
    elif status == record.PAUSED:
        container.status_detail = 'Up %s (paused)' % _ago(
            c.state.get('started_at'))
    elif status == record.EXITED:
        container.status_detail = 'Exited(%s) %s ago' % (
            c.exit_code, _ago(c.state.get('finished_at')))
        if c.state.get('oom_killed'):
            container.status_reason = 'OOMKilled'
    else:
        container.status_detail = 'Created'
