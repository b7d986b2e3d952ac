"""What a pull from a registry fails with.

::

    KataZunException
     +-- RegistryError           the registry refused, failed or misbehaved
          +-- RegistryAuthError  credentials refused, or needed and missing
          +-- PullTimeout        [kata_image] pull_timeout passed
          +-- ConnectionFailed   a connection failed or broke (retryable
                                 unless nothing listens or the name does
                                 not resolve); kept inside the package:
                                 what leaves it is a RegistryError

What the registry sent that is no image we accept is
``kata_zun.exception.ImageError`` (:func:`bad`), ``ImageLimitExceeded``
or ``ImageNotFound``.
"""

from kata_zun import exception


class RegistryError(exception.KataZunException):
    msg_fmt = 'Registry %(registry)s: %(reason)s'


class RegistryAuthError(RegistryError):
    msg_fmt = 'Registry %(registry)s: authentication failed: %(reason)s'


class PullTimeout(RegistryError):
    msg_fmt = ('Registry %(registry)s: the pull did not finish within '
               '%(seconds)d s ([kata_image] pull_timeout)')


class ConnectionFailed(RegistryError):
    """The connection failed or broke: worth another try, unless nothing
    listens there or the name does not resolve (``retryable`` False).
    """

    retryable = True


def bad(reason):
    """:returns: the ImageError of a document or blob we refuse."""
    return exception.ImageError(reason=reason)
