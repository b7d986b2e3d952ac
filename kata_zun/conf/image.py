from oslo_config import cfg

GROUP = cfg.OptGroup('kata_image', title='Image store options')

OPTS = [
    cfg.StrOpt('block_fs', default='erofs', choices=['erofs', 'ext4'],
               help='Filesystem of the read-only per-image block device.'),
    cfg.IntOpt('max_layers', default=128, min=1,
               help='Most layers an image may have.'),
    cfg.IntOpt('max_unpacked_mb', default=8192, min=1,
               help='Largest total unpacked size of an image.'),
    cfg.IntOpt('max_entries', default=500000, min=1,
               help='Most tar members an image may have in all.'),
    cfg.IntOpt('max_manifest_bytes', default=4 * 1024 * 1024, min=1024,
               help='Largest manifest/config/index document read.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
