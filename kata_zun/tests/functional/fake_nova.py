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

"""A Nova that knows no servers (stdlib only), for :mod:`cinder_env`.

Why it exists: before cinder 29 removes a connection or an attachment
that names an instance (``terminate_connection``, ``os-detach``,
``DELETE /attachments``), it makes sure Nova is not using it (bug
#2004555): unless the request carries a service token, it asks Nova
``GET /servers/<id>/os-volume_attachments/<volume>``. zun sends no
service token, and the instance is a container that Nova does not know:
in a real cloud Nova answers 404 and Cinder goes on. Without any
``compute`` endpoint Cinder fails with HTTP 500 instead. This stand-in
gives exactly the real cloud's answer: 404 ``itemNotFound`` to every
request, nothing else. Tokens are not checked.

Run it as a script: ``python fake_nova.py --host H --port P``.
"""

import argparse
import json
import sys

from http import server


class _Handler(server.BaseHTTPRequestHandler):

    def _not_found(self):
        body = json.dumps({'itemNotFound': {
            'code': 404,
            'message': 'No server is known here: %s' % self.path[:200]}})
        data = body.encode('utf-8')
        self.send_response(404)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _not_found

    def log_message(self, fmt, *args):
        sys.stderr.write('fake-nova: %s\n' % (fmt % args))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    args = parser.parse_args(argv)
    httpd = server.ThreadingHTTPServer((args.host, args.port), _Handler)
    httpd.daemon_threads = True
    httpd.serve_forever()


if __name__ == '__main__':
    main()
