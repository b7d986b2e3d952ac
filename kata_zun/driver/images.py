"""Images for KataDriver: registry pulls, Glance, commit, per project.

zun asks for an image by name right after it pulled or committed it;
names are per project (:meth:`kata_zun.image.store.ImageStore.scoped`),
content is shared. Heavy work (unpacking, commit) runs in eventlet's
thread pool, a few at a time.
"""

import collections
import weakref

import eventlet
from eventlet import semaphore
from eventlet import tpool
from oslo_log import log as logging
from zun.common import exception as zun_exc

from kata_zun import conf
from kata_zun.driver import common
from kata_zun.driver.common import wrap as _wrap
from kata_zun import exception
from kata_zun.runtime import faultpoint

CONF = conf.CONF
LOG = logging.getLogger(__name__)

IMAGE_DRIVER = 'docker'     # what zun-api sends for registry images
RUNTIME_NAME = 'kata'
# Bounds image work in eventlet's thread pool (see _image_work).
_IMAGE_SLOTS = None
# zun asks for an image by name, without the project, right after it
# pulled or committed it (see KataDriver._remember).
_RECENT_PER_THREAD = 8


#: In the image dict of a sandbox image that was not pulled.
SANDBOX_MARK = 'kata_sandbox_not_pulled'


def _is_sandbox_image(repo, tag, driver_name):
    """:returns: True for zun's ``[DEFAULT] sandbox_image``."""
    from zun.common import utils as zun_utils
    import zun.conf
    zconf = zun.conf.CONF
    if (driver_name or IMAGE_DRIVER) != zconf.sandbox_image_driver:
        return False
    try:
        want = zun_utils.parse_image_name(zconf.sandbox_image,
                                          zconf.sandbox_image_driver)
    except Exception:
        return False
    return (repo, tag) == tuple(want)


def _name_key(name):
    from kata_zun.image import reference
    try:
        return reference.parse(name).name
    except (exception.InvalidReference, TypeError, AttributeError):
        return None


