"""kata-zun exceptions.

One class per failure, each with a ``msg_fmt`` filled from keyword
arguments (the os-vif style)::

    KataZunException
     +-- InvalidInput            bad user input (CLI, Zun request)
     |    +-- InvalidReference     image name/reference
     +-- NotFound
     |    +-- ContainerNotFound
     |    +-- ImageNotFound
     +-- Conflict                state does not allow the operation
     |    +-- ContainerNameInUse
     |    +-- ImageInUse
     +-- HostCheckFailed         this host cannot run VMs
     +-- GuestAssetError         building/finding kernel or initrd
     +-- ImageError              bad image content
     |    +-- UnsafeLayerMember    traversal, symlink escape, bad hardlink
     |    +-- ImageLimitExceeded   size/count limits
     +-- HypervisorError         QEMU failed (see hypervisor.qemu.qmp for QMP)
     |    +-- NicHotplugError
     |    +-- JailError            QEMU cannot be confined as configured
     +-- AgentError              the guest agent link
     |    +-- AgentProtocolError   malformed/oversized frame: link closed
     |    +-- AgentTimeout
     |    +-- AgentRequestFailed   the agent answered with an error
     +-- ContainerStartFailed    the container's process did not start
     +-- InsufficientResources   the host cannot fit a start (memory)
     +-- ShimError               talking to a sandbox shim
          +-- ShimUnresponsive     connected, but no handshake in time
"""


class KataZunException(Exception):
    msg_fmt = 'An unknown error occurred'

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.message = message
        super().__init__(message)


class InvalidInput(KataZunException):
    msg_fmt = 'Invalid input: %(reason)s'


class InvalidReference(InvalidInput):
    msg_fmt = 'Invalid image reference %(ref)r: %(reason)s'


class NotFound(KataZunException):
    msg_fmt = 'Not found: %(what)s'


class ContainerNotFound(NotFound):
    msg_fmt = 'No such container: %(ref)s'


class ImageNotFound(NotFound):
    msg_fmt = 'No such image: %(ref)s'


class Conflict(KataZunException):
    msg_fmt = 'Conflict: %(reason)s'


class ContainerNameInUse(Conflict):
    # Docker's words, so that what users and scripts look for is there.
    msg_fmt = ('Conflict. The container name %(name)r is already in use by '
               'container %(id)s. You have to remove (or rename) that '
               'container to be able to reuse that name.')


class ImageInUse(Conflict):
    msg_fmt = 'Image %(ref)s is used by container(s) %(containers)s'


class HostCheckFailed(KataZunException):
    msg_fmt = 'This host cannot run kata-zun VMs: %(reason)s'


class GuestAssetError(KataZunException):
    msg_fmt = 'Guest asset error: %(reason)s'


class ImageError(KataZunException):
    msg_fmt = 'Bad image: %(reason)s'


class UnsafeLayerMember(ImageError):
    msg_fmt = 'Unsafe layer member %(member)r: %(reason)s'


class ImageLimitExceeded(ImageError):
    msg_fmt = 'Image exceeds a limit: %(reason)s'


class HypervisorError(KataZunException):
    msg_fmt = 'Hypervisor error: %(reason)s'


class NicHotplugError(HypervisorError):
    msg_fmt = 'NIC hotplug failed: %(reason)s'


class JailError(HypervisorError):
    msg_fmt = 'Cannot confine QEMU: %(reason)s'


class AgentError(KataZunException):
    msg_fmt = 'Agent error: %(reason)s'


class AgentProtocolError(AgentError):
    msg_fmt = 'Agent protocol violation, link closed: %(reason)s'


class AgentTimeout(AgentError):
    msg_fmt = 'Agent did not answer %(what)s within %(timeout)s s'


class AgentRequestFailed(AgentError):
    msg_fmt = 'Agent refused %(op)s: %(reason)s'


class ContainerStartFailed(KataZunException):
    msg_fmt = 'The container process could not start: %(reason)s'


class InsufficientResources(KataZunException):
    """A start does not fit on this host (see
    :mod:`kata_zun.runtime.admission`); zun shows it as its own
    ResourcesUnavailable.
    """
    msg_fmt = 'Insufficient resources: %(reason)s'


class ShimError(KataZunException):
    msg_fmt = 'Sandbox shim error: %(reason)s'


class ShimUnresponsive(ShimError):
    """The shim took the connection but did not shake hands in time:
    late (a starved host) or hung, not known to be gone.
    """
