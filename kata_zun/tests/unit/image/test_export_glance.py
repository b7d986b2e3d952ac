"""Blobs, gc and docker-save export of the store; the Glance client
against a stdlib HTTP server speaking the Glance v2 calls it uses."""

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import fixtures
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import busybox
from kata_zun.image import export
from kata_zun.image import glance
from kata_zun.image import store

CONF = conf.CONF


class _StoreTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(CONF))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.store = store.ImageStore(os.path.join(self.tmp, 'store'))

    def load(self, oci=False, **kwargs):
        path = os.path.join(self.tmp, 'in.tar')
        if oci:
            busybox.write_oci_archive(path, **kwargs)
        else:
            busybox.write_docker_archive(path, **kwargs)
        return self.store.load_archive(path)[0]

    def blobs(self):
        return sorted(os.listdir(os.path.join(self.store.root, 'blobs',
                                              'sha256')))


class ExportTestCase(_StoreTest):

    def check_save(self, data):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            manifest = json.load(tar.extractfile('manifest.json'))
            configs = []
            for entry in manifest:
                config = json.loads(tar.extractfile(entry['Config']).read())
                digests = ['sha256:' + hashlib.sha256(
                    tar.extractfile(n).read()).hexdigest()
                    for n in entry['Layers']]
                self.assertEqual(config['rootfs']['diff_ids'], digests)
                configs.append(config)
            json.load(tar.extractfile('repositories'))
        return manifest, configs

    def test_oci_gzip_layers_kept_uncompressed_and_exported(self):
        record = self.load(oci=True, image_name='oci:1',
                           layers=[[('x', 'file', 'y')]])
        self.assertEqual(2, len(record.layers))
        self.assertEqual(3, len(self.blobs()))
        out = io.BytesIO()
        self.store.export(['oci:1'], out)
        manifest, configs = self.check_save(out.getvalue())
        self.assertEqual(['oci:1'], manifest[0]['RepoTags'])
        self.assertEqual(record.id.split(':')[1] + '.json',
                         manifest[0]['Config'])
        # The saved tar loads into another store as the same image.
        other = store.ImageStore(os.path.join(self.tmp, 'other'))
        path = os.path.join(self.tmp, 'saved.tar')
        with open(path, 'wb') as f:
            f.write(out.getvalue())
        self.assertEqual(record.id, other.load_archive(path)[0].id)

    def test_two_images_share_layers_and_stream_reads(self):
        self.load(repo_tags=('a:1',))
        self.load(repo_tags=('b:1',), layers=[[('f', 'file', 'b')]])
        stream = export.ExportStream(self.store, ['a:1', 'b:1'])
        data = b''
        while True:
            chunk = stream.read(7777)
            if not chunk:
                break
            data += chunk
        manifest, _ = self.check_save(data)
        self.assertEqual(manifest[0]['Layers'][0], manifest[1]['Layers'][0])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(data, b''.join(
            export.ExportStream(self.store, ['a:1', 'b:1'])))

    def test_missing_image(self):
        self.assertRaises(exception.ImageNotFound, self.store.export,
                          ['nope'], io.BytesIO())

    def test_remove_and_gc(self):
        base_img = self.load(repo_tags=('a:1',))
        base_blobs = self.blobs()
        self.load(repo_tags=('b:1',), layers=[[('f', 'file', 'b')]])
        self.assertEqual(4, len(self.blobs()))
        stray = os.path.join(self.store.root, 'blobs', 'sha256', 'ab' * 32)
        open(stray, 'w').close()
        removed = self.store.gc()
        self.assertEqual(['sha256:' + 'ab' * 32], removed['blobs'])
        self.assertEqual(4, len(self.blobs()))
        self.store.remove('b:1')
        self.assertEqual(base_blobs, self.blobs())
        self.store.remove('a:1')
        self.assertEqual([], self.blobs())
        self.assertRaises(exception.ImageNotFound, self.store.get,
                          base_img.id)

    def test_image_without_blobs_is_refused_then_repaired(self):
        record = self.load(repo_tags=('a:1',))
        for name in self.blobs():
            os.unlink(os.path.join(self.store.root, 'blobs', 'sha256',
                                   name))
        self.assertRaises(exception.ImageError, self.store.export,
                          ['a:1'], io.BytesIO())
        self.assertEqual(record.id, self.load(repo_tags=('a:1',)).id)
        self.store.export(['a:1'], io.BytesIO())


