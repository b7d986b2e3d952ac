"""The network plugin interface (os-vif style) and network errors.

A plugin gives a container its network at start and takes it back at
removal. What :meth:`NetworkPlugin.plug` returns, the *attachment*, is
stored next to the container record (``network.json``) and read by the
shim::

    {'network': 'bridge', 'bridge': 'kz0',
     'nics': [{'tap': 'kzt0123456789ab', 'mac': '02:6b:0a:58:00:02'}],
     'guest': {'interfaces': [{'mac': ..., 'address': '10.88.0.2',
                               'prefix': 16, 'mtu': 1500,
                               'gateway': '10.88.0.1'}],
               'dns': ['10.88.0.1'], 'hostname': 'web'},
     'address': '10.88.0.2', 'prefix': 16, 'gateway': '10.88.0.1',
     'mac': ..., 'ports': [mapping, ...]}

``nics`` become :class:`kata_zun.hypervisor.base.Nic`, ``guest`` is the
``network`` argument of the agent's ``create_sandbox``.
"""

import abc

from kata_zun import exception


class NetworkError(exception.KataZunException):
    msg_fmt = 'Network error: %(reason)s'


class NetworkPlugin(metaclass=abc.ABCMeta):
    """One kind of network."""

    name = None

    def __init__(self, state_dir):
        """:param state_dir: this plugin's directory for records."""
        self.state_dir = state_dir

    @abc.abstractmethod
    def validate(self, request, is_known=None):
        """Check a request at create time; makes nothing.

        :param request: {'network': name, 'ports': [mapping, ...]}.
        :param is_known: callable(cid) -> bool, to ignore what belongs
                         to containers that no longer exist.
        :raises: InvalidInput, Conflict, NetworkError
        """

    @abc.abstractmethod
    def plug(self, cid, hostname, request):
        """Make the container's network before its VM boots.

        Idempotent for a container plugged before; on failure nothing of
        this container's network is left.

        :returns: the attachment dict.
        :raises: InvalidInput, Conflict, NetworkError
        """

    @abc.abstractmethod
    def unplug(self, cid):
        """Remove everything made for ``cid``; nothing if nothing is left.

        :returns: True if something was removed.
        :raises: NetworkError
        """

    def reconcile(self, is_known):
        """Remove what was made for containers that no longer exist.

        :param is_known: callable(cid) -> bool.
        :returns: the ids cleaned up.
        """
        return []
