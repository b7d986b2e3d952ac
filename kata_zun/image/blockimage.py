"""Build the read-only block image a guest mounts as a container rootfs."""

import os
import stat
import subprocess

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF
LOG = logging.getLogger(__name__)

BLOCK = 4096
INODE_SIZE = 256
MIB = 1024 * 1024


def _run(argv):
    LOG.debug('Running %s', argv)
    try:
        subprocess.run(argv, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise exception.ImageError(reason='%s is not installed' % argv[0])
    except subprocess.CalledProcessError as e:
        stderr = e.stderr.decode('utf-8', 'replace').strip()
        raise exception.ImageError(reason='%s failed (exit %d): %s' % (
            argv[0], e.returncode, stderr[-2000:]))


def tree_usage(path):
    """Estimate what a tree needs in a filesystem with 4 KiB blocks.

    Symlinks are not followed and hard-linked files count once.

    :param path: the directory.
    :returns: (bytes in whole blocks, number of inodes).
    """
    seen = set()
    blocks, inodes = 1, 1
    for top, dirs, files in os.walk(path):
        names = dirs + files
        # A directory entry takes 8 bytes and the name, 4-byte aligned.
        blocks += 1 + sum(8 + (len(os.fsencode(n)) + 3) // 4 * 4
                          for n in names) // BLOCK
        for name in names:
            st = os.lstat(os.path.join(top, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            inodes += 1
            # Symlinks shorter than 60 bytes live in the inode.
            if stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and
                                            st.st_size >= 60):
                blocks += -(-st.st_size // BLOCK)
    return blocks * BLOCK, inodes


def ext4_size(usage, inodes):
    """Size an ext4 image for a tree, with headroom for its metadata.

    :param usage: bytes in blocks, from :func:`tree_usage`.
    :param inodes: number of inodes the tree needs.
    :returns: the image size in bytes, a multiple of 1 MiB.
    """
    # Inode tables, extent blocks, bitmaps and group descriptors grow
    # with the data; 16 MiB covers the fixed part of small trees.
    size = usage + usage // 10 + inodes * INODE_SIZE * 2 + 16 * MIB
    return -(-size // MIB) * MIB


def build(src, dest, fs_type=None):
    """Build a read-only filesystem image of a directory tree.

    :param src: the root directory of the image.
    :param dest: the image file to create (replaced if present).
    :param fs_type: 'erofs' or 'ext4'; defaults to
        ``CONF.kata_image.block_fs``.
    :returns: the filesystem type used.
    :raises: ImageError
    """
    fs_type = fs_type or CONF.kata_image.block_fs
    as_root = os.geteuid() == 0
    if fs_type == 'erofs':
        # -x-1: no xattrs, so host labels (SELinux...) do not leak in.
        argv = ['mkfs.erofs', '--quiet', '-x-1']
        if not as_root:
            # The owners in the tree are the loading user, not the image's.
            argv.append('--all-root')
        _run(argv + [dest, src])
    elif fs_type == 'ext4':
        usage, inodes = tree_usage(src)
        inodes += 64
        with open(dest, 'wb') as f:
            f.truncate(ext4_size(usage, inodes))
        argv = ['mkfs.ext4', '-q', '-F', '-O', '^has_journal', '-b',
                str(BLOCK), '-I', str(INODE_SIZE), '-N', str(inodes),
                '-m', '0', '-d', src, dest]
        _run(argv)
    else:
        raise exception.ImageError(
            reason='unsupported block filesystem %r' % fs_type)
    return fs_type