class _FakeGlance(http.server.BaseHTTPRequestHandler):
    """Glance v2, the calls the client uses; records every exchange."""

    images = {}
    log = []

    def log_message(self, *args):
        pass

    def _send(self, code, body=None, ctype='application/json'):
        data = json.dumps(body).encode() if isinstance(body, dict) else (
            body or b'')
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        if self.headers.get('Transfer-Encoding') == 'chunked':
            data = b''
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if not size:
                    self.rfile.readline()
                    return data, True
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length', 0))), \
            False

    def _record(self, chunked=False):
        self.log.append((self.command, self.path,
                         self.headers.get('X-Auth-Token'), chunked))

    def do_POST(self):
        body, _ = self._body()
        self._record()
        doc = json.loads(body)
        image_id = '%08d-0000-0000-0000-000000000000' % len(self.images)
        doc.update(id=image_id, status='queued', size=None, checksum=None)
        self.images[image_id] = doc
        self._send(201, doc)

    def do_PUT(self):
        data, chunked = self._body()
        self._record(chunked)
        image_id = self.path.split('/')[3]
        image = self.images[image_id]
        image.update(data=data, size=len(data), status='active',
                     checksum=hashlib.md5(data).hexdigest())
        self._send(204)

    def do_GET(self):
        self._record()
        parts = self.path.split('/')
        image = self.images.get(parts[3])
        if image is None:
            return self._send(404, {'message': 'no such image'})
        if len(parts) == 5 and parts[4] == 'file':
            return self._send(200, image['data'],
                              'application/octet-stream')
        self._send(200, {k: v for k, v in image.items() if k != 'data'})

    def do_DELETE(self):
        self._record()
        self.images.pop(self.path.split('/')[3], None)
        self._send(204)


class GlanceClientTestCase(_StoreTest):

    def setUp(self):
        super().setUp()
        _FakeGlance.images = {}
        _FakeGlance.log = []
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                 _FakeGlance)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = 'http://127.0.0.1:%d' % server.server_address[1]
        sess = ks_session.Session(auth=token_endpoint.Token(url, 'tok'))
        self.client = glance.GlanceClient(sess)

    def test_upload_then_load_into_a_fresh_store(self):
        record = self.load(repo_tags=('app:v2',),
                           layers=[[('f', 'file', 'x')]])
        image_id = self.client.upload(self.store, 'app:v2', 'app:v2')
        meta = _FakeGlance.images[image_id]
        self.assertEqual('docker', meta['container_format'])
        self.assertEqual(['v2'], meta['tags'])
        methods = [(m, p.split('/')[-1], tok, chunked)
                   for m, p, tok, chunked in _FakeGlance.log]
        self.assertEqual([('POST', 'images', 'tok', False),
                          ('PUT', 'file', 'tok', True)], methods)
        fresh = store.ImageStore(os.path.join(self.tmp, 'fresh'))
        loaded = self.client.load(fresh, image_id)
        self.assertEqual(record.id, loaded[0].id)
        self.assertEqual(['app:v2'], loaded[0].repo_tags)

    def test_load_refuses_other_formats_and_bad_data(self):
        _FakeGlance.images['bad'] = {'id': 'bad', 'status': 'active',
                                     'container_format': 'bare',
                                     'data': b'x'}
        self.assertRaises(glance.GlanceError, self.client.load,
                          self.store, 'bad')
        _FakeGlance.images['sum'] = {'id': 'sum', 'status': 'active',
                                     'container_format': 'docker',
                                     'checksum': '0' * 32, 'data': b'x'}
        self.assertRaises(glance.GlanceError, self.client.load,
                          self.store, 'sum')
        self.assertRaises(exception.ImageNotFound, self.client.load,
                          self.store, 'missing')
        self.assertEqual([], self.store.list())

    def test_failed_upload_deletes_the_glance_image(self):
        self.assertRaises(exception.ImageNotFound, self.client.upload,
                          self.store, 'nosuch', 'x:1')
        self.assertEqual({}, _FakeGlance.images)
