"""Our Glance client against a real glance-api (issue 3).

:class:`zun_env.ZunEnvironment` brings up keystone and glance-api (file
store, keystone auth, under gunicorn) without zun; the real CLI uploads a
``docker save`` image with ``kata-zun glance-upload``, Glance is checked
directly, then ``kata-zun glance-load`` downloads it into a fresh store
and ``kata-zun run`` boots it in a VM.

Needs glance in the Python running the tests (e2e-requirements.txt).
"""

import hashlib
import os
import sys
import tempfile
import uuid

import fixtures

from kata_zun.tests.functional import base
from kata_zun.tests.functional import zun_env

# Variables of the caller's cloud that would win over the environment's.
_CLEARED = ('OS_TOKEN', 'OS_CLOUD', 'OS_CACERT', 'OS_SYSTEM_SCOPE',
            'OS_PROJECT_ID', 'OS_USER_ID', 'OS_DOMAIN_NAME', 'OS_DOMAIN_ID')


def _file_digest(path):
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b''):
            md5.update(chunk)
    return os.path.getsize(path), md5.hexdigest()


class GlanceTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        try:
            import glance  # noqa: F401
        except ImportError:
            self.fail('glance is not installed in %s: pip install -r '
                      'e2e-requirements.txt' % sys.prefix)
        work = self.useFixture(fixtures.TempDir()).path
        self.env = zun_env.ZunEnvironment(
            sys.prefix, os.path.join(work, 'env'), glance=True, zun=False)
        self.addCleanup(self.env.stop)
        self.addOnException(self._attach_logs)
        self.env.start()
        # The CLI (a child process) finds keystone through OS_*.
        for key in _CLEARED:
            self.useFixture(fixtures.EnvironmentVariable(key))
        for key, value in self.env.os_environ().items():
            self.useFixture(fixtures.EnvironmentVariable(key, value))
        no_proxy = '%s,localhost' % zun_env.HOST_IP
        for key in ('no_proxy', 'NO_PROXY'):
            self.useFixture(fixtures.EnvironmentVariable(key, no_proxy))

    def _attach_logs(self, exc_info):
        from testtools import content
        self.addDetail('service-logs', content.text_content(
            self.env.logs_tail()))

    def glance(self, method, path, body=None):
        idc = self.env._identity_client()
        status, _, resp = idc.request(method, self.env.glance_url + path,
                                      body)
        self.assertLess(status, 300, '%s %s: %s' % (method, path, resp))
        return resp

    def fresh_store(self):
        """Point the CLI at a new, empty state path (and run path)."""
        self._remove_all()
        state = tempfile.mkdtemp(prefix='state2-', dir=os.path.dirname(
            self.conf_file))
        os.symlink(os.path.realpath(os.path.join(self.state_path, 'guest')),
                   os.path.join(state, 'guest'))
        run_path = tempfile.mkdtemp(prefix='kz', dir='/tmp')
        self.addCleanup(self._rmtree, run_path)
        with open(self.conf_file) as f:
            text = f.read()
        text = text.replace('state_path = %s\n' % self.state_path,
                            'state_path = %s\n' % state)
        text = text.replace('run_path = %s\n' % self.run_path,
                            'run_path = %s\n' % run_path)
        conf = os.path.join(os.path.dirname(self.conf_file), 'fresh.conf')
        with open(conf, 'w') as f:
            f.write(text)
        self.conf_file, self.state_path = conf, state

    @staticmethod
    def _rmtree(path):
        import shutil
        shutil.rmtree(path, ignore_errors=True)

    def test_upload_then_load_and_run(self):
        self.load_busybox('busybox:glance')
        saved = os.path.join(self.state_path, 'saved.tar')
        self.kz('save', '-o', saved, 'busybox:glance', check=0)
        size, checksum = _file_digest(saved)

        r = self.kz('glance-upload', 'busybox:glance', 'kz-busybox:glance',
                    check=0)
        image_id = r.text.strip()
        meta = self.glance('GET', '/v2/images/%s' % image_id)
        self.assertEqual('active', meta['status'])
        self.assertEqual('docker', meta['container_format'])
        self.assertEqual('raw', meta['disk_format'])
        self.assertEqual('kz-busybox:glance', meta['name'])
        self.assertEqual(['glance'], meta['tags'])
        # What Glance stored is byte for byte what `kata-zun save` writes.
        self.assertEqual(size, meta['size'])
        self.assertEqual(checksum, meta['checksum'])
        stored = os.path.join(self.env.glance_store_dir, image_id)
        self.assertEqual((size, checksum), _file_digest(stored))

        self.fresh_store()
        self.assertNotIn('busybox', self.kz('images', check=0).text)
        r = self.kz('glance-load', image_id, check=0)
        self.assertIn('Loaded image: busybox:glance', r.text)
        r = self.kz('run', '--rm', '--pull', 'never', 'busybox:glance',
                    'sh', '-c', 'echo from glance; busybox | head -n 1',
                    check=0)
        self.assertTrue(r.text.startswith('from glance\nBusyBox'), r)

    def test_load_errors(self):
        # No such image: a clear error, nothing loaded.
        r = self.kz('glance-load', str(uuid.uuid4()))
        self.assertNotEqual(0, r.code)
        self.assertIn(b'no such image', r.err.lower())
        # Not a docker image: refused before any data is read.
        image = self.glance('POST', '/v2/images', {
            'name': 'a-disk', 'container_format': 'bare',
            'disk_format': 'raw'})
        r = self.kz('glance-load', image['id'])
        self.assertNotEqual(0, r.code)
        self.assertIn(b"container_format 'bare'", r.err)
        # Nothing was loaded: the store lists no image (header only).
        self.assertEqual([], self.kz('images', check=0).text.splitlines()[1:])
