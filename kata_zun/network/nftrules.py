"""The nftables statements of the bridge network, as text.

Everything lives in one table, ``inet kata_zun``, with three NAT base
chains. Every rule carries a comment tag saying who owns it, so it can
be removed exactly (by handle, in the same transaction that adds its
replacement; see :func:`kata_zun.privsep.linux_net.nat_publish`):

* ``kz-br:<bridge>`` -- the bridge's own rules: outbound masquerade of its
  subnet, masquerade of host-loopback sources reaching a published port,
  and of containers reaching a published port of a neighbour (hairpin);
* ``kz:<bridge>:<container id>`` -- a container's published ports: DNAT in
  prerouting (traffic from outside) and output (from the host itself).

Used by the privileged side only (:mod:`kata_zun.privsep.linux_net`),
which calls these with values it has validated: no rule text crosses
the privsep boundary. Pure functions: unit-tested without privileges.
"""

from kata_zun.network import ports as ports_mod

TABLE = 'inet kata_zun'
BASE_CHAINS = (
    ('prerouting', 'nat', 'prerouting', -100),
    ('output', 'nat', 'output', -100),
    ('postrouting', 'nat', 'postrouting', 100),
)


def bridge_tag(bridge):
    return 'kz-br:%s' % bridge


def container_tag(bridge, cid):
    return 'kz:%s:%s' % (bridge, cid)


def base_ruleset():
    """The table and its base chains (``add`` is idempotent)."""
    lines = ['add table %s' % TABLE]
    for name, kind, hook, priority in BASE_CHAINS:
        lines.append('add chain %s %s { type %s hook %s priority %d; '
                     'policy accept; }' % (TABLE, name, kind, hook,
                                           priority))
    return lines


def _rule(chain, body, tag):
    return 'add rule %s %s %s comment "%s"' % (TABLE, chain, body, tag)


def bridge_rules(bridge, subnet):
    """:param subnet: the bridge subnet, e.g. '10.88.0.0/16'."""
    tag = bridge_tag(bridge)
    return [
        # Containers going out to the world look like the host.
        _rule('postrouting', 'ip saddr %s oifname != "%s" masquerade' %
              (subnet, bridge), tag),
        # The host's 127.0.0.1 reaching a published port: the container
        # could not answer a 127/8 source (route_localnet lets it out).
        _rule('postrouting', 'oifname "%s" ip saddr 127.0.0.0/8 masquerade'
              % bridge, tag),
        # A container reaching a published port of its bridge (hairpin).
        _rule('postrouting', 'oifname "%s" ip saddr %s ct status dnat '
              'masquerade' % (bridge, subnet), tag),
    ]


def port_rules(bridge, cid, address, mappings):
    """DNAT rules publishing ``mappings`` of the container at ``address``.
    """
    tag = container_tag(bridge, cid)
    lines = []
    for m in mappings:
        if m['host_ip'] == ports_mod.ANY:
            match = 'fib daddr type local'
        else:
            match = 'ip daddr %s' % m['host_ip']
        body = '%s %s dport %d dnat ip to %s:%d' % (
            match, m['proto'], m['host_port'], address, m['container_port'])
        for chain in ('prerouting', 'output'):
            lines.append(_rule(chain, body, tag))
    return lines
