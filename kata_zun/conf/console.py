from oslo_config import cfg

GROUP = cfg.OptGroup(
    'kata_console', title='Interactive exec and attach (zun-wsproxy)',
    help='zun-compute with the kata driver serves interactive exec and '
         'attach itself: zun-wsproxy reaches ``GET /attach/<id>?token=`` '
         '(a websocket; the URL is what the driver returns for attach) and '
         'the small part of the Docker Engine API it uses for interactive '
         'exec (``GET /version``, ``POST /v*/exec/<id>/start``), at '
         '``[docker] docker_remote_api_url``. Keep that option pointing at '
         'this listener (its default, ``tcp://$my_ip:2375``, does).')

OPTS = [
    cfg.BoolOpt('enabled', default=True,
                help='Serve interactive exec and attach. When disabled, '
                     'both are refused with a clear error and no port is '
                     'opened.'),
    cfg.HostAddressOpt('listen_host',
                       help='Address the console listens on; zun-wsproxy '
                            'must reach it. Defaults to zun\'s '
                            '``[DEFAULT] my_ip``. A wildcard (0.0.0.0, ::) '
                            'listens everywhere and advertises my_ip.'),
    cfg.PortOpt('listen_port', default=2375,
                help='TCP port of the console. The default is the port of '
                     'zun\'s default ``[docker] docker_remote_api_url``: '
                     'if you change one, change the other.'),
    cfg.IntOpt('token_ttl', default=120, min=5, max=86400,
               help='Seconds an attach URL or an interactive exec id may '
                    'wait for its (single) connection before it expires.'),
    cfg.IntOpt('max_connections', default=64, min=1, max=4096,
               help='Connections served at the same time; more are '
                    'answered with 503.'),
    cfg.IntOpt('max_connections_per_project', default=16, min=1,
               max=4096,
               help='Exec and attach sessions one project (the owner of '
                    'the container) holds open at the same time; more are '
                    'answered with 503. Keep it below max_connections so '
                    'that one project cannot take every console slot. '
                    'Pending (not yet used) exec ids and attach URLs are '
                    'capped per project as well.'),
    cfg.StrOpt('tls_cert_file',
               help='PEM certificate (chain) of the console. With '
                    'tls_key_file, the console speaks TLS only: attach URLs '
                    'are wss://, and [docker] docker_remote_api_url must be '
                    'https://HOST:PORT for interactive exec. The certificate '
                    'must name the host zun-wsproxy connects to (the '
                    'advertised host, normally my_ip, as an IP address '
                    'SAN). zun-wsproxy checks it against [docker] ca_file '
                    'for attach, and against the CA bundle of python-'
                    'requests (REQUESTS_CA_BUNDLE) for interactive exec.'),
    cfg.StrOpt('tls_key_file',
               help='PEM private key of tls_cert_file.'),
    cfg.StrOpt('tls_ca_file',
               help='CA bundle for client certificates. When set, a client '
                    'that sends a certificate must send one this CA signed, '
                    'and attach requires one (zun-wsproxy sends [docker] '
                    'cert_file for wss://). Needs TLS.'),
    cfg.BoolOpt('tls_exec_client_cert', default=False,
                help='Require a client certificate (tls_ca_file) for '
                     'interactive exec too. zun-wsproxy (zun 18) opens '
                     'interactive exec with docker-py without a client '
                     'certificate: enabling this breaks it there; the exec '
                     'id (256 random bits, single use) authenticates it.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
