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

The volume mappings do name the host: zun saves them, with this host,
before it connects each volume. That is how a restarted zun-compute
knows these containers are its own. It adopts them: host set, ``Error``
with the reason, so that a delete goes through this zun-compute and
zun's ordinary delete path (volumes detached, dynamic volumes deleted,
the allocation freed).

Only a zun-compute that has just started may do this: while it runs, a
container between those two steps is a create in flight, not an orphan.
"""

from oslo_log import log as logging
from zun.common import consts
from zun.common import exception as zun_exc
from zun import objects

LOG = logging.getLogger(__name__)

REASON = ('zun-compute on %s stopped while it connected the volumes of '
          'this container, before the container was created: its volumes '
          'are released when it is deleted; delete it and create it again')


def cut_creates(context, host):
    """The containers of this host whose create died before the claim.

    :param context: an admin context over all projects.
    :param host: this zun-compute's host name.
    :returns: the :class:`zun.objects.Container` objects that are
        ``Creating``, have no host, and have a volume mapping on ``host``.
    """
    found = []
    for container in objects.Container.list(
            context, filters={'status': consts.CREATING}):
        if container.host:
            continue
        volmaps = objects.VolumeMapping.list_by_container(
            context, container.uuid)
        if any(v.host == host for v in volmaps):
            found.append(container)
    return found


def adopt_cut_creates(context, host):
    """Tag each cut create with ``host`` and fail it with the reason.

    Call it once, when zun-compute starts, before it serves any request.

    :param context: an admin context over all projects.
    :param host: this zun-compute's host name.
    :returns: the number of containers adopted.
    """
    adopted = 0
    for container in cut_creates(context, host):
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
