"""End to end: ``openstack appcontainer commit`` uploads to a real Glance.

zun-api creates the Glance image record, zun-compute pauses the
container, calls the driver's commit and get_image, and streams the
``docker save`` archive into glance-api (file store); a new container
then runs from that Glance image on a host store that no longer has it.
"""

import re
import time

from kata_zun.tests.functional import test_zun_e2e


class ZunCommitToGlanceTest(test_zun_e2e.ZunEndToEndBase):

    GLANCE = True

    def host_image_ids(self):
        """Ids (12 digits) of the images of the host's store."""
        r = self.kz('images')
        self.assertEqual(0, r.returncode, r.stderr)
        return {line.split()[2] for line in r.stdout.splitlines()[1:]
                if len(line.split()) >= 3}

    def glance_image(self, image_id, timeout=120):
        idc = self.env._identity_client()
        deadline = time.time() + timeout
        while True:
            status, _, meta = idc.request(
                'GET', '%s/v2/images/%s' % (self.env.glance_url, image_id))
            self.assertEqual(200, status, meta)
            if meta['status'] == 'active':
                return meta
            self.assertNotIn(meta['status'], ('killed', 'deleted'), meta)
            self.assertLess(time.time(), deadline, meta)
            time.sleep(1)

    def test_commit_uploads_to_glance_and_runs_from_it(self):
        self.os('appcontainer', 'run', '--name', 'c1',
                '--image-pull-policy', 'ifnotpresent', 'busybox', 'sh',
                '-c', 'echo committed through zun > /root/mark; '
                'while true; do sleep 1; done')
        self.wait_status('c1', ('Running',))
        deadline = time.time() + 30
        while 'committed' not in self.os('appcontainer', 'exec', 'c1',
                                         'cat', '/root/mark', check=False)[1]:
            self.assertLess(time.time(), deadline)
            time.sleep(1)

        before = self.host_image_ids()
        out = self.os('appcontainer', 'commit', 'c1', 'kzsnap:v1')[1]
        # zun-api answers with the Glance image it created.
        image_id = re.findall(
            r'\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b', out)
        self.assertEqual(1, len(image_id), out)
        meta = self.glance_image(image_id[0])
        self.assertEqual('docker', meta['container_format'])
        self.assertEqual('kzsnap', meta['name'])
        self.assertEqual(['v1'], meta['tags'])
        self.assertGreater(meta['size'], 100 * 1024)
        # image search with the glance driver searches Glance, exactly
        # or by part of the name, as zun's Docker driver does.
        for name, exact, found in (('kzsnap:v1', True, True),
                                   ('kzsn:v1', False, True),
                                   ('kzsn:v1', True, False)):
            out = self.os('appcontainer', 'image', 'search', '-f', 'json',
                          '--image-driver', 'glance', *(
                              ('--exact-match',) if exact else ()),
                          name)[1]
            self.assertEqual(found, image_id[0] in out, (name, exact, out))
        # zun paused the container for the commit, then unpaused it.
        info = self.wait_status('c1', ('Running',), timeout=60)
        self.assertEqual('Running', info['status'])

        # The name is the project's, not the host CLI's.
        self.assertNotIn('kzsnap', self.kz('images').stdout)
        committed = self.host_image_ids() - before
        self.assertEqual(1, len(committed), committed)
        # Forget the committed image on the host (the operator deletes
        # by id): the next container can only get it from Glance.
        r = self.kz('rmi', *committed)
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertFalse(committed & self.host_image_ids())

        self.os('appcontainer', 'run', '--name', 'c2', '--image-driver',
                'glance', 'kzsnap:v1', 'cat', '/root/mark')
        info = self.wait_status('c2', ('Stopped', 'Error'), timeout=180)
        self.assertEqual('Stopped', info['status'], info)
        self.assertIn('committed through zun',
                      self.os('appcontainer', 'logs', 'c2')[1])
        self.assertTrue(committed <= self.host_image_ids())

        for name in ('c1', 'c2'):
            self.os('appcontainer', 'delete', '--force', name)
