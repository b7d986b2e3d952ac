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
    cfg.IntOpt('max_manifest_bytes', default=1024 * 1024, min=1024,
               help='Largest manifest/config/index document read. Each is '
                    'held in memory while it is parsed; real ones are a '
                    'few KiB (a config with a long history: some 100 '
                    'KiB).'),
]

REGISTRY_OPTS = [
    cfg.StrOpt('default_registry', default='docker.io',
               help='Registry (host[:port]) of image names without one, '
                    'e.g. a Docker Hub mirror: like Docker Hub, one-word '
                    'names get the "library/" namespace there. Docker Hub '
                    'names (docker.io/...) are pulled from it too.'),
    cfg.ListOpt('insecure_registries', default=[],
                help='Registries (host[:port]) reached over plain HTTP '
                     'instead of HTTPS; this also applies to token '
                     'servers and redirects. Loopback registries '
                     '(localhost, 127.0.0.0/8, ::1) need no entry: as '
                     'with Docker, HTTPS is tried first and a TLS '
                     'failure falls back to plain HTTP.'),
    cfg.StrOpt('ca_file',
               help='PEM bundle of CAs trusted for registries, in addition '
                    'to the system CAs.'),
    cfg.FloatOpt('registry_timeout', default=60.0, min=1,
                 help='Seconds to wait for a registry to connect or send '
                      'data.'),
    cfg.IntOpt('registry_retries', default=3, min=0, max=10,
               help='Times a registry request is repeated after a lost '
                    'connection or an answer that asks for it (429, 500, '
                    '502, 503, 504), with exponential back-off or the '
                    'Retry-After it gives (at most 30 s).'),
    cfg.StrOpt('https_proxy',
               help='http://[user:password@]host:port of the proxy for '
                    'HTTPS registries (a CONNECT tunnel). Unset: the '
                    'HTTPS_PROXY environment variable; empty: none.'),
    cfg.StrOpt('http_proxy',
               help='http://[user:password@]host:port of the proxy for '
                    'plain HTTP registries. Unset: the HTTP_PROXY '
                    'environment variable; empty: none.'),
    cfg.StrOpt('no_proxy',
               help='Comma-separated hosts and domain suffixes reached '
                    'without a proxy. Unset: the NO_PROXY environment '
                    'variable.'),
    cfg.IntOpt('max_concurrent_pulls', default=4, min=1,
               help='Image pulls, loads and commits that zun-compute runs '
                    'at the same time (at most half of eventlet\'s thread '
                    'pool, EVENTLET_THREADPOOL_SIZE); more wait their '
                    'turn.'),
    cfg.IntOpt('max_concurrent_downloads', default=3, min=1, max=16,
               help='Layers downloaded at the same time by one pull.'),
    cfg.FloatOpt('pull_timeout', default=1800.0, min=1,
                 help='Seconds a whole pull (manifests, token, blobs, '
                      'retries) may take: a registry that sends data '
                      'slowly cannot hold a pull, and zun-compute\'s '
                      'worker thread, for longer.'),
    cfg.ListOpt('token_realm_hosts', default=[],
                help='Token servers (host[:port], 443 if no port) that '
                     'may receive registry credentials besides the '
                     'registry itself (and auth.docker.io for Docker '
                     'Hub). A bearer challenge naming another token '
                     'server is refused when there are credentials.'),
    cfg.ListOpt('shared_credentials_registries', default=[],
                help='Registries for which credentials_file is used by '
                     'pulls of Zun projects. Other registries get only the '
                     'credentials the project gives (or none), so that '
                     'projects cannot pull with the host\'s credentials. '
                     'The kata-zun CLI uses every entry.'),
    cfg.StrOpt('credentials_file',
               help='JSON file {"registry": {"username": ..., "password": '
                    '...}} of registry credentials, used when a pull gets '
                    'none (after those of "kata-zun login", which the CLI '
                    'keeps in <state_path>/images/registry/auth.json). '
                    'Docker Hub is "docker.io".'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS + REGISTRY_OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS + REGISTRY_OPTS}
