"""auto_heal: rebuild a container whose sandbox is gone from this host.

zun-compute's own rebuild makes it again from its image (a new VM and
writable layer; the Neutron ports are kept) and starts it if it was
running. zun's docker driver means to do the same but calls
``container_rebuild`` without ``run``, which fails.

A rebuild runs in a green thread of zun-compute's and marks the
container (``task_state``) only once that thread runs: until then the
periodic sync still sees the container without a sandbox. Each heal's
rebuild therefore gets a request id of its own, and a container whose
last heal's action is still unfinished is not healed again: two rebuilds
of one container, one after the other, left it Created (CI).
"""

import copy

from oslo_context import context as context_utils
from oslo_log import log as logging
from oslo_utils import timeutils
from zun.common import consts
from zun.compute import container_actions
from zun import objects

LOG = logging.getLogger(__name__)

# The statuses a missing sandbox is healed from.
HEALABLE = (consts.CREATED, consts.RUNNING, consts.STOPPED, consts.ERROR)


class Healer(object):
    """The auto_heal state of one zun-compute process."""

    def __init__(self):
        # Containers that were running when their sandbox went missing,
        # kept until a sync finds a sandbox for them again (uuids).
        # A heal whose rebuild fails leaves the container Error and still
        # without a sandbox; the next heal must start it, not only create
        # it. Kept no longer: a container healed, later stopped by its
        # user and then lost again must not be started by that heal.
        self.to_run = set()
        # The request id of each container's last heal (uuid -> id).
        self.started = {}

    def lost(self, container):
        """Note that ``container``'s sandbox is gone, seen before a heal
        (by a show): if it was running, its heal starts it again.
        """
        if container.auto_heal and container.status == consts.RUNNING:
            self.to_run.add(container.uuid)

    def heal(self, context, container, manager_):
        """Start the rebuild of ``container``, whose sandbox is missing,
        if it asked for auto_heal and no heal of it is under way.

        :param context: the periodic sync's context.
        :param manager_: zun-compute's ComputeManager.
        :returns: True when a rebuild was started or is under way (the
            rebuild owns the container), False when it is not healed.
        """
        if (not container.auto_heal or container.task_state or
                container.status not in HEALABLE):
            return False
        if self._under_way(context, container.uuid):
            LOG.debug('container %s: its rebuild (auto_heal) is under way',
                      container.uuid)
            return True
        LOG.warning('The sandbox of container %s is missing on this host: '
                    'rebuilding it (auto_heal)', container.uuid)
        ctx = copy.copy(context)
        ctx.project_id = container.project_id
        # Its own request id: the rebuild's action is recorded and
        # finished under it, and _under_way finds it.
        ctx.request_id = context_utils.generate_request_id()
        # The action's start time is its context's: the periodic task's
        # is as old as zun-compute.
        ctx.timestamp = timeutils.utcnow()
        run = (container.status == consts.RUNNING or
               container.uuid in self.to_run)
        if run:
            self.to_run.add(container.uuid)
        try:
            objects.ContainerAction.action_start(
                ctx, container.uuid, container_actions.REBUILD,
                want_result=False)
            self.started[container.uuid] = ctx.request_id
            manager_.container_rebuild(ctx, container, run)
        except Exception as exc:
            LOG.exception('auto_heal of container %s failed',
                          container.uuid)
            if self.started.pop(container.uuid, None) is not None:
                # Its action would stay unfinished: finish it as failed,
                # and the next sync heals again.
                try:
                    objects.ContainerAction.action_finish(
                        ctx, container.uuid, container_actions.REBUILD,
                        exc_val=exc, exc_tb=exc.__traceback__,
                        want_result=False)
                except Exception as finish_exc:
                    LOG.warning('finishing the rebuild action of %s: %s',
                                container.uuid, finish_exc)
            return False
        return True

    def _under_way(self, context, uuid):
        """:returns: True while this process's last rebuild of ``uuid``
            has not finished (its action has no finish time).
        """
        request_id = self.started.get(uuid)
        if request_id is None:
            return False
        try:
            action = objects.ContainerAction.get_by_request_id(
                context, uuid, request_id)
        except Exception as exc:
            LOG.warning('reading the rebuild of container %s: %s', uuid,
                        exc)
            return False
        if action is not None and action.finish_time is None:
            return True
        del self.started[uuid]
        return False

    def found(self, uuids):
        """Note that a sync found a sandbox for each of ``uuids``: whether
        they were running before a loss no longer matters.
        """
        self.to_run.difference_update(uuids)

    def forget_others(self, uuids):
        """Drop what is kept for containers not in ``uuids`` (deleted
        ones): called by each sync with every container zun knows.
        """
        keep = set(uuids)
        self.to_run &= keep
        for uuid in [u for u in self.started if u not in keep]:
            del self.started[uuid]
