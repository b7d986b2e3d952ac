"""kata-zun configuration.

Options live in their own groups on the global ``cfg.CONF`` so that, inside
zun-compute, they sit in zun.conf next to zun's own options.
"""

from oslo_config import cfg

from kata_zun.conf import agent
from kata_zun.conf import console
from kata_zun.conf import guest
from kata_zun.conf import hypervisor
from kata_zun.conf import image
from kata_zun.conf import jail
from kata_zun.conf import network
from kata_zun.conf import runtime
from kata_zun.conf import template

CONF = cfg.CONF

runtime.register_opts(CONF)
hypervisor.register_opts(CONF)
jail.register_opts(CONF)
agent.register_opts(CONF)
guest.register_opts(CONF)
image.register_opts(CONF)
network.register_opts(CONF)
console.register_opts(CONF)
template.register_opts(CONF)
