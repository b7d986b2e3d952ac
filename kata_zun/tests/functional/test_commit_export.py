"""Commit -> save -> load -> run in real VMs, through the real CLI."""

import hashlib
import json
import os
import tarfile

import fixtures

from kata_zun.image import busybox
from kata_zun.tests.functional import base
from kata_zun.tests.functional import registry_fixture as rf


def _blobs(state_path):
    return sorted(os.listdir(os.path.join(state_path, 'images', 'blobs',
                                          'sha256')))


def _blocks(state_path):
    return sorted(os.listdir(os.path.join(state_path, 'images', 'block')))


class CommitExportTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def _changed_container(self, name='c1'):
        self.kz('run', '-d', '--name', name, 'busybox', 'sleep', '1000',
                check=0)
        # A new file and a hard link, a deleted image file (whiteout) and
        # a directory replacing an image directory (opaque).
        self.kz('exec', name, 'sh', '-c',
                'mkdir -p /data && echo hello > /data/f && '
                'ln /data/f /data/hl && rm /etc/group && '
                'rm -rf /home && mkdir /home && echo new > /home/only',
                check=0)

    def _check_docker_save(self, path):
        """A valid docker save layout: returns (manifest, config, the
        members of the top layer).
        """
        with tarfile.open(path) as tar:
            names = tar.getnames()
            self.assertIn('manifest.json', names)
            self.assertIn('repositories', names)
            manifest = json.load(tar.extractfile('manifest.json'))
            self.assertEqual(1, len(manifest))
            entry = manifest[0]
            data = tar.extractfile(entry['Config']).read()
            self.assertEqual(entry['Config'],
                             hashlib.sha256(data).hexdigest() + '.json')
            config = json.loads(data)
            digests = ['sha256:' + hashlib.sha256(
                tar.extractfile(n).read()).hexdigest()
                for n in entry['Layers']]
            self.assertEqual(config['rootfs']['diff_ids'], digests)
            top = tar.extractfile(entry['Layers'][-1])
            with tarfile.open(fileobj=top) as layer:
                members = {m.name: m for m in layer.getmembers()}
        return manifest, config, members

    def test_commit_save_load_run(self):
        self._changed_container()
        r = self.kz('commit', '-m', 'my change', 'c1', 'myimg:v1', check=0)
        image_id = r.text.strip()
        self.assertTrue(image_id.startswith('sha256:'))
        out = os.path.join(self.state_path, 'out.tar')
        self.kz('save', '-o', out, 'myimg:v1', check=0)
        manifest, config, members = self._check_docker_save(out)
        self.assertEqual(['myimg:v1'], manifest[0]['RepoTags'])
        self.assertEqual(image_id.split(':')[1] + '.json',
                         manifest[0]['Config'])
        self.assertEqual(2, len(config['rootfs']['diff_ids']))
        self.assertEqual(['sleep', '1000'], config['config']['Cmd'])
        self.assertEqual('my change', config['history'][-1]['comment'])
        self.assertIn('etc/.wh.group', members)
        self.assertIn('home/.wh..wh..opq', members)
        self.assertTrue(members['data/hl'].islnk())
        self.assertEqual('data/f', members['data/hl'].linkname)
        self.assertNotIn('etc/hostname', members)
        self.assertFalse([m for m in members.values()
                          if m.ischr() or m.isblk()])

        # A fresh store: everything removed, then garbage collected.
        self.kz('rm', '-f', 'c1', check=0)
        self.kz('rmi', 'myimg:v1', 'busybox', check=0)
        self.kz('image-gc', check=0)
        self.assertEqual([], _blobs(self.state_path))
        self.assertEqual([], _blocks(self.state_path))
        r = self.kz('load', '-i', out, check=0)
        self.assertIn(b'Loaded image: myimg:v1', r.out)
        r = self.kz('images', check=0)
        self.assertIn(image_id.split(':')[1][:12], r.text)
        r = self.kz('run', '--rm', 'myimg:v1', 'sh', '-c',
                    'cat /data/f; ls /home; test -e /etc/group || '
                    'echo no-group; test -e /home/app || echo no-app; '
                    'stat -c %i /data/f /data/hl | uniq | wc -l', check=0)
        self.assertEqual(['hello', 'only', 'no-group', 'no-app', '1'],
                         r.text.split())
        # The committed Cmd runs by default.
        self.kz('run', '-d', '--name', 'c2', 'myimg:v1', check=0)
        r = self.kz('exec', 'c2', 'sh', '-c', 'cat /proc/1/cmdline | '
                    'tr "\\0" " "', check=0)
        self.assertEqual('sleep 1000', r.text.strip())

    def test_saved_base_image_round_trip(self):
        out = os.path.join(self.state_path, 'bb.tar')
        r = self.kz('images', check=0)
        self.kz('save', '-o', out, 'busybox', check=0)
        manifest, _config, _members = self._check_docker_save(out)
        self.assertEqual(['busybox:latest'], manifest[0]['RepoTags'])
        before = _blobs(self.state_path)
        self.kz('rmi', 'busybox', check=0)
        self.kz('load', '-i', out, check=0)
        self.assertEqual(before, _blobs(self.state_path))
        r = self.kz('run', '--rm', 'busybox', 'echo', 'ok', check=0)
        self.assertEqual(b'ok\n', r.out)

    def test_gc_keeps_used_blobs(self):
        base_blobs = _blobs(self.state_path)
        self.assertEqual(2, len(base_blobs))   # config + one layer
        self._changed_container()
        self.kz('commit', 'c1', 'myimg:v1', check=0)
        committed = _blobs(self.state_path)
        self.assertEqual(4, len(committed))
        self.assertEqual(2, len(_blocks(self.state_path)))
        # Leftovers nobody references.
        images = os.path.join(self.state_path, 'images')
        stray_blob = os.path.join(images, 'blobs', 'sha256', 'ab' * 32)
        stray_block = os.path.join(images, 'block', 'cd' * 32 + '.img')
        for path in (stray_blob, stray_block):
            with open(path, 'wb') as f:
                f.write(b'junk')
        r = self.kz('image-gc', check=0)
        self.assertIn('ab' * 32, r.text)
        # (A block image without a record goes whenever a store opens.)
        self.assertFalse(os.path.exists(stray_block))
        self.assertEqual(committed, _blobs(self.state_path))
        self.assertEqual(2, len(_blocks(self.state_path)))
        # The committed image's own blobs go with it; the base stays.
        self.kz('rmi', 'myimg:v1', check=0)
        self.assertEqual(base_blobs, _blobs(self.state_path))
        self.assertEqual(1, len(_blocks(self.state_path)))
        r = self.kz('run', '--rm', 'busybox', 'echo', 'ok', check=0)
        self.assertEqual(b'ok\n', r.out)

    def test_commit_paused_container(self):
        self._changed_container()
        self.kz('pause', 'c1', check=0)
        self.kz('commit', 'c1', 'paused:v1', check=0)
        r = self.kz('inspect', 'c1', check=0)
        self.assertEqual('paused', json.loads(r.out)[0]['State']['Status'])
        self.kz('unpause', 'c1', check=0)
        r = self.kz('run', '--rm', 'paused:v1', 'cat', '/home/only',
                    check=0)
        self.assertEqual(b'new\n', r.out)

    def test_commit_stopped_container_fails_cleanly(self):
        self.kz('run', '--name', 'done', 'busybox', 'sh', '-c',
                'echo x > /f', check=0)
        before = _blobs(self.state_path)
        r = self.kz('commit', 'done', 'never:v1', check=1)
        self.assertIn(b'commit needs its VM running', r.err)
        self.assertEqual(before, _blobs(self.state_path))
        self.assertNotIn(b'never', self.kz('images', check=0).out)
        r = self.kz('commit', 'nosuchcontainer', 'never:v1', check=1)
        self.assertIn(b'nosuchcontainer', r.err)

    def test_save_errors(self):
        r = self.kz('save', '-o', os.path.join(self.state_path, 'x.tar'),
                    'nosuchimage', check=1)
        self.assertIn(b'nosuchimage', r.err)
        self.assertFalse(os.path.exists(os.path.join(self.state_path,
                                                     'x.tar')))


