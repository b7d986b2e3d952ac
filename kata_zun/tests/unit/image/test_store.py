import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import store

CONF = conf.CONF
AS_ROOT = os.geteuid() == 0
EROFS_MAGIC = b'\xe2\xe1\xf5\xe0'  # 0xE0F5E1E2, little endian


def rewrite_archive(path, change):
    """Rewrite a tar archive, passing (name, data) through ``change``."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None)
                   for m in tar.getmembers()]
    with tarfile.open(path, 'w') as tar:
        for member, data in members:
            if data is not None:
                data = change(member.name, data)
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)


class StoreTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(self.tmp, 'store')
        self.store = store.ImageStore(self.root)
        self.messages = []

    def archive(self, name='image.tar', oci=False, **kwargs):
        path = os.path.join(self.tmp, name)
        if oci:
            busybox.write_oci_archive(path, **kwargs)
        else:
            busybox.write_docker_archive(path, **kwargs)
        return path

    def load(self, path):
        return self.store.load_archive(path, progress=self.messages.append)

    def extract(self, record):
        """Extract a block image with the filesystem's own tools."""
        out = os.path.join(self.tmp, 'extracted')
        shutil.rmtree(out, ignore_errors=True)
        if record.block_fs == 'erofs':
            subprocess.run(['fsck.erofs', '--extract=' + out,
                            record.block_image], check=True,
                           capture_output=True)
        else:
            os.mkdir(out)
            subprocess.run(['debugfs', '-R', 'rdump / ' + out,
                            record.block_image], check=True,
                           capture_output=True)
        return out

    def assertStoreClean(self):
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))
        self.assertEqual([], os.listdir(os.path.join(self.root, 'block')))
        self.assertEqual([], os.listdir(os.path.join(self.root, 'images')))
        self.assertEqual([], self.store.list())

    def test_load_docker_archive(self):
        image_id = busybox.write_docker_archive(
            os.path.join(self.tmp, 'image.tar'),
            repo_tags=['busybox:latest', 'docker.io/library/busybox:1'],
            config_overrides={'User': 'app', 'WorkingDir': '/home/app'})
        [record] = self.load(os.path.join(self.tmp, 'image.tar'))
        self.assertEqual(image_id, record.id)
        self.assertEqual(['busybox:1', 'busybox:latest'], record.repo_tags)
        self.assertEqual({'Cmd': ['sh'], 'Env': [busybox.PATH_ENV],
                          'User': 'app', 'WorkingDir': '/home/app'},
                         record.config)
        self.assertEqual(('amd64', 'linux', busybox.CREATED, 'erofs'),
                         (record.architecture, record.os, record.created,
                          record.block_fs))
        self.assertGreater(record.size, 1024 * 1024)
        self.assertEqual(os.path.join(self.root, 'block',
                                      image_id[7:] + '.img'),
                         record.block_image)
        with open(record.block_image, 'rb') as f:
            f.seek(1024)
            self.assertEqual(EROFS_MAGIC, f.read(4))
        subprocess.run(['fsck.erofs', record.block_image], check=True,
                       capture_output=True)
        self.assertIn('Loading layer 1/1 (sha256:', self.messages[1])
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))

        out = self.extract(record)
        self.assertEqual('busybox', os.readlink(os.path.join(out, 'bin/sh')))
        with open(os.path.join(out, 'etc/passwd')) as f:
            self.assertIn('app:x:1000:1000:', f.read())
        # Without root, fsck.erofs applies the umask when extracting.
        if AS_ROOT:
            self.assertEqual(0o1777, stat.S_IMODE(
                os.stat(os.path.join(out, 'tmp')).st_mode))
            self.assertEqual(1000, os.stat(os.path.join(out,
                                                        'home/app')).st_uid)

    def test_load_oci_archive_multi_layer(self):
        path = self.archive(
            oci=True, nested=True, image_name='docker.io/library/app:v1',
            extra_files={'etc/motd': b'hi', 'data/a': b'a', 'data/b': b'b'},
            layers=[[('etc/motd', 'whiteout'), ('data', 'opaque'),
                     ('data/c', 'file', b'c')],
                    [('etc/new', 'file', b'new', 0o600)]])
        [record] = self.load(path)
        self.assertEqual(['app:v1'], record.repo_tags)
        self.assertIn('Loading layer 3/3 (sha256:', self.messages[3])
        out = self.extract(record)
        self.assertFalse(os.path.lexists(os.path.join(out, 'etc/motd')))
        self.assertEqual(['c'], os.listdir(os.path.join(out, 'data')))
        self.assertEqual(0o600, stat.S_IMODE(
            os.stat(os.path.join(out, 'etc/new')).st_mode))

    def test_oci_ref_name_only(self):
        path = self.archive(oci=True, image_name=None,
                            ref_name='example.com/ns/app:2')
        [record] = self.load(path)
        self.assertEqual(['example.com/ns/app:2'], record.repo_tags)
        # A bare tag names no repository: loaded untagged.
        path = self.archive(oci=True, image_name=None, ref_name='3',
                            extra_files={'x': b''})
        [record] = self.load(path)
        self.assertEqual([], record.repo_tags)

    def test_ext4(self):
        self.flags(block_fs='ext4', group='kata_image')
        [record] = self.load(self.archive())
        self.assertEqual('ext4', record.block_fs)
        subprocess.run(['e2fsck', '-fn', record.block_image], check=True,
                       capture_output=True)
        out = self.extract(record)
        self.assertEqual('busybox', os.readlink(os.path.join(out, 'bin/ls')))

    def test_same_image_built_once(self):
        [first] = self.load(self.archive(repo_tags=['a:1']))
        mtime = os.stat(first.block_image).st_mtime_ns
        [second] = self.load(self.archive(oci=True, image_name='b:1'))
        self.assertEqual(first.id, second.id)
        self.assertEqual(['a:1', 'b:1'], second.repo_tags)
        self.assertEqual(mtime, os.stat(second.block_image).st_mtime_ns)
        self.assertIn('already loaded', self.messages[-1])
        self.assertEqual(1, len(self.store.list()))

    def test_tag_moves_on_reload(self):
        [old] = self.load(self.archive(repo_tags=['app:1', 'app:old']))
        [new] = self.load(self.archive(repo_tags=['app:1'],
                                       extra_files={'v2': b''}))
        self.assertNotEqual(old.id, new.id)
        self.assertEqual(new.id, self.store.get('app:1').id)
        self.assertEqual(['app:old'], self.store.get(old.id).repo_tags)
        self.assertEqual([new.id, old.id],
                         sorted(r.id for r in self.store.list()))

    def test_gzipped_archive_with_linked_layer(self):
        # docker save stores a repeated layer once and links to it.
        same = [('f', 'file', b'same')]
        path = self.archive(busybox=None, layers=[same, [('g', 'dir')],
                                                  same])
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read() if m.isreg() else None)
                       for m in tar.getmembers()]
        layer_tars = [m.name for m, _data in members
                      if m.name.endswith('/layer.tar')]
        with gzip.open(path + '.gz', 'wb') as f:
            with tarfile.open(fileobj=f, mode='w') as tar:
                for member, data in members:
                    if member.name == layer_tars[2]:
                        member.type = tarfile.SYMTYPE
                        member.linkname = '../' + layer_tars[0]
                        data = None
                    tar.addfile(member, None if data is None
                                else io.BytesIO(data))
        [record] = self.load(path + '.gz')
        out = self.extract(record)
        self.assertEqual(['f', 'g'], sorted(os.listdir(out)))

    def test_get(self):
        [record] = self.load(self.archive())
        hexid = record.id[7:]
        for ref in ('busybox', 'busybox:latest', record.id, hexid,
                    hexid[:4], hexid[:12], 'sha256:' + hexid[:12]):
            self.assertEqual(record, self.store.get(ref), ref)
        for ref in ('busybox:other', 'nosuch', hexid[:3], '', 'sha256:',
                    'sha256:busybox', 'BAD NAME', None):
            self.assertRaises(exception.ImageNotFound, self.store.get, ref)

    def test_remove(self):
        [record] = self.load(self.archive(repo_tags=['a:1', 'b:1']))
        e = self.assertRaises(exception.ImageInUse, self.store.remove, 'a:1',
                              users=['c2', 'c1'])
        self.assertIn('c1, c2', str(e))
        self.assertFalse(self.store.remove('a:1'))
        self.assertEqual(['b:1'], self.store.get(record.id).repo_tags)
        self.assertRaises(exception.ImageNotFound, self.store.remove, 'a:1')
        self.assertRaises(exception.ImageInUse, self.store.remove, 'b:1',
                          users=['c1'])
        self.assertTrue(self.store.remove('b:1'))
        self.assertFalse(os.path.exists(record.block_image))
        self.assertRaises(exception.ImageNotFound, self.store.get, record.id)
        with open(os.path.join(self.root, 'tags.json')) as f:
            self.assertEqual({}, json.load(f))
        self.assertStoreClean()

    def test_remove_by_id_removes_all_tags(self):
        [record] = self.load(self.archive(repo_tags=['a:1', 'b:1']))
        self.assertTrue(self.store.remove(record.id[7:19]))
        self.assertStoreClean()

    def test_docker_config_digest_mismatch(self):
        path = self.archive()

        def change(name, data):
            if name.endswith('.json') and '/' not in name and \
                    name != 'manifest.json':
                return data.replace(b'"sh"', b'"ls"')
            return data
        rewrite_archive(path, change)
        e = self.assertRaises(exception.ImageError, self.load, path)
        self.assertIn('digest mismatch', str(e))
        self.assertStoreClean()

    def test_docker_layer_diff_id_mismatch(self):
        path = self.archive(busybox=None, extra_files={'f': b'data'})
        rewrite_archive(path, lambda name, data: data.replace(b'data',
                                                              b'evil'))
        e = self.assertRaises(exception.ImageError, self.load, path)
        self.assertIn('the config says', str(e))
        self.assertStoreClean()

    def test_oci_blob_digest_mismatch(self):
        path = self.archive(oci=True, busybox=None,
                            extra_files={'f': b'data'})
        rewrite_archive(path, lambda name, data: (
            data[:-1] + bytes([data[-1] ^ 1])
            if name.startswith('blobs/') and data[:2] == b'\x1f\x8b'
            else data))
        e = self.assertRaises(exception.ImageError, self.load, path)
        self.assertIn('digest mismatch', str(e))
        self.assertStoreClean()

    def test_unsafe_layer_leaves_store_clean(self):
        outside = os.path.join(self.tmp, 'outside')
        os.mkdir(outside)
        path = self.archive(busybox=None, layers=[
            [('escape', 'symlink', outside)],
            [('escape/pwned', 'file', b'x')]])
        self.assertRaises(exception.UnsafeLayerMember, self.load, path)
        self.assertEqual([], os.listdir(outside))
        self.assertStoreClean()

    def test_bad_paths_in_manifest(self):
        for bad in ('../etc/passwd', '/etc/passwd'):
            path = self.archive(busybox=None, extra_files={'f': b''})

            def change(name, data):
                if name != 'manifest.json':
                    return data
                doc = json.loads(data)
                doc[0]['Layers'] = [bad]
                return json.dumps(doc).encode()
            rewrite_archive(path, change)
            e = self.assertRaises(exception.ImageError, self.load, path)
            self.assertIn('not a relative path', str(e))
        self.assertStoreClean()

    def test_manifest_size_limit(self):
        self.flags(max_manifest_bytes=1024, group='kata_image')
        path = self.archive(busybox=None, extra_files={'f': b''},
                            config_overrides={'Env': ['X=' + 'x' * 2000]})
        self.assertRaises(exception.ImageLimitExceeded, self.load, path)
        self.assertStoreClean()

    def test_not_an_archive(self):
        path = os.path.join(self.tmp, 'junk.tar')
        with tarfile.open(path, 'w') as tar:
            tar.addfile(tarfile.TarInfo('hello'))
        self.assertRaises(exception.ImageError, self.load, path)
        with open(path, 'wb') as f:
            f.write(b'not a tar' * 1000)
        self.assertRaises(exception.ImageError, self.load, path)
        self.assertStoreClean()

    def test_leftovers_removed_on_open(self):
        [record] = self.load(self.archive())
        stale = os.path.join(self.root, 'tmp', 'load-stale')
        os.makedirs(os.path.join(stale, 'rootfs', 'bin'))
        orphan = os.path.join(self.root, 'block', 'f' * 64 + '.img')
        partial = os.path.join(self.root, 'images', '.tmp-x')
        for path in (orphan, partial):
            with open(path, 'w'):
                pass
        store.ImageStore(self.root)
        self.assertEqual([], os.listdir(os.path.join(self.root, 'tmp')))
        self.assertFalse(os.path.exists(orphan))
        self.assertFalse(os.path.exists(partial))
        self.assertTrue(os.path.exists(record.block_image))

    def test_busy_workdir_kept_on_open(self):
        with self.store._workdir() as work:
            store.ImageStore(self.root)
            self.assertTrue(os.path.isdir(work))
        self.assertFalse(os.path.exists(work))
