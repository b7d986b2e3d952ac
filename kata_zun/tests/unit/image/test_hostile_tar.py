"""Hostile layers and archives: bounded outcome, bounded peak memory.

Each shape is built on disk by the test and unpacked in a fresh child
process, which reports the growth of its peak RSS (VmHWM) over the
unpack, after a warm-up unpack has loaded every module it needs.  The
limit is a few MiB, whatever the shape.
"""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image import boundedtar
from kata_zun.image import busybox
from kata_zun.image import layers
from kata_zun.image import store

CONF = conf.CONF
# Growth of the peak RSS an unpack may cause, in KiB.
PEAK_LIMIT_KIB = 6 * 1024

_CHILD = textwrap.dedent('''
    import json, resource, sys
    # A bounded address space: an unbounded unpack fails here with a
    # MemoryError instead of taking the host's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from kata_zun import conf
    from kata_zun.image import archive, layers
    conf.CONF([], project='kata-zun')
    for key, value in json.loads(sys.argv[6]).items():
        conf.CONF.set_override(key, value, group='kata_image')

    def hwm():
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])

    def run(kind, path, work):
        if kind == 'layers':
            layers.apply_layers(work, path.split(','))
        else:
            archive.read_archive(path, work)

    kind, warmup, path, warm_work, work = sys.argv[1:6]
    run(kind, warmup, warm_work)
    before = hwm()
    error = None
    try:
        run(kind, path, work)
    except Exception as e:
        error = '%s: %s' % (type(e).__name__, e)
    print(json.dumps({'kib': hwm() - before, 'error': error}))
''')


def pax_record(key, value):
    """One ``"%d key=value\\n"`` record; the length counts itself."""
    body = ' %s=%s\n' % (key, value)
    length = len(body) + 1
    while len('%d%s' % (length, body)) != length:
        length += 1
    return ('%d%s' % (length, body)).encode()


def header(name, kind, size, linkname='', fmt=tarfile.USTAR_FORMAT):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    info.mode, info.mtime = 0o644, busybox.MTIME
    return info.tobuf(format=fmt)


def padded(data):
    return data + b'\0' * (-len(data) % tarfile.BLOCKSIZE)


def pax_header(records, kind=tarfile.XHDTYPE):
    return header('PaxHeader', kind, len(records)) + padded(records)


def many_keys(nbytes, prefix):
    """Pax records of distinct keys, about ``nbytes`` in all."""
    out, i = [], 0
    size = 0
    while size < nbytes:
        rec = pax_record('%s.%d' % (prefix, i), 'v')
        out.append(rec)
        size += len(rec)
        i += 1
    return b''.join(out)


def sparse_member(extension_blocks):
    """A GNU sparse member followed by ``extension_blocks`` blocks of
    sparse map, each saying another one follows.
    """
    info = tarfile.TarInfo('sparse')
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[482] = 1    # isextended
    buf[148:156] = b'        '
    buf[148:156] = b'%06o\0 ' % sum(buf)
    entry = b'%011o\0%011o\0' % (512, 1)
    block = entry * 21 + b'\1' + b'\0' * 7
    return bytes(buf) + block * extension_blocks


class HostileTarTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.flags = self.useFixture(config_fixture.Config(CONF)).config
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.count = 0

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, chunks, name=None):
        """Write a tar file from an iterable of byte strings."""
        self.count += 1
        path = self.path(name or 'tar%d' % self.count)
        with open(path, 'wb') as f:
            for chunk in chunks:
                f.write(chunk)
            f.write(b'\0' * tarfile.RECORDSIZE)
        return path

    def workdir(self):
        self.count += 1
        path = self.path('work%d' % self.count)
        os.mkdir(path)
        return path

    def small_layer(self):
        return self.write([busybox.layer_tar([('warm/dir', 'dir'),
                                              ('warm/f', 'file', b'x')])
                           [:-tarfile.RECORDSIZE]])

    def peak(self, kind, path, warmup=None, **flags):
        """Unpack ``path`` in a child: (peak RSS growth KiB, error)."""
        if warmup is None:
            if kind == 'layers':
                warmup = self.small_layer() + ',' + self.small_layer()
            else:
                warmup = self.path('warm.tar')
                busybox.write_docker_archive(warmup, busybox=None,
                                             layers=[[('a', 'file', b'x')]])
        env = dict(os.environ)
        env['PYTHONPATH'] = os.getcwd()
        out = subprocess.run(
            [sys.executable, '-c', _CHILD, kind, warmup, path,
             self.workdir(), self.workdir(), json.dumps(flags)],
            check=True, capture_output=True, env=env, timeout=600)
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return result['kib'], result['error']

    def assertBounded(self, kind, path, error, warmup=None, **flags):
        kib, got = self.peak(kind, path, warmup, **flags)
        self.assertIsNotNone(got, 'the hostile input was accepted')
        self.assertIn(error, got)
        self.assertLess(kib, PEAK_LIMIT_KIB,
                        'peak RSS grew by %d KiB (%s)' % (kib, got))

    # ----------------------------------------------------------- layers

    def test_chain_of_large_pax_headers(self):
        # tarfile reads the header after a pax header recursively,
        # holding each buffer.
        records = many_keys(1000 * 1024, 'k')
        path = self.write([pax_header(records)] * 40 +
                          [header('f', tarfile.REGTYPE, 0)])
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'ImageLimitExceeded')

    def test_global_pax_headers_accumulate(self):
        # Global keys stay for the rest of the archive and are copied
        # into every later member.
        chunks = []
        for i in range(12):
            chunks.append(pax_header(many_keys(900 * 1024, 'g%d' % i),
                                     tarfile.XGLTYPE))
            chunks.append(header('f%d' % i, tarfile.REGTYPE, 0))
        path = self.write(chunks)
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'global headers')

    def test_gnu_sparse_extension_blocks(self):
        path = self.write([sparse_member(40000)])
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'sparse')

    def test_pax_sparse_map_refused(self):
        records = (pax_record('GNU.sparse.major', '1') +
                   pax_record('GNU.sparse.minor', '0') +
                   pax_record('GNU.sparse.name', 'f'))
        data = b'1\n0\n1\n'
        path = self.write([pax_header(records),
                           header('f', tarfile.REGTYPE, len(data)),
                           padded(data)])
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'UnsafeLayerMember')

    def test_deep_paths(self):
        # Distinct paths 2000 components deep, through pax path records.
        chunks = []
        for i in range(12):
            name = '/'.join(['d%d' % i] + ['a'] * 2000) + '/f'
            chunks.append(pax_header(pax_record('path', name)))
            chunks.append(header('f', tarfile.REGTYPE, 0))
        path = self.write(chunks)
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'more than %d components'
                           % boundedtar.MAX_PATH_DEPTH)

    def test_long_gnu_names_capped(self):
        name = b'x/' * (300 * 1024)
        path = self.write([header('././@LongLink', tarfile.GNUTYPE_LONGNAME,
                                  len(name) + 1), padded(name + b'\0'),
                           header('f', tarfile.REGTYPE, 0)])
        self.assertBounded('layers', self.small_layer() + ',' + path,
                           'tar long name')

    def test_many_directories(self):
        # Per-directory state (modes and times are set last) would grow
        # with the entries.
        chunks = [header('d%06d' % i, tarfile.DIRTYPE, 0)
                  for i in range(25000)]
        path = self.write(chunks)
        kib, error = self.peak('layers', path)
        self.assertIsNone(error)
        self.assertLess(kib, PEAK_LIMIT_KIB,
                        'peak RSS grew by %d KiB' % kib)
        work = os.path.join(self.tmp, 'work%d' % self.count)
        self.assertEqual(25000, len(os.listdir(work)))

    def test_extended_headers_count_as_entries(self):
        chunks = []
        for i in range(6):
            chunks.append(pax_header(pax_record('comment', 'x')))
            chunks.append(header('f%d' % i, tarfile.REGTYPE, 0))
        path = self.write(chunks)
        self.assertBounded('layers', path, 'more than 10 entries',
                           warmup=self.small_layer(), max_entries=10)

    def test_whiteouts_are_linear(self):
        # Python calls made while applying n whiteouts of n directories:
        # the count does not depend on the machine's speed.  Linear work
        # doubles with n; work that rescans what was seen so far for
        # each entry quadruples.
        def calls(n):
            lower = self.write([busybox.layer_tar(
                [('d%05d/sub' % i, 'dir') for i in range(n)])])
            upper = self.write([busybox.layer_tar(
                [('d%05d' % i, 'whiteout') for i in range(n)])])
            root = self.workdir()
            count = [0]

            def profile(frame, event, arg):
                if event in ('call', 'c_call'):
                    count[0] += 1

            sys.setprofile(profile)
            try:
                layers.apply_layers(root, [lower, upper])
            finally:
                sys.setprofile(None)
            self.assertEqual([], os.listdir(root))
            return count[0]

        small, large = calls(1000), calls(2000)
        self.assertLess(large, 2.5 * small,
                        '%d calls for 1000 whiteouts, %d for 2000'
                        % (small, large))

    def test_hostile_layer_leaves_nothing_in_the_store(self):
        images = store.ImageStore(self.path('store'))
        for name, layer in (
                ('sparse', sparse_member(100) + b'\0' * 1024),
                ('deep', pax_header(pax_record(
                    'path', '/'.join(['a'] * 500))) +
                 header('f', tarfile.REGTYPE, 0) + b'\0' * 1024)):
            config = json.dumps(busybox.image_config(
                ['sha256:' + hashlib.sha256(layer).hexdigest()])).encode()
            config_hex = hashlib.sha256(config).hexdigest()
            manifest = json.dumps([{'Config': config_hex + '.json',
                                    'RepoTags': ['evil:' + name],
                                    'Layers': ['layer.tar']}]).encode()
            chunks = []
            for member, data in (('layer.tar', layer),
                                 (config_hex + '.json', config),
                                 ('manifest.json', manifest)):
                chunks += [header(member, tarfile.REGTYPE, len(data)),
                           padded(data)]
            path = self.write(chunks)
            self.assertRaises(exception.ImageError, images.load_archive,
                              path)
        for sub in ('tmp', 'images', 'block', 'blobs/sha256'):
            self.assertEqual([], os.listdir(os.path.join(images.root, sub)))
        self.assertEqual([], images.list())

    # --------------------------------------------------------- archives

    def test_archive_of_many_long_links(self):
        # Every member name and link target would be kept in memory.
        target = 'x' * 1000
        chunks = [header('l%06d' % i, tarfile.SYMTYPE, 0, target,
                         tarfile.GNU_FORMAT) for i in range(20000)]
        path = self.write(chunks)
        self.assertBounded('archive', path, 'longer than %d bytes'
                           % archive.MAX_MEMBER_NAME)

    def test_archive_of_many_members(self):
        chunks = [header('m%06d' % i, tarfile.SYMTYPE, 0, 'a')
                  for i in range(20000)]
        path = self.write(chunks)
        self.assertBounded('archive', path, 'more than')

    def _archive_with_manifest(self, manifest):
        def chunks():
            yield header('manifest.json', tarfile.REGTYPE, len(manifest))
            yield padded(manifest)
        return self.write(chunks())

    def test_manifest_of_tiny_values(self):
        # 1 MiB of "{}," parses into a third of a million dicts.
        limit = CONF.kata_image.max_manifest_bytes
        manifest = b'[' + b'{},' * ((limit - 4) // 3) + b'{}]'
        path = self._archive_with_manifest(manifest)
        self.assertBounded('archive', path, 'values')

    def test_deeply_nested_manifest(self):
        manifest = b'[' * 2000 + b']' * 2000
        path = self._archive_with_manifest(manifest)
        self.assertBounded('archive', path, 'nested deeper')

    def test_parse_json(self):
        self.assertEqual({'a': ['[', '{']},
                         archive.parse_json(b'{"a":["[","{"]}', 'doc'))
        nested = b'{"a":' * 33 + b'1' + b'}' * 33
        self.assertRaises(exception.ImageError, archive.parse_json,
                          nested, 'doc')
        self.assertEqual(['\\"[['],
                         archive.parse_json(b'["\\\\\\"[["]', 'doc'))

    def test_reader_not_fooled_by_escaped_quotes(self):
        doc = json.dumps({'k': '"' + '[' * 100}).encode()
        self.assertEqual({'k': '"' + '[' * 100},
                         archive.parse_json(doc, 'doc'))