class ImageDriverMixin(object):
    """KataDriver's image calls."""

    def _images(self, context):
        """The image store as the request's project sees it: names are
        per project (see ImageStore.scoped), content is shared.
        """
        project = getattr(context, 'project_id', None)
        if project:
            return self.rt.images.scoped(str(project))
        return self.rt.images

    def _recent(self):
        # Created on first use: per driver, keyed by green thread.
        return self.__dict__.setdefault('_recent_images',
                                        weakref.WeakKeyDictionary())

    def _remember(self, names, image_id, store):
        """Remember what this green thread pulled or committed.

        zun asks for it by name, without the project, right after and in
        the same green thread (inspect_image, get_image, read_tar_image):
        {name or ('id', id): (image id, the project's store view)}, per
        green thread, so that no other request ever sees it.
        """
        recent = self._recent().setdefault(eventlet.getcurrent(),
                                           collections.OrderedDict())
        for key in [_name_key(n) for n in names] + [('id', image_id)]:
            if key:
                recent[key] = (image_id, store)
                recent.move_to_end(key)
        while len(recent) > _RECENT_PER_THREAD:
            recent.popitem(last=False)

    def _recall(self, name=None, image_id=None):
        """(image id, store view) remembered for ``name`` or
        ``image_id`` by this green thread, or None.
        """
        key = ('id', image_id) if image_id else _name_key(name)
        return (self._recent().get(eventlet.getcurrent()) or {}).get(key)

    def _image_work(self, func, *args, **kwargs):
        """Run image work (pull, load, commit) in eventlet's thread pool,
        a few at a time: however many are requested, they leave most of
        the pool's threads to the rest of zun-compute.
        """
        global _IMAGE_SLOTS
        if _IMAGE_SLOTS is None:
            # Half the pool at most.
            _IMAGE_SLOTS = semaphore.Semaphore(max(1, min(
                CONF.kata_image.max_concurrent_pulls,
                tpool._nthreads // 2)))
        with _IMAGE_SLOTS:
            return tpool.execute(func, *args, **kwargs)

    @_wrap
    def pull_image(self, context, repo, tag, image_pull_policy='always',
                   driver_name=None, registry=None):
        """Make ``repo:tag`` available locally.

        zun-compute also "pulls" ``[DEFAULT] sandbox_image`` for every
        capsule (the pause container of CRI runtimes); a kata capsule's
        sandbox is its VM, so that image is not pulled here: the answer
        says so (:data:`SANDBOX_MARK`), and a container that runs that
        very image pulls it at create.

        :returns: (image dict, True): the image is loaded into the store.
        """
        if _is_sandbox_image(repo, tag, driver_name):
            return {'image': repo, 'tag': tag, 'repo': repo,
                    'driver': driver_name or IMAGE_DRIVER, 'path': None,
                    'id': None, 'tags': [], SANDBOX_MARK: True}, True
        return self._pull_image(context, repo, tag, image_pull_policy,
                                driver_name, registry)

    def _pull_image(self, context, repo, tag, image_pull_policy,
                    driver_name, registry):
        ref = '%s:%s' % (repo, tag) if tag else repo
        store = self._images(context)
        if driver_name == 'glance':
            return self._pull_glance(context, repo, tag, image_pull_policy,
                                     registry)
        if image_pull_policy != 'never':
            # The fault matrix (tools/fault-matrix-zun.py) kills here.
            faultpoint.reached('zun-pull')
            credentials = None
            if registry is not None and getattr(registry, 'username', None):
                credentials = {'username': registry.username,
                               'password': registry.password}
            record = self._image_work(store.pull, ref,
                                      policy=image_pull_policy,
                                      credentials=credentials)
        else:
            record = store.get(ref)
        self._remember([ref] + record.repo_tags, record.id, store)
        return {'image': repo, 'tag': tag, 'repo': repo,
                'driver': driver_name or IMAGE_DRIVER, 'path': None,
                'id': record.id, 'tags': record.repo_tags}, True

    @_wrap
    def load_image(self, path):
        # zun loads an image right after pull_image (Glance), which has
        # already loaded it into the project's names.
        self._image_work(self.rt.images.load_archive, path)

    @_wrap
    def inspect_image(self, image):
        recalled = self._recall(image)
        if recalled:
            # The project's image of that name, just pulled.
            record = recalled[1].get(recalled[0])
            tags = [_name_key(image)] + [t for t in record.repo_tags
                                         if t != _name_key(image)]
        else:
            record = self.rt.images.get(image)
            tags = record.repo_tags
        return {'Id': record.id, 'RepoTags': tags,
                'Size': record.size, 'Config': record.config,
                'Architecture': record.architecture, 'Os': record.os}

    @_wrap
    def delete_image(self, context, img_id, image_driver=None):
        store = self._images(context)
        record = store.get(img_id)
        store.remove(img_id, users=self.rt.image_users(record.id))

    @_wrap
    def search_image(self, context, repo, tag, driver_name, exact_match):
        """``openstack appcontainer image search``.

        For the glance image driver, Glance is searched as zun's Docker
        driver does (images of container_format ``docker``, by name).
        Otherwise the host's image store is (the images this project
        pulled, loaded or committed, and the operator's): a registry has
        no search API (Docker Hub's search is not part of the
        distribution API, and zun's Docker driver refuses every other
        registry).

        :param exact_match: the name must equal ``repo``; otherwise
            ``repo`` is a substring of the name.
        :returns: list of dicts ``id``, ``name``, ``tags`` (the
            versions), ``size``, ``metadata`` (Glance: its image
            objects).
        """
        import zun.conf
        driver_name = driver_name or zun.conf.CONF.default_image_driver
        if driver_name == 'glance':
            from zun.image.glance import driver as glance_driver
            return glance_driver.GlanceDriver().search_image(
                context, repo, tag, exact_match)
        wanted = _name_key(repo)
        if wanted is None:
            raise exception.InvalidInput(reason='invalid image name %r'
                                         % repo)
        # A name without a tag is stored with ":latest"; the search is
        # on the repository part.
        wanted = wanted.rpartition(':')[0] if ':' in wanted.rsplit(
            '/', 1)[-1] else wanted
        found = {}
        # The project's names, then the host operator's (CLI) names,
        # which every project's lookups find too.
        store = self._images(context)
        records = store.list()
        if store is not self.rt.images:
            records += self.rt.images.list()
        for record in records:
            for name in record.repo_tags or ():
                base, _, version = name.rpartition(':')
                if exact_match and base != wanted and base != repo:
                    continue
                if not exact_match and repo not in base:
                    continue
                if tag and version != str(tag):
                    continue
                # The columns of ``image search`` (ID, Name, Tags, Size,
                # Metadata), as zun's Glance results have them.
                entry = found.setdefault((base, record.id), {
                    'name': base, 'id': record.id, 'tags': [],
                    'size': record.size,
                    'metadata': {'created': record.created}})
                if version not in entry['tags']:
                    entry['tags'].append(version)
        return sorted(found.values(), key=lambda e: (e['name'], e['id']))

    # ------------------------------------------- commit and Glance
    @_wrap
    def commit(self, context, container, repository=None, tag=None):
        """Commit the container as ``repository:tag`` in the store.

        zun pauses the container first; the runtime unpauses its VM for
        the read (the agent freezes the container's cgroup instead) and
        pauses it again.

        :returns: the new image id.
        """
        ref = str(repository)
        if tag is not None and str(tag) != 'None':
            ref += ':' + str(tag)
        # Committed untagged, then named for the project alone.
        record = self._image_work(self.rt.commit, container.container_id)
        store = self._images(context)
        record = store.tag(record.id, ref)
        self._remember([ref], record.id, store)
        env = (record.config or {}).get('Env') or []
        if env:
            LOG.warning('Image %s committed from container %s holds the '
                        "container's %d environment variables (Env): "
                        'whoever can use the image reads them',
                        record.id, container.uuid, len(env))
        return record.id

    @_wrap
    def get_image(self, name):
        """The ``docker save`` stream of an image, for zun's upload.

        A file-like iterator of chunks, not a generator: zun's Glance
        driver would join a generator in memory, while glanceclient
        streams a file-like object.
        """
        from kata_zun.image import export
        # zun asks for the image it just committed, by name, without the
        # project: the project's view that commit remembered names it.
        store = (self._recall(name) or (None, self.rt.images))[1]
        store.get(name)
        return export.ExportStream(store, [name])

    def create_image(self, context, image_name, image_driver):
        try:
            return image_driver.create_image(context, image_name)
        except Exception as exc:
            LOG.exception('creating Glance image %s failed', image_name)
            raise common.zun_error(zun_exc.ZunException, exc)

    def upload_image_data(self, context, image, image_tag, image_data,
                          image_driver):
        try:
            image_driver.update_image(context, image.id, tag=image_tag)
            return image_driver.upload_image_data(context, image.id,
                                                  image_data)
        except Exception as exc:
            LOG.exception('uploading Glance image %s failed', image.id)
            raise common.zun_error(zun_exc.ZunException, exc)

    def delete_committed_image(self, context, img_id, image_driver):
        try:
            image_driver.delete_committed_image(context, img_id)
        except Exception as exc:
            LOG.exception('deleting Glance image %s failed', img_id)
            raise common.zun_error(zun_exc.ZunException, exc)

    def _pull_glance(self, context, repo, tag, image_pull_policy, registry):
        """Download through zun's Glance driver, load into the store."""
        from zun.image.glance import driver as glance_driver
        image, _loaded = glance_driver.GlanceDriver().pull_image(
            context, repo, tag, image_pull_policy, registry)
        store = self._images(context)
        records = self._image_work(store.load_archive, image['path'])
        self._remember(records[0].repo_tags, records[0].id, store)
        image.update({'driver': 'glance', 'repo': repo, 'tag': tag,
                      'id': records[0].id})
        image.setdefault('tags', [])
        return image, True

    def read_tar_image(self, image):
        """Name the image after a RepoTags entry of its tar (``repo``,
        ``tag``), like zun's docker driver; ``tags`` stays Glance's.

        zun's docker driver takes the first entry; an archive with
        several names is better served by the one that was asked for:
        the requested repo and tag, else the requested repo, else the
        first.
        """
        from kata_zun.image import reference
        image.setdefault('tags', [])
        # The project's view of the store that _pull_glance loaded into.
        recalled = self._recall(image_id=image.get('id'))
        store = recalled[1] if recalled else self.rt.images
        try:
            record = store.get(image.get('id') or image['repo'])
        except (exception.KataZunException, KeyError) as exc:
            LOG.warning('reading the tar image %s: %s', image.get('path'),
                        exc)
            return
        image['id'] = record.id
        if not record.repo_tags:
            image['repo'], image['tag'] = record.id.split(':', 1)[1], ''
            return
        refs = [reference.parse(t) for t in record.repo_tags]
        wanted = (image.get('repo'), image.get('tag') or 'latest')
        ref = next((r for r in refs if (r.repo, r.tag) == wanted), None) \
            or next((r for r in refs if r.repo == wanted[0]), refs[0])
        image['repo'], image['tag'] = ref.repo, ref.tag
