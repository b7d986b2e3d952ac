"""Interactive exec and attach for zun-wsproxy.

zun-compute (with :class:`kata_zun.driver.KataDriver`) runs a small TCP
server, :class:`kata_zun.console.server.ConsoleServer`, that speaks exactly
what zun-wsproxy uses to reach a container's terminal:

* attach: a websocket (RFC 6455) at ``GET /attach/<container id>?token=``;
  the driver hands that URL to zun in ``get_websocket_url``;
* interactive exec: the few Docker Engine API calls that docker-py's
  ``APIClient(...).exec_start(exec_id, socket=True, tty=True)`` makes
  (``GET /version``, then ``POST /v<api>/exec/<id>/start`` hijacked into a
  raw bidirectional stream) at ``[docker] docker_remote_api_url``.

Both end in the sandbox's shim (:mod:`kata_zun.shim.client`): stdin goes
to the process, its output comes back. Every URL is authenticated by a
single-use, expiring secret; everything read from the network is bounded.

Standard library only (plus the shim client through a runtime object): no
zun and no eventlet here. Inside zun-compute, eventlet's monkey-patching
makes the threads and sockets used here green.
"""
