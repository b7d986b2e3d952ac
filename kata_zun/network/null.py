"""``--network none``: no NIC, the guest's loopback only."""

from kata_zun import exception
from kata_zun.network import base


class NullPlugin(base.NetworkPlugin):
    name = 'none'

    def validate(self, request, is_known=None):
        if request.get('ports'):
            raise exception.InvalidInput(
                reason='publishing ports (-p) needs a network: use '
                '--network bridge')

    def plug(self, cid, hostname, request):
        self.validate(request)
        return {'network': self.name, 'nics': [], 'ports': [],
                'guest': {'interfaces': [], 'dns': [],
                          'hostname': hostname}}

    def unplug(self, cid):
        return False
