"""Option listing for oslo-config-generator (entry point oslo.config.opts)."""

from kata_zun.conf import agent
from kata_zun.conf import console
from kata_zun.conf import guest
from kata_zun.conf import hypervisor
from kata_zun.conf import image
from kata_zun.conf import jail
from kata_zun.conf import network
from kata_zun.conf import runtime
from kata_zun.conf import template

_MODULES = (runtime, hypervisor, jail, agent, guest, image, network,
            console, template)


def list_opts():
    """Return [(group, opts)] for every kata-zun option group (a group
    whose options come from several modules is listed once).
    """
    result = []
    index = {}
    for mod in _MODULES:
        for group, opts in mod.list_opts().items():
            name = getattr(group, 'name', group)
            if name in index:
                result[index[name]][1].extend(opts)
                continue
            index[name] = len(result)
            result.append((group, list(opts)))
    return result
