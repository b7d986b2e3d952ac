from oslotest import base

from kata_zun import exception
from kata_zun.image import reference

HEX = 'a' * 64


class ReferenceTestCase(base.BaseTestCase):

    def test_good(self):
        cases = [
            ('busybox', (None, 'busybox', 'latest', None), 'busybox:latest'),
            ('busybox:1.36', (None, 'busybox', '1.36', None),
             'busybox:1.36'),
            ('ns/app_x.y:v1-rc_2', (None, 'ns/app_x.y', 'v1-rc_2', None),
             'ns/app_x.y:v1-rc_2'),
            ('a__b/c---d', (None, 'a__b/c---d', 'latest', None),
             'a__b/c---d:latest'),
            ('host:5000/ns/repo:tag', ('host:5000', 'ns/repo', 'tag', None),
             'host:5000/ns/repo:tag'),
            ('localhost/repo', ('localhost', 'repo', 'latest', None),
             'localhost/repo:latest'),
            ('Registry.Example.com/repo', ('Registry.Example.com', 'repo',
                                           'latest', None),
             'Registry.Example.com/repo:latest'),
            ('name@sha256:' + HEX, (None, 'name', None, 'sha256:' + HEX),
             'name@sha256:' + HEX),
            ('name:t@sha256:' + HEX, (None, 'name', 't', 'sha256:' + HEX),
             'name:t@sha256:' + HEX),
            ('docker.io/library/busybox:1', (None, 'busybox', '1', None),
             'busybox:1'),
            ('docker.io/ns/app', (None, 'ns/app', 'latest', None),
             'ns/app:latest'),
        ]
        for text, fields, name in cases:
            ref = reference.parse(text)
            self.assertEqual(fields, (ref.registry, ref.repository, ref.tag,
                                      ref.digest), text)
            self.assertEqual(name, ref.name)
            self.assertEqual(name, str(ref))
            self.assertEqual(ref, reference.parse(name))

    def test_repo(self):
        self.assertEqual('host:5000/ns/repo',
                         reference.parse('host:5000/ns/repo:t').repo)
        self.assertEqual('repo', reference.parse('repo:t').repo)

    def test_bad(self):
        cases = {
            '': 'empty',
            'BusyBox': 'lowercase',
            'busybox:': 'invalid tag',
            'busybox:-x': 'invalid tag',
            'busybox:' + 'x' * 129: 'invalid tag',
            'a//b': 'component',
            'a/-b': 'component',
            'a..b': 'component',
            '/busybox': 'component',
            'busybox/': 'component',
            'busy box': 'component',
            'ex$ample.com/a': 'registry',
            'host:port/a': 'registry',
            'name@sha256:abc': 'digest',
            'name@md5:' + HEX: 'digest',
            'name@sha256:' + 'A' * 64: 'digest',
            ':tag': 'empty repository',
            'a' * 256: 'longer',
        }
        for text, reason in cases.items():
            e = self.assertRaises(exception.InvalidReference,
                                  reference.parse, text)
            self.assertIn(reason, str(e), text)
        self.assertRaises(exception.InvalidReference, reference.parse, None)

    def test_is_digest(self):
        self.assertTrue(reference.is_digest('sha256:' + HEX))
        self.assertTrue(reference.is_digest('sha512:' + 'b' * 128))
        self.assertFalse(reference.is_digest('sha256:' + HEX[1:]))
        self.assertFalse(reference.is_digest(HEX))
