"""Option listing for oslo-config-generator (entry point oslo.config.opts)."""

from kata_zun.conf import agent
from kata_zun.conf import console
from kata_zun.conf import guest
from kata_zun.conf import hypervisor
from kata_zun.conf import image
from kata_zun.conf import jail
from kata_zun.conf import network
from kata_zun.conf import runtime

_MODULES = (runtime, hypervisor, jail, agent, guest, image, network,
            console)


def list_opts():
    """Return [(group, opts)] for every kata-zun option group."""
    result = []
    for mod in _MODULES:
        for group, opts in mod.list_opts().items():
            result.append((group, opts))
    return result
