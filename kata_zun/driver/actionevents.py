"""Our reason for a failed action, where Zun users look for it.

Zun records an action (``openstack appcontainer action list/show``) per
request and, per compute step, an event whose ``result`` is ``Error``
and whose ``traceback`` (admins only) is the frames of the exception,
without its message; the action's ``message`` is only ``Error``.  The
container's ``status_reason`` gets ``str(exception)``, which is ours
(see :func:`kata_zun.driver.common.wrap`).

So that ``action show`` tells why too, a failing driver call adds one
event of its own to the request's action: ``kata_<call>``, whose
``result`` is ``Error: <our message>`` (cut to the column's 255
characters; what users see) and whose ``traceback`` is the whole
message followed by our traceback (admins).  Recording it never changes
the outcome: any failure here is logged and forgotten.
"""

import traceback

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: Zun's ``container_actions_events.result`` column is String(255).
RESULT_MAX = 255
TRACEBACK_MAX = 64 * 1024


def _find(args):
    from zun.common import context as zun_context
    context = container = None
    for arg in args:
        if context is None and isinstance(arg, zun_context.RequestContext):
            context = arg
        elif container is None and context is not None and isinstance(
                getattr(arg, 'uuid', None), str):
            container = arg
    return context, container


def _uuid_of_request(context):
    """The container of the request's action, for calls that are not
    given the container (``pull_image``: zun pulls before it creates).

    A request id names one API request, and so one action.

    :returns: the container uuid, or None.
    """
    from zun.db.sqlalchemy import api as sa_api
    from zun.db.sqlalchemy import models
    with sa_api._session_for_read() as session:
        rows = session.query(models.ContainerAction.container_uuid).\
            filter_by(request_id=context.request_id,
                      project_id=context.project_id).limit(2).all()
    return rows[0][0] if len(rows) == 1 else None


def record_failure(call, args, exc):
    """Add ``kata_<call>`` with our message to the request's action.

    :param call: the driver method's name.
    :param args: its positional arguments (the request context and the
        container are found among them, or the container from the
        request's action; without both nothing is recorded: not every
        call belongs to an action).
    :param exc: the exception the call raises.
    """
    try:
        context, container = _find(args)
        # A request of a user (periodic tasks run with an admin context
        # without a project, and zun would file their event under the
        # container's last action, another request's).
        if context is None or \
                not getattr(context, 'request_id', None) or \
                not getattr(context, 'project_id', None):
            return
        uuid = container.uuid if container is not None else \
            _uuid_of_request(context)
        if uuid is None:
            return
        from oslo_utils import timeutils
        from zun.db import api as dbapi

        from kata_zun.shim import guestdata
        message = guestdata.printable(str(exc) or type(exc).__name__,
                                      TRACEBACK_MAX)
        values = {'event': 'kata_%s' % call,
                  'container_uuid': uuid,
                  'request_id': context.request_id}
        dbapi.action_event_start(context, dict(
            values, start_time=timeutils.utcnow()))
        details = ''.join(traceback.format_exception(
            type(exc), exc, exc.__traceback__))
        dbapi.action_event_finish(context, dict(
            values, finish_time=timeutils.utcnow(),
            result=('Error: ' + message)[:RESULT_MAX],
            traceback=(message + '\n\n' + details)[:TRACEBACK_MAX]))
    except Exception as err:     # never in the way of zun's own handling
        LOG.debug('Could not record the reason of %s in its action: %s',
                  call, err)