class PulledRoundTripTestCase(base.KataZunFunctionalTest):
    """pull -> run -> commit -> save -> load -> run, from a real registry,
    and the committed image pushed back (skopeo reads our archive the way
    Docker's ``load`` does) and pulled by a store that never saw it.
    """

    def test_pull_run_commit_save_load_run_push_pull(self):
        reg = self.useFixture(rf.Registry('http'))
        with open(self.conf_file, 'a') as f:
            f.write('[kata_image]\ndefault_registry = %s\n'
                    'insecure_registries = %s\n' % (reg.address,
                                                    reg.address))
        tmp = self.useFixture(fixtures.TempDir()).path
        source = os.path.join(tmp, 'base.tar')
        busybox.write_oci_archive(source, extra_files={
            'etc/motd': b'from the registry\n'})
        reg.push('oci-archive:' + source, 'team/base:1')

        self.kz('run', '-d', '--name', 'c1', 'team/base:1', 'sleep',
                '1000', check=0)
        self.kz('exec', 'c1', 'sh', '-c',
                'echo committed > /root/mark && rm /etc/motd', check=0)
        self.kz('commit', 'c1', 'team/snap:2', check=0)
        out = os.path.join(tmp, 'snap.tar')
        self.kz('save', '-o', out, 'team/snap:2', check=0)
        self.kz('rm', '-f', 'c1', check=0)
        self.kz('rmi', 'team/snap:2', check=0)
        self.kz('rmi', 'team/base:1', check=0)
        self.assertEqual([], _blobs(self.state_path))

        r = self.kz('load', '-i', out, check=0)
        self.assertIn('team/snap:2', r.text)
        r = self.kz('run', '--rm', '--pull', 'never', 'team/snap:2', 'sh',
                    '-c', 'cat /root/mark; test -e /etc/motd || echo gone',
                    check=0)
        self.assertEqual(b'committed\ngone\n', r.out)

        # Push our docker-save archive with skopeo, pull it into a store
        # that never had it, and run it.
        reg.push('docker-archive:' + out, 'team/snap:pushed')
        self.kz('rmi', 'team/snap:2', check=0)
        self.assertEqual([], _blobs(self.state_path))
        r = self.kz('run', '--rm', 'team/snap:pushed', 'cat', '/root/mark',
                    check=0)
        self.assertEqual(b'committed\n', r.out[-10:])
        self.assertIn(b'Pulling %s/team/snap:pushed' % reg.address.encode(),
                      r.err)
