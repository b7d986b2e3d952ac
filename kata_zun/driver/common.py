"""What the parts of the Zun driver share: error translation and ids."""

from zun.common import exception as zun_exc

from kata_zun import exception


def runtime_id(container):
    """The runtime id of a Zun container: its uuid without dashes."""
    return runtime_id_of(container.uuid)


def runtime_id_of(uuid):
    """:returns: the runtime id of the Zun container ``uuid``."""
    return uuid.replace('-', '')


def wrap(func):
    """Turn kata-zun errors into the zun exceptions the API expects, and
    record the reason in the request's action (see
    :mod:`kata_zun.driver.actionevents`).
    """
    def wrapper(self, *args, **kwargs):
        try:
            return _translated(func, self, *args, **kwargs)
        except Exception as exc:
            from kata_zun.driver import actionevents
            actionevents.record_failure(func.__name__, args, exc)
            raise
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _zun_text(exc):
    """Our message as zun exceptions can carry it.

    They printf-format their message with their keyword arguments, and
    again in zun-api when an RPC call brings them back: a ``%`` of ours
    (``%cpu``, a guest's text) would be a TypeError (HTTP 500) in one or
    the other, whatever escaping.  So it becomes the full-width percent
    sign, which reads the same.
    """
    return str(exc).replace('%', '\uff05')


def zun_error(cls, reason):
    """:returns: zun exception ``cls`` saying ``reason`` (see
        :func:`_zun_text`).
    """
    return cls(_zun_text(reason))


def _translated(func, self, *args, **kwargs):
    try:
        return func(self, *args, **kwargs)
    except exception.ContainerNotFound as exc:
        raise zun_exc.Invalid(_zun_text(exc))
    except exception.ImageNotFound as exc:
        raise zun_exc.ImageNotFound(_zun_text(exc))
    except exception.Conflict as exc:
        raise zun_exc.Conflict(_zun_text(exc))
    except exception.InvalidInput as exc:
        raise zun_exc.Invalid(_zun_text(exc))
    except exception.InsufficientResources as exc:
        raise zun_exc.ResourcesUnavailable(_zun_text(exc))
    except exception.KataZunException as exc:
        raise zun_exc.ZunException(_zun_text(exc))
