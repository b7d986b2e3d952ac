"""A small Glance v2 client on a keystoneauth1 session (no zun import).

Downloads ``docker save`` images (container_format ``docker``) into the
image store and uploads images of the store as ``docker save`` streams.
Inside zun-compute the driver uses zun's own Glance driver instead.

Only the Glance v2 calls needed::

    GET    /v2/images/<id>          metadata (container_format, size)
    GET    /v2/images/<id>/file     the data, streamed to disk
    POST   /v2/images               create (name, docker, raw)
    PUT    /v2/images/<id>/file     upload, chunked, streamed from store
    DELETE /v2/images/<id>          clean up after a failed upload
"""

import hashlib
import os

from oslo_log import log as logging

from kata_zun import exception

LOG = logging.getLogger(__name__)

CHUNK = 1024 * 1024
CONTAINER_FORMAT = 'docker'
DISK_FORMAT = 'raw'


class GlanceError(exception.KataZunException):
    msg_fmt = 'Glance: %(reason)s'


class GlanceClient(object):
    """Glance v2 through a keystoneauth1 session.

    :param session: a ``keystoneauth1.session.Session`` with auth.
    :param endpoint: the Glance URL, or None for the catalog's ``image``
        service.
    """

    def __init__(self, session, endpoint=None, interface='public',
                 region_name=None):
        self.session = session
        self.endpoint = endpoint.rstrip('/') if endpoint else None
        self.filter = {'service_type': 'image', 'interface': interface}
        if region_name:
            self.filter['region_name'] = region_name

    @classmethod
    def from_env(cls, endpoint=None, environ=None):
        """A client from the usual ``OS_*`` variables.

        ``OS_AUTH_URL`` with ``OS_USERNAME``/``OS_PASSWORD``/
        ``OS_PROJECT_NAME`` (and domains), or ``OS_TOKEN`` (with
        ``OS_AUTH_URL``, or with ``endpoint`` alone).
        """
        from keystoneauth1.identity import v3
        from keystoneauth1 import session as ks_session
        from keystoneauth1 import token_endpoint
        env = os.environ if environ is None else environ
        auth_url = env.get('OS_AUTH_URL')
        token = env.get('OS_TOKEN')
        if token and not auth_url:
            if not endpoint:
                raise exception.InvalidInput(
                    reason='OS_TOKEN without OS_AUTH_URL needs --glance-url')
            auth = token_endpoint.Token(endpoint, token)
        elif auth_url and token:
            auth = v3.Token(auth_url=auth_url, token=token,
                            project_name=env.get('OS_PROJECT_NAME'),
                            project_domain_name=env.get(
                                'OS_PROJECT_DOMAIN_NAME', 'Default'))
        elif auth_url:
            auth = v3.Password(
                auth_url=auth_url, username=env.get('OS_USERNAME'),
                password=env.get('OS_PASSWORD'),
                project_name=env.get('OS_PROJECT_NAME'),
                user_domain_name=env.get('OS_USER_DOMAIN_NAME', 'Default'),
                project_domain_name=env.get('OS_PROJECT_DOMAIN_NAME',
                                            'Default'))
        else:
            raise exception.InvalidInput(
                reason='set OS_AUTH_URL (and OS_USERNAME, OS_PASSWORD, '
                'OS_PROJECT_NAME) or OS_TOKEN')
        verify = env.get('OS_CACERT') or True
        return cls(ks_session.Session(auth=auth, verify=verify),
                   endpoint=endpoint,
                   interface=env.get('OS_INTERFACE', 'public'),
                   region_name=env.get('OS_REGION_NAME'))

    def _request(self, method, path, **kwargs):
        kwargs.setdefault('raise_exc', False)
        if self.endpoint:
            kwargs['endpoint_override'] = self.endpoint
        kwargs['endpoint_filter'] = dict(self.filter)
        try:
            resp = self.session.request(path, method, **kwargs)
        except Exception as exc:   # keystoneauth1 and requests errors
            raise GlanceError(reason='%s %s: %s' % (method, path, exc))
        if resp.status_code == 404:
            raise exception.ImageNotFound(ref='glance:' + path)
        if resp.status_code >= 400:
            raise GlanceError(reason='%s %s: HTTP %d %s' % (
                method, path, resp.status_code, resp.text[:500]))
        return resp

    # Metadata.

    def show(self, image_id):
        return self._request('GET', '/v2/images/%s' % image_id).json()

    def create(self, name, tags=()):
        """Create an image record.

        :returns: the image id.
        """
        body = {'name': name, 'container_format': CONTAINER_FORMAT,
                'disk_format': DISK_FORMAT, 'tags': list(tags)}
        return self._request('POST', '/v2/images', json=body).json()['id']

    def delete(self, image_id):
        self._request('DELETE', '/v2/images/%s' % image_id)

    # Data.

    def download(self, image_id, path):
        """Stream the data of a ``docker`` image into ``path``.

        :returns: the image metadata.
        :raises: ImageNotFound, GlanceError (wrong format, checksum)
        """
        meta = self.show(image_id)
        if meta.get('container_format') != CONTAINER_FORMAT:
            raise GlanceError(reason='image %s has container_format %r, '
                              'not %r' % (image_id,
                                          meta.get('container_format'),
                                          CONTAINER_FORMAT))
        if meta.get('status') not in (None, 'active'):
            raise GlanceError(reason='image %s is %s' % (
                image_id, meta['status']))
        resp = self._request('GET', '/v2/images/%s/file' % image_id,
                             stream=True, log=False)
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        with open(path, 'wb') as f:
            for chunk in resp.iter_content(CHUNK):
                md5.update(chunk)
                size += len(chunk)
                f.write(chunk)
        if meta.get('size') is not None and meta['size'] != size:
            raise GlanceError(reason='image %s: got %d bytes, not %d' % (
                image_id, size, meta['size']))
        if meta.get('checksum') and meta['checksum'] != md5.hexdigest():
            raise GlanceError(reason='image %s: checksum mismatch' %
                              image_id)
        return meta

    def upload_data(self, image_id, chunks):
        """Upload image data (an iterable of byte chunks), chunked."""
        self._request('PUT', '/v2/images/%s/file' % image_id,
                      data=iter(chunks), log=False,
                      headers={'Content-Type': 'application/octet-stream'})

    # With the store.

    def load(self, store, image_id, progress=None):
        """Download a Glance image and load it into the store.

        :returns: the loaded image records.
        """
        report = progress or (lambda message: None)
        with store.workdir() as work:
            path = os.path.join(work, 'glance-%s.tar' % image_id)
            report('Downloading Glance image %s' % image_id)
            self.download(image_id, path)
            return store.load_archive(path, progress=progress)

    def upload(self, store, ref, name, progress=None):
        """Upload image ``ref`` of the store as a new Glance image.

        :returns: the Glance image id.
        """
        from kata_zun.image import export
        from kata_zun.image import reference
        report = progress or (lambda message: None)
        record = store.get(ref)
        tag = reference.parse(name).tag if ':' in name.rsplit('/', 1)[-1] \
            else None
        image_id = self.create(name, tags=[tag] if tag else [])
        report('Uploading %s as Glance image %s' % (record.id, image_id))
        stream = export.ExportStream(store, [ref])
        try:
            self.upload_data(image_id, stream)
        except BaseException:
            stream.close()
            try:
                self.delete(image_id)
            except exception.KataZunException as exc:
                LOG.warning('Could not delete Glance image %s: %s',
                            image_id, exc)
            raise
        return image_id
