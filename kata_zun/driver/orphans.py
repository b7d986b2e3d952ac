# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""What zun lost track of: creates a dead zun-compute cut before zun
could see them (below), and operations whose end zun could not save
(:func:`settle_lost_results`). Both are settled from the host's side.

zun-compute connects a container's volumes *before* its resource claim
tags the container with the host (``_attach_volumes`` runs ahead of
``container_claim``). If zun-compute dies in between, zun is left with a
container that is ``Creating`` with no host:

* zun-compute's own start-up (``init_containers``) lists containers by
  host, so it never fails it: it stays ``Creating`` for ever;
* zun-api deletes a container without a host by dropping its row only,
  so its Cinder attachment, the volume's connection on this host, its
  dynamic volumes and its placement allocation would all stay behind.

Two facts tell a restarted zun-compute that such a container is its own
and that its create really began (rather than waits, as an RPC message
queued while zun-compute was down): zun-api's scheduler allocated its
resources in placement on this host's resource provider, and zun-compute
saved its volume mappings (it does that itself, just before it connects
each volume; the volume rows keep no host). zun-compute adopts it: host
set, ``Error`` with the reason, so that a delete goes through this
zun-compute and zun's ordinary delete path (volumes detached, dynamic
volumes deleted, the allocation freed).

Only a zun-compute that has just started may do this: while it runs, a
container between those two steps is a create in flight, not an orphan.
A create cut before its first volume mapping (no volumes, or before
``_attach_volumes`` began) leaves nothing of ours to tell it by; zun
keeps it ``Creating``, as it would with any driver.
"""

from oslo_concurrency import lockutils
from oslo_log import log as logging
from zun.common import consts
from zun.common import exception as zun_exc
from zun import objects

from kata_zun.driver.common import runtime_id_of

LOG = logging.getLogger(__name__)

REASON = ('zun-compute on %s stopped while it connected the volumes of '
          'this container, before the container was created: its volumes '
          'are released when it is deleted; delete it and create it again')


def cut_creates(context, host, allocations):
    """The containers of this host whose create died before the claim.

    :param context: an admin context over all projects.
    :param host: this zun-compute's host name.
    :param allocations: a callable (context, container uuid) returning the
        resource provider uuids that hold the container's allocations.
    :returns: the :class:`zun.objects.Container` objects that are
        ``Creating``, have no host and a volume mapping, and whose
        allocation is on ``host``'s resource provider.
    """
    found = []
    candidates = [c for c in objects.Container.list(
        context, filters={'status': consts.CREATING}) if not c.host]
    if not candidates:
        return found
    try:
        rp_uuid = objects.ComputeNode.get_by_name(context, host).rp_uuid
    except zun_exc.ComputeNodeNotFound:
        return found        # a new host: nothing was ever scheduled here
    for container in candidates:
        if not objects.VolumeMapping.list_by_container(context,
                                                       container.uuid):
            continue
        if rp_uuid in allocations(context, container.uuid):
            found.append(container)
    return found


def placement_allocations(context, uuid):
    """:returns: the resource provider uuids of ``uuid``'s allocations."""
    from zun.scheduler.client import report
    return set((report.SchedulerReportClient().get_allocs_for_consumer(
        context, uuid) or {}).get('allocations') or {})


def adopt_cut_creates(context, host, allocations=placement_allocations):
    """Tag each cut create with ``host`` and fail it with the reason.

    Call it once, when zun-compute starts, before it serves any request.

    :param context: an admin context over all projects.
    :param host: this zun-compute's host name.
    :param allocations: see :func:`cut_creates`.
    :returns: the number of containers adopted.
    """
    adopted = 0
    for container in cut_creates(context, host, allocations):
        container.host = host
        container.task_state = None
        container.status = consts.ERROR
        container.status_reason = REASON % host
        try:
            container.save(context)
        except zun_exc.ContainerNotFound:
            continue        # deleted meanwhile: nothing to adopt
        LOG.warning('Container %s was left Creating without a host by a '
                    'zun-compute that stopped while it connected its '
                    'volumes: adopted here as Error, so that its delete '
                    'releases them', container.uuid)
        adopted += 1
    return adopted


#: The task states of zun-compute operations that hold zun's lock on the
#: container (``utils.synchronized(container.uuid)``) from start to end.
LOCKED_TASKS = (consts.CONTAINER_CREATING, consts.CONTAINER_STARTING,
                consts.CONTAINER_STOPPING, consts.CONTAINER_REBOOTING,
                consts.CONTAINER_PAUSING, consts.CONTAINER_UNPAUSING,
                consts.CONTAINER_KILLING)

LOST_CREATE = ('zun-compute could not save the end of its create (its '
               'database was unreachable); the container was created: '
               'start it')
FAILED_CREATE = ('the create failed while zun-compute could not reach its '
                 'database; delete it and create it again')


def settle_lost_results(context, containers, host, sandbox_of, refresh):
    """Finish the record of operations whose end zun could not save.

    zun-compute saves an operation's result (and clears its task state)
    once the driver returned; when the database is away at that moment
    (a MariaDB restart), the save fails, zun's attempt to record the
    failure fails too, and the row keeps the task state for ever: the
    periodic sync leaves containers with a task state alone, and the
    operation is over. zun holds its lock on the container for the
    whole operation, so a container that has such a task state while
    nobody in this zun-compute holds that lock has lost its result. The
    sandbox is the truth: the row is refreshed from it, under the lock
    and from a fresh read (the sync's copy may be older than an
    operation that just ended).

    :param context: an admin context over all projects.
    :param containers: the sync's containers (only Container objects of
        ``host`` with one of :data:`LOCKED_TASKS` are looked at).
    :param host: this zun-compute's host name.
    :param sandbox_of: callable (runtime id) -> the sandbox or None.
    :param refresh: callable (zun container, sandbox) copying its state.
    :returns: the uuids settled.
    """
    settled = []
    for stale in containers:
        if (not isinstance(stale, objects.Container) or
                stale.host != host or stale.task_state not in LOCKED_TASKS):
            continue
        try:
            with lockutils.internal_lock(stale.uuid, blocking=False):
                container = objects.Container.get_by_uuid(context,
                                                          stale.uuid)
                if container.task_state not in LOCKED_TASKS:
                    continue        # it ended and was saved meanwhile
                task = container.task_state
                sandbox = sandbox_of(runtime_id_of(container.uuid))
                container.task_state = None
                if sandbox is not None:
                    container.container_id = sandbox.id
                    refresh(container, sandbox)
                    if task == consts.CONTAINER_CREATING:
                        container.status_reason = LOST_CREATE
                elif task == consts.CONTAINER_CREATING:
                    container.status = consts.ERROR
                    container.status_reason = FAILED_CREATE
                # else: no sandbox after a start or a stop: the ordinary
                # sync says "sandbox missing" at its next pass.
                container.save(context)
        except lockutils.AcquireLockFailedException:
            continue                # an operation is at work on it
        except zun_exc.ContainerNotFound:
            continue
        LOG.warning('Container %s kept task state %s after its operation '
                    'ended (zun-compute could not save the result): '
                    'settled as %s from its sandbox', container.uuid, task,
                    container.status)
        settled.append(container.uuid)
    return settled
