"""Files into and out of a running container (``docker cp``, Zun's
``get_archive``/``put_archive``).

A mixin of :class:`kata_zun.runtime.manager.Runtime`. The guest makes
and unpacks the tar; what comes back from it is bounded in bytes and
time and type-checked before it reaches the CLI or Zun's API.
"""

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF

# Bytes kept of an archiving process's stderr (for its error message).
_ERR_LIMIT = 4096
# Seconds an archive may take to go in or out of a container.
_ARCHIVE_TIMEOUT = 600.0


class ArchiveMixin(object):
    """Archive operations of :class:`kata_zun.runtime.manager.Runtime`."""

    def get_archive(self, ref, path, limit=None):
        """A tar of ``path`` in a running container (like docker cp).

        The caller gets it whole (Zun's RPC returns bytes), so it is read
        up to ``limit`` bytes and no further: past that the archiving
        process is killed and the request refused.

        :param limit: most bytes (default ``[kata] archive_max_bytes``).
        :returns: (tar bytes, stat dict: name, size, mode, mtime,
                  linkTarget)
        :raises: NotFound, Conflict, ImageLimitExceeded (over ``limit``)
        """
        limit = CONF.kata.archive_max_bytes if limit is None else limit
        c, client = self._running_client(ref)
        with client:
            result = self._process_call(client, 'archive_get',
                                        {'path': path})
            handle = result['proc']
            out, err, code = client.exchange(
                handle, None, limit, _ERR_LIMIT, _ARCHIVE_TIMEOUT,
                stop_over=True)
            if code is None:
                try:
                    client.call('signal', {'proc': handle, 'signal': 9})
                except exception.KataZunException:
                    pass       # it may have ended meanwhile
                raise exception.ImageLimitExceeded(
                    reason='the archive of %s is larger than %d bytes '
                    '([kata] archive_max_bytes)' % (path, limit))
        if code != 0:
            raise exception.NotFound(what='%s in %s: %s' % (
                path, c.id[:12], _guest_text(err)))
        return out, _clean_stat(result.get('stat'))

    def put_archive(self, ref, path, data):
        """Extract the tar ``data`` under directory ``path``.

        ``data`` goes to the shim in bounded chunks while the process's
        output is read, so neither side can stall the other.

        :raises: NotFound, Conflict, InvalidInput (bad archive)
        """
        c, client = self._running_client(ref)
        with client:
            result = self._process_call(client, 'archive_put',
                                        {'path': path})
            _out, err, code = client.exchange(
                result['proc'], data, _ERR_LIMIT, _ERR_LIMIT,
                _ARCHIVE_TIMEOUT)
        if code != 0:
            raise exception.InvalidInput(reason='cannot extract into %s: '
                                         '%s' % (path, _guest_text(err)))

    @staticmethod
    def _process_call(client, op, args):
        try:
            return client.call(op, args,
                               timeout=CONF.kata_agent.request_timeout)
        except exception.ShimError as exc:
            if 'no such file' in str(exc) or 'not a directory' in str(exc):
                raise exception.NotFound(what=str(exc))
            raise


def _guest_text(data):
    """Bounded, printable text of what a guest process wrote."""
    from kata_zun.shim import guestdata
    return guestdata.printable(bytes(data).strip(), _ERR_LIMIT)


def _clean_stat(stat):
    """Type-check and bound the guest's stat of an archived path.

    It goes to Zun's API as it is.
    """
    stat = stat if isinstance(stat, dict) else {}

    def number(key):
        value = stat.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if ok and 0 <= value < 2 ** 63 else 0

    def text(key):
        value = stat.get(key)
        return value[:4096] if isinstance(value, str) else ''
    return {'name': text('name'), 'size': int(number('size')),
            'mode': int(number('mode')), 'mtime': number('mtime'),
            'linkTarget': text('linkTarget')}
