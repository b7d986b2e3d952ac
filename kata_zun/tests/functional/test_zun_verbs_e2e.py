"""Zun fidelity with a real zun-api and zun-compute: a failed action's
reason in ``appcontainer show`` and ``appcontainer action show``, ``top``
with ps options, image search with exact_match, and registry objects
with credentials on a real docker-registry in basic-auth mode.
"""

import json
import os
import time

import fixtures

from kata_zun.image import busybox
from kata_zun.tests.functional import registry_fixture as rf
from kata_zun.tests.functional import test_zun_e2e


class ZunVerbsEndToEndTest(test_zun_e2e.ZunEndToEndBase):

    def action_events(self, name, action):
        """:returns: the events of the container's ``action``, as
            ``appcontainer action show`` gets them.
        """
        client = self.env.zun_client()
        request = [a.request_id for a in client.actions.list(name)
                   if a.action == action][0]
        return client.actions.get(name, request).events

    def wait_events(self, name, action, event):
        deadline = time.time() + 60
        while True:
            events = self.action_events(name, action)
            found = [e for e in events if e['event'] == event]
            if found and found[0]['finish_time']:
                return found[0], events
            self.assertLess(time.time(), deadline, events)
            time.sleep(1)

    def test_reasons_top_search_and_private_registry(self):
        # A start whose process cannot run: the reason in the status
        # and in the action, as with Docker's OCI error.
        self.os('appcontainer', 'run', '--name', 'nocmd',
                '--image-pull-policy', 'ifnotpresent', 'busybox',
                'no-such-command')
        info = self.wait_status('nocmd', ('Error',))
        self.assertIn('executable file not found', info['status_reason'])
        event, events = self.wait_events('nocmd', 'create', 'kata_start')
        self.assertTrue(event['result'].startswith(
            'Error: The container process could not start: '), event)
        self.assertIn('executable file not found', event['result'])
        self.assertLessEqual(len(event['result']), 255)
        # Admins also see our message and traceback first.
        self.assertIn('executable file not found', event['traceback'])
        self.assertIn('Error', [e['result'] for e in events if
                                e['event'] == 'compute__do_container_start'])
        # A create that fails (no such image on the registry).
        self.os('appcontainer', 'run', '--name', 'noimg',
                '--image-pull-policy', 'ifnotpresent', 'no-such-image',
                'true')
        info = self.wait_status('noimg', ('Error',))
        self.assertIn('no-such-image', info['status_reason'])
        event, _events = self.wait_events('noimg', 'create',
                                          'kata_pull_image')
        self.assertIn('no-such-image', event['result'])
        for name in ('nocmd', 'noimg'):
            self.os('appcontainer', 'delete', '--force', name)

        # top with ps options.
        self.os('appcontainer', 'run', '--name', 'ps1',
                '--image-pull-policy', 'ifnotpresent', 'busybox', 'sh',
                '-c', 'while true; do sleep 1; done')
        self.wait_status('ps1', ('Running',))
        client = self.env.zun_client()
        top = client.containers.top('ps1', ps_args='-o pid,comm,rss')
        self.assertEqual(['PID', 'COMMAND', 'RSS'], top['Titles'])
        self.assertIn('sh', [row[1] for row in top['Processes']])
        self.assertEqual(['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY',
                          'TIME', 'CMD'],
                         client.containers.top('ps1')['Titles'])
        from zunclient import exceptions as zun_client_exc
        e = self.assertRaises(zun_client_exc.BadRequest,
                              client.containers.top, 'ps1', ps_args='aux')
        self.assertIn('VSZ', str(e))
        self.os('appcontainer', 'delete', '--force', 'ps1')

        # Image search: substring, or the exact name with exact_match.
        found = json.loads(self.os('appcontainer', 'image', 'search',
                                   '-f', 'json', 'busy')[1])
        self.assertEqual(['busybox'], [f['Name'] for f in found])
        self.assertEqual(['latest'], found[0]['Tags'])
        found = json.loads(self.os('appcontainer', 'image', 'search',
                                   '-f', 'json', '--exact-match',
                                   'busy')[1])
        self.assertEqual([], found)
        found = json.loads(self.os('appcontainer', 'image', 'search',
                                   '-f', 'json', '--exact-match',
                                   'busybox')[1])
        self.assertEqual(['busybox'], [f['Name'] for f in found])

        # A registry object with credentials: a private image of a real
        # docker-registry (basic auth, plain HTTP on loopback).
        tmp = self.useFixture(fixtures.TempDir()).path
        registry = self.useFixture(rf.Registry('basic'))
        path = os.path.join(tmp, 'app.tar')
        busybox.write_oci_archive(path, extra_files={
            'etc/motd': b'from the private registry\n'})
        registry.push('oci-archive:' + path, 'team/app:1')
        # Without credentials: refused, with the registry's reason.
        self.os('appcontainer', 'run', '--name', 'anon',
                '%s/team/app:1' % registry.address, 'cat', '/etc/motd')
        info = self.wait_status('anon', ('Error',))
        self.assertIn('credentials', info['status_reason'])
        self.os('appcontainer', 'registry', 'create', '--name', 'private',
                '--username', rf.USER, '--password', rf.PASSWORD,
                '--domain', registry.address)
        self.os('appcontainer', 'run', '--name', 'priv', '--registry',
                'private', 'team/app:1', 'cat', '/etc/motd')
        self.wait_status('priv', ('Stopped', 'Running'))
        deadline = time.time() + 60
        while 'from the private registry' not in self.os(
                'appcontainer', 'logs', 'priv')[1]:
            self.assertLess(time.time(), deadline)
            time.sleep(1)
        for name in ('anon', 'priv'):
            self.os('appcontainer', 'delete', '--force', name)
        self.os('appcontainer', 'registry', 'delete', 'private')
