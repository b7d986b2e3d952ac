# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""A minimal in-memory stand-in for the Neutron v2.0 API (stdlib only).

It serves one shared network ``kz-net`` with one IPv4 subnet, and keeps
ports, security groups and security group rules in memory, which is what
zun-api needs to accept a container (``GET /v2.0/networks``) and what a
driver needs to create, bind and delete ports. Tokens are not checked.
It is no Neutron: there is no DHCP, no routing and no real isolation.

Run it as a script (``python fake_neutron.py --port 9696``) or start
:class:`FakeNeutron` in a thread.
"""

import argparse
import datetime
import ipaddress
import json
import random
import sys
import threading
import urllib.parse
import uuid

from http import server

NETWORK_NAME = 'kz-net'
DEFAULT_CIDR = '10.88.0.0/24'

_COLLECTIONS = {
    'networks': 'network',
    'subnets': 'subnet',
    'ports': 'port',
    'security-groups': 'security_group',
    'security-group-rules': 'security_group_rule',
    'floatingips': 'floatingip',
    'routers': 'router',
    'trunks': 'trunk',
}
_NOT_FOUND_TYPES = {
    'networks': 'NetworkNotFound',
    'subnets': 'SubnetNotFound',
    'ports': 'PortNotFound',
    'security-groups': 'SecurityGroupNotFound',
    'security-group-rules': 'SecurityGroupRuleNotFound',
    'floatingips': 'FloatingIPNotFound',
    'routers': 'RouterNotFound',
    'trunks': 'TrunkNotFound',
}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%SZ')


class NeutronError(Exception):
    """An error answered as a NeutronError body."""

    def __init__(self, code, type_, message):
        super().__init__(message)
        self.code = code
        self.type = type_
        self.message = message


class Store(object):
    """The in-memory resources and the operations on them.

    :param cidr: the IPv4 CIDR of the subnet of ``kz-net``.
    """

    def __init__(self, cidr=DEFAULT_CIDR):
        self.lock = threading.Lock()
        self.resources = {name: {} for name in _COLLECTIONS}
        self.cidr = ipaddress.ip_network(cidr)
        hosts = list(self.cidr.hosts())
        self.gateway = str(hosts[0])
        self.free_ips = [str(ip) for ip in hosts[1:]]
        now = _now()
        self.network_id = str(uuid.uuid4())
        self.subnet_id = str(uuid.uuid4())
        self.resources['networks'][self.network_id] = {
            'id': self.network_id, 'name': NETWORK_NAME, 'shared': True,
            'router:external': False, 'status': 'ACTIVE',
            'admin_state_up': True, 'subnets': [self.subnet_id],
            'tenant_id': '', 'project_id': '', 'mtu': 1500,
            'port_security_enabled': True, 'availability_zones': [],
            'provider:network_type': 'flat',
            'provider:physical_network': 'physnet1',
            'provider:segmentation_id': None, 'description': '',
            'tags': [], 'created_at': now, 'updated_at': now,
            'revision_number': 1,
        }
        self.resources['subnets'][self.subnet_id] = {
            'id': self.subnet_id, 'name': NETWORK_NAME + '-subnet',
            'network_id': self.network_id, 'ip_version': 4,
            'cidr': str(self.cidr), 'gateway_ip': self.gateway,
            'enable_dhcp': False, 'dns_nameservers': [],
            'host_routes': [], 'ipv6_ra_mode': None,
            'ipv6_address_mode': None, 'subnetpool_id': None,
            'allocation_pools': [{'start': self.free_ips[0],
                                  'end': self.free_ips[-1]}],
            'tenant_id': '', 'project_id': '', 'description': '',
            'tags': [], 'created_at': now, 'updated_at': now,
            'revision_number': 1,
        }

    def _get(self, collection, id_):
        try:
            return self.resources[collection][id_]
        except KeyError:
            raise NeutronError(404, _NOT_FOUND_TYPES[collection],
                               '%s %s could not be found.' % (
                                   _COLLECTIONS[collection], id_))

    def _default_group(self, project_id):
        for sg in self.resources['security-groups'].values():
            if sg['name'] == 'default' and sg['project_id'] == project_id:
                return sg
        return self._create_security_group({'name': 'default',
                                            'project_id': project_id})

    def _allocate_ip(self, requested=None):
        if requested:
            if requested not in self.free_ips:
                raise NeutronError(409, 'IpAddressAlreadyAllocated',
                                   'IP address %s already allocated in '
                                   'subnet %s' % (requested, self.subnet_id))
            self.free_ips.remove(requested)
            return requested
        if not self.free_ips:
            raise NeutronError(409, 'IpAddressGenerationFailure',
                               'No more IP addresses available on network '
                               '%s.' % self.network_id)
        return self.free_ips.pop(0)

    def _create_port(self, body):
        if body.get('network_id') != self.network_id:
            self._get('networks', body.get('network_id'))
        project_id = body.get('project_id') or body.get('tenant_id') or ''
        fixed_ips = []
        for fip in body.get('fixed_ips') or [{}]:
            if fip.get('subnet_id', self.subnet_id) != self.subnet_id:
                self._get('subnets', fip['subnet_id'])
            fixed_ips.append({'subnet_id': self.subnet_id,
                              'ip_address':
                                  self._allocate_ip(fip.get('ip_address'))})
        groups = body.get('security_groups')
        if groups is None:
            groups = [self._default_group(project_id)['id']]
        mac = body.get('mac_address') or 'fa:16:3e:%02x:%02x:%02x' % (
            random.randint(0, 255), random.randint(0, 255),
            random.randint(0, 255))
        now = _now()
        port = {
            'id': str(uuid.uuid4()), 'name': body.get('name', ''),
            'network_id': self.network_id, 'tenant_id': project_id,
            'project_id': project_id, 'mac_address': mac,
            'fixed_ips': fixed_ips, 'device_id': body.get('device_id', ''),
            'device_owner': body.get('device_owner', ''),
            'admin_state_up': body.get('admin_state_up', True),
            'status': 'DOWN', 'security_groups': groups,
            'port_security_enabled': True, 'allowed_address_pairs': [],
            'extra_dhcp_opts': [], 'description': '', 'tags': [],
            'binding:host_id': body.get('binding:host_id', ''),
            'binding:vnic_type': body.get('binding:vnic_type', 'normal'),
            'binding:profile': body.get('binding:profile', {}),
            'binding:vif_type': 'unbound', 'binding:vif_details': {},
            'created_at': now, 'updated_at': now, 'revision_number': 1,
        }
        if port['binding:host_id']:
            port['binding:vif_type'] = 'ovs'
        self.resources['ports'][port['id']] = port
        return port

    def _update_port(self, port, body):
        body = dict(body)
        body.pop('fixed_ips', None)
        body.pop('network_id', None)
        port.update(body)
        port['binding:vif_type'] = ('ovs' if port.get('binding:host_id')
                                    else 'unbound')
        port['updated_at'] = _now()
        port['revision_number'] += 1
        return port

    def _delete_port(self, port):
        for fip in port['fixed_ips']:
            self.free_ips.append(fip['ip_address'])
        del self.resources['ports'][port['id']]

    def _create_security_group(self, body):
        project_id = body.get('project_id') or body.get('tenant_id') or ''
        now = _now()
        sg = {'id': str(uuid.uuid4()), 'name': body.get('name', ''),
              'description': body.get('description', ''),
              'tenant_id': project_id, 'project_id': project_id,
              'security_group_rules': [], 'stateful': True, 'tags': [],
              'created_at': now, 'updated_at': now, 'revision_number': 1}
        self.resources['security-groups'][sg['id']] = sg
        return sg

    def _create_security_group_rule(self, body):
        sg = self._get('security-groups', body.get('security_group_id'))
        rule = {'id': str(uuid.uuid4()), 'security_group_id': sg['id'],
                'direction': body.get('direction', 'ingress'),
                'ethertype': body.get('ethertype', 'IPv4'),
                'protocol': body.get('protocol'),
                'port_range_min': body.get('port_range_min'),
                'port_range_max': body.get('port_range_max'),
                'remote_ip_prefix': body.get('remote_ip_prefix'),
                'remote_group_id': body.get('remote_group_id'),
                'tenant_id': sg['project_id'],
                'project_id': sg['project_id'], 'description': ''}
        self.resources['security-group-rules'][rule['id']] = rule
        sg['security_group_rules'].append(rule)
        return rule

    def _delete_security_group_rule(self, rule):
        sg = self.resources['security-groups'].get(rule['security_group_id'])
        if sg:
            sg['security_group_rules'] = [
                r for r in sg['security_group_rules']
                if r['id'] != rule['id']]
        del self.resources['security-group-rules'][rule['id']]

    def _delete_security_group(self, sg):
        for port in self.resources['ports'].values():
            if sg['id'] in port['security_groups']:
                raise NeutronError(409, 'SecurityGroupInUse',
                                   'Security Group %s in use.' % sg['id'])
        for rule in list(sg['security_group_rules']):
            self._delete_security_group_rule(rule)
        del self.resources['security-groups'][sg['id']]

    @staticmethod
    def _matches(resource, filters):
        for key, wanted in filters.items():
            if key not in resource:
                continue
            value = resource[key]
            if isinstance(value, bool):
                value = str(value).lower()
                wanted = [w.lower() for w in wanted]
            elif isinstance(value, list):
                if not any(w in value for w in wanted):
                    return False
                continue
            if str(value if value is not None else '') not in wanted:
                return False
        return True

    def list(self, collection, query):
        """Resources of a collection that match the query filters.

        :param collection: e.g. ``'networks'``.
        :param query: the parsed query string, ``{key: [values]}``.
        :returns: a list of resources (copies).
        """
        fields = query.pop('fields', None)
        for key in ('limit', 'marker', 'sort_key', 'sort_dir',
                    'page_reverse'):
            query.pop(key, None)
        with self.lock:
            if collection == 'security-groups':
                project = (query.get('project_id') or
                           query.get('tenant_id') or [None])[0]
                if project is not None:
                    self._default_group(project)
            items = [json.loads(json.dumps(r))
                     for r in self.resources[collection].values()
                     if self._matches(r, query)]
        if fields:
            items = [{k: v for k, v in r.items() if k in fields}
                     for r in items]
        return items

    def show(self, collection, id_, query):
        """One resource.

        :returns: a copy of the resource, restricted to ``fields``.
        """
        with self.lock:
            item = json.loads(json.dumps(self._get(collection, id_)))
        fields = query.get('fields')
        if fields:
            item = {k: v for k, v in item.items() if k in fields}
        return item

    def create(self, collection, body):
        """Create a port, security group or rule.

        :returns: the new resource.
        """
        creators = {'ports': self._create_port,
                    'security-groups': self._create_security_group,
                    'security-group-rules': self._create_security_group_rule}
        if collection not in creators:
            raise NeutronError(400, 'BadRequest',
                               'Creating %s is not supported by the fake '
                               'Neutron.' % collection)
        with self.lock:
            return json.loads(json.dumps(creators[collection](body)))

    def update(self, collection, id_, body):
        """Update a port or a security group.

        :returns: the updated resource.
        """
        with self.lock:
            item = self._get(collection, id_)
            if collection == 'ports':
                item = self._update_port(item, body)
            elif collection in ('security-groups', 'networks'):
                item.update({k: v for k, v in body.items()
                             if k in ('name', 'description')})
            else:
                raise NeutronError(400, 'BadRequest',
                                   'Updating %s is not supported by the '
                                   'fake Neutron.' % collection)
            return json.loads(json.dumps(item))

    def delete(self, collection, id_):
        """Delete a port, a security group or a rule."""
        deleters = {'ports': self._delete_port,
                    'security-groups': self._delete_security_group,
                    'security-group-rules': self._delete_security_group_rule}
        if collection not in deleters:
            raise NeutronError(409, 'InUse', 'Deleting %s is not supported '
                               'by the fake Neutron.' % collection)
        with self.lock:
            deleters[collection](self._get(collection, id_))


class Handler(server.BaseHTTPRequestHandler):
    """HTTP handler mapping /v2.0/<collection>[/<id>] onto the store."""

    protocol_version = 'HTTP/1.1'
    server_version = 'FakeNeutron/1.0'

    def log_message(self, fmt, *args):
        sys.stderr.write('%s %s\n' % (self.log_date_time_string(),
                                      fmt % args))

    def _reply(self, code, body=None):
        data = b'' if body is None else json.dumps(body).encode('utf-8')
        self.send_response(code)
        if body is not None:
            self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.send_header('X-Openstack-Request-Id',
                         'req-' + str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get('Content-Length') or 0)
        if not length:
            return {}
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            raise NeutronError(400, 'BadRequest', 'Malformed JSON body.')

    def _route(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split('/') if p]
        query = urllib.parse.parse_qs(url.query)
        if parts and parts[-1].endswith('.json'):
            parts[-1] = parts[-1][:-len('.json')]
        return parts, query

    def _dispatch(self, method):
        store = self.server.store
        try:
            parts, query = self._route()
            if method == 'GET' and not parts:
                return self._reply(200, {'versions': [{
                    'id': 'v2.0', 'status': 'CURRENT',
                    'links': [{'rel': 'self', 'href':
                               'http://%s:%s/v2.0/' %
                               self.server.server_address[:2]}]}]})
            if not parts or parts[0] != 'v2.0':
                raise NeutronError(404, 'HTTPNotFound', 'Not found.')
            parts = parts[1:]
            if method == 'GET' and not parts:
                return self._reply(200, {'resources': [
                    {'name': v, 'collection': k}
                    for k, v in _COLLECTIONS.items()]})
            if parts == ['extensions'] and method == 'GET':
                return self._reply(200, {'extensions': []})
            collection = parts[0]
            if collection not in _COLLECTIONS or len(parts) > 2:
                raise NeutronError(404, 'HTTPNotFound',
                                   'The resource could not be found.')
            singular = _COLLECTIONS[collection]
            key = collection.replace('-', '_')
            if len(parts) == 1 and method == 'GET':
                return self._reply(200, {key: store.list(collection, query)})
            if len(parts) == 1 and method == 'POST':
                body = self._body()
                if key in body:
                    items = [store.create(collection, b) for b in body[key]]
                    return self._reply(201, {key: items})
                item = store.create(collection, body.get(singular) or {})
                return self._reply(201, {singular: item})
            if len(parts) == 2 and method == 'GET':
                return self._reply(
                    200, {singular: store.show(collection, parts[1], query)})
            if len(parts) == 2 and method == 'PUT':
                body = self._body().get(singular) or {}
                return self._reply(
                    200, {singular: store.update(collection, parts[1], body)})
            if len(parts) == 2 and method == 'DELETE':
                store.delete(collection, parts[1])
                return self._reply(204)
            raise NeutronError(405, 'HTTPMethodNotAllowed',
                               'Method not allowed.')
        except NeutronError as e:
            return self._reply(e.code, {'NeutronError': {
                'type': e.type, 'message': e.message, 'detail': ''}})

    def do_GET(self):
        self._dispatch('GET')

    def do_POST(self):
        self._dispatch('POST')

    def do_PUT(self):
        self._dispatch('PUT')

    def do_DELETE(self):
        self._dispatch('DELETE')


class FakeNeutron(server.ThreadingHTTPServer):
    """The fake Neutron HTTP server.

    :param host: address to listen on.
    :param port: TCP port to listen on; 0 picks a free one.
    :param cidr: IPv4 CIDR of the subnet of ``kz-net``.
    """

    daemon_threads = True

    def __init__(self, host='127.0.0.1', port=0, cidr=DEFAULT_CIDR):
        super().__init__((host, port), Handler)
        self.store = Store(cidr)

    @property
    def url(self):
        """The endpoint URL, e.g. ``http://127.0.0.1:9696``."""
        return 'http://%s:%s' % self.server_address[:2]

    def start_in_thread(self):
        """Serve in a daemon thread.

        :returns: the thread.
        """
        thread = threading.Thread(target=self.serve_forever, daemon=True,
                                  name='fake-neutron')
        thread.start()
        return thread


def main(argv=None):
    """Serve the fake Neutron until killed.

    :param argv: command line arguments (without the program name).
    :returns: exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=9696)
    parser.add_argument('--cidr', default=DEFAULT_CIDR)
    args = parser.parse_args(argv)
    httpd = FakeNeutron(args.host, args.port, args.cidr)
    sys.stderr.write('fake neutron listening on %s\n' % httpd.url)
    sys.stderr.flush()
    httpd.serve_forever()
    return 0


if __name__ == '__main__':
    sys.exit(main())
