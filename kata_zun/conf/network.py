from oslo_config import cfg

GROUP = cfg.OptGroup('kata_network',
                     title='kata-zun standalone container networking')

OPTS = [
    cfg.StrOpt('driver', default='bridge', choices=('bridge', 'none'),
               help='Network of containers started by the kata-zun CLI '
                    'when "--network" is not given. "bridge": a tap per VM '
                    'on a host bridge with its own subnet, outbound NAT '
                    'and published ports (needs root, or sudo for '
                    'privsep-helper, and nftables). "none": loopback '
                    'only. Containers made through the Zun driver do not '
                    'use it (Zun mode takes Neutron ports).'),
    cfg.StrOpt('bridge', default='kz0',
               help='Host bridge of the "bridge" network; created when '
                    'missing. Must start with "kz" (at most 15 '
                    'characters). The privileged helper reads this option '
                    'itself and touches no other bridge (and no link but '
                    'this bridge and kata-zun\'s kzt* taps).'),
    cfg.StrOpt('subnet', default='10.88.0.0/16',
               help='IPv4 subnet of the bridge network. The first address '
                    'is the bridge (the guests\' gateway); the others are '
                    'leased to containers. Refused when it overlaps an '
                    'address or route of the host. The privileged helper '
                    'reads this option itself: it NATs only this subnet '
                    'and forwards published ports only to its guest '
                    'addresses.'),
    cfg.IntOpt('mtu', default=0, min=0, max=65535,
               help='MTU of the bridge, the taps and the guest interfaces; '
                    '0 takes the MTU of the host\'s default-route '
                    'interface (1500 without one).'),
    cfg.ListOpt('dns_servers', default=[],
                help='Name servers written to the containers\' '
                     'resolv.conf; empty takes the non-loopback '
                     'nameservers of the host\'s /etc/resolv.conf.'),
    # Zun mode (kata_zun.driver): Neutron ports on Open vSwitch.
    cfg.StrOpt('zun_network', default='neutron',
               choices=('neutron', 'none'),
               help='Networking of containers made through the Zun '
                    'driver. "neutron": every requested network gets a '
                    'Neutron port (device_owner compute:zun, bound to this '
                    'host) whose tap is plugged into the Open vSwitch '
                    'integration bridge like os-vif does for Nova (needs '
                    'the ML2/OVS agent on this host). "none": no port, '
                    'loopback only (a Neutron API is still needed by '
                    'zun-api for scheduling).'),
    cfg.StrOpt('ovsdb_connection',
               default='unix:/var/run/openvswitch/db.sock',
               help='OVSDB of the Open vSwitch that holds the integration '
                    'bridge (Zun mode), e.g. unix:/var/run/openvswitch/'
                    'db.sock or tcp:127.0.0.1:6640.'),
    cfg.StrOpt('integration_bridge', default='br-int',
               help='Open vSwitch bridge the taps of Neutron ports join '
                    'when the port\'s binding:vif_details has no '
                    'bridge_name (the OVS agent normally reports its '
                    'own).'),
    cfg.IntOpt('ovs_timeout', default=120, min=1,
               help='Seconds to wait for an OVSDB transaction (plug or '
                    'unplug of a Neutron port\'s tap).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
