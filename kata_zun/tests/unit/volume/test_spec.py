"""Parsing and validation of volume requests (-v, --mount)."""

from oslotest import base

from kata_zun import exception
from kata_zun.volume import spec


class ParseTestCase(base.BaseTestCase):

    def test_v_named_and_bind(self):
        self.assertEqual({'type': 'volume', 'source': 'data',
                          'target': '/srv/data', 'readonly': False},
                         spec.parse_v('data:/srv//data/'))
        self.assertEqual({'type': 'bind', 'source': '/home/x',
                          'target': '/x', 'readonly': True},
                         spec.parse_v('/home/./x/:/x:ro'))
        self.assertFalse(spec.parse_v('d:/x:rw')['readonly'])

    def test_mount_fields_and_aliases(self):
        self.assertEqual(
            {'type': 'block', 'source': '/images/a.img', 'target': '/data',
             'readonly': True},
            spec.parse_mount('type=block,source=/images/a.img,'
                             'target=/data,readonly'))
        self.assertEqual(
            {'type': 'volume', 'source': 'v', 'target': '/d',
             'readonly': False},
            spec.parse_mount('src=v,dst=/d,readonly=false'))
        self.assertTrue(spec.parse_mount('source=v,destination=/d,ro=1')
                        ['readonly'])

    def test_hostile_requests_are_refused(self):
        bad_v = ['', 'x', ':/d', 'v:', 'v:rel', 'v:/', 'v:/a/../../etc',
                 'v:/a:rw,exec', 'v:/a:ro:z', '../x:/a', '.x:/a',
                 'a' * 65 + ':/a', 'v:/' + 'a' * 5000, 'v\0:/a',
                 'v:/a\0b', '/host\0:/a']
        for text in bad_v:
            self.assertRaises(exception.InvalidInput, spec.parse_v, text)
        bad_mount = ['type=block,source=rel.img,target=/d',
                     'type=nfs,source=a,target=/d', 'source=a',
                     'target=/d', 'source=a,target=/d,bogus=1',
                     'source=a,source=b,target=/d',
                     'source=a,target=/d,readonly=maybe',
                     'type=volume,source=/abs,target=/d']
        for text in bad_mount:
            self.assertRaises(exception.InvalidInput, spec.parse_mount,
                              text)

    def test_check_all(self):
        a = spec.parse_v('a:/d')
        b = spec.parse_v('b:/d/')
        self.assertRaises(exception.InvalidInput, spec.check_all, [a, b])
        many = [spec.parse_v('v%d:/d%d' % (i, i)) for i in range(17)]
        self.assertRaises(exception.InvalidInput, spec.check_all, many)
        self.assertEqual(many[:16], spec.check_all(many[:16]))
        self.assertEqual([], spec.check_all(None))
