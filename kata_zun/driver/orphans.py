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

"""Creates that a dead zun-compute cut before zun could see them.

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

from oslo_log import log as logging
from zun.common import consts
from zun.common import exception as zun_exc
from zun import objects

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
