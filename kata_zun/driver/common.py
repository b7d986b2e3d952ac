"""What the parts of the Zun driver share: error translation and ids."""

from zun.common import exception as zun_exc

from kata_zun import exception


def runtime_id(container):
    """The runtime id of a Zun container: its uuid without dashes."""
    return runtime_id_of(container.uuid)


def runtime_id_of(uuid):
    """:returns: the runtime id of the Zun container ``uuid``."""
    return uuid.replace('-', '')


def zun_error(cls, reason):
    """:returns: zun exception ``cls`` saying ``reason`` as it is.

    zun's exceptions printf-format their message with their keyword
    arguments: a message of ours holding a ``%`` ("QEMU got 1.9 % of a
    CPU") would become a TypeError instead of the reason a user reads.
    """
    return cls('%(reason)s', reason=str(reason))


def wrap(func):
    """Turn kata-zun errors into the zun exceptions the API expects."""
    def wrapper(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except exception.ContainerNotFound as exc:
            raise zun_error(zun_exc.Invalid, exc)
        except exception.ImageNotFound as exc:
            raise zun_error(zun_exc.ImageNotFound, exc)
        except exception.Conflict as exc:
            raise zun_error(zun_exc.Conflict, exc)
        except exception.InvalidInput as exc:
            raise zun_error(zun_exc.Invalid, exc)
        except exception.KataZunException as exc:
            raise zun_error(zun_exc.ZunException, exc)
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper
