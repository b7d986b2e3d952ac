"""Standalone container networking, for real (issue 5).

Every test runs the CLI -- and with it the privsep daemon, the shims and
QEMU -- inside a network namespace of its own (``ip netns exec``, which
also gives /sys the namespace's view), with a bridge name and subnet of
its own. The "host" of these tests is that namespace: it has only ``lo``
and the test bridge, so no packet can go anywhere but 127.0.0.0/8 and
the test subnet. Whatever a test leaves (VMs aside, which the base class
removes first) goes away with the namespace, even when the test fails.
"""

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time

from kata_zun.tests.functional import base

FETCH = ('import sys, urllib.request\n'
         'print(urllib.request.urlopen(sys.argv[1], timeout=5).read()'
         '.decode(), end="")\n')
LISTEN = ('import socket, sys, time\n'
          's = socket.socket()\n'
          's.bind(("127.0.0.1", int(sys.argv[1])))\n'
          's.listen(1)\n'
          'print("listening", flush=True)\n'
          'time.sleep(600)\n')
# A compromised unprivileged caller: call the privileged functions
# directly (in the test's namespace, through a real privsep daemon and real
# nftables). Prints [[function, outcome], ...].
PRIV_CALLS = ('import json, sys\n'
              'from oslo_log import log\n'
              'from kata_zun import conf\n'
              'log.register_options(conf.CONF)\n'
              'conf.CONF(["--config-file", sys.argv[1]], project="kata-zun",'
              ' default_config_files=[])\n'
              'from kata_zun import privsep\n'
              'from kata_zun.privsep import linux_net\n'
              'privsep.start()\n'
              'out = []\n'
              'for name, args in json.loads(sys.argv[2]):\n'
              '    try:\n'
              '        getattr(linux_net, name)(*args)\n'
              '        out.append([name, "accepted"])\n'
              '    except Exception as exc:\n'
              '        out.append([name, "%s: %s" % (type(exc).__name__,'
              ' str(exc)[:300])])\n'
              'print(json.dumps(out))\n')
HTTPD = ('mkdir -p /www && echo "$TOKEN" > /www/index.html && '
         'exec httpd -f -p 8080 -h /www')


class NetworkTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        tag = secrets.token_hex(3)
        self.netns = 'kzt-net-' + tag
        self.bridge = 'kzb' + tag
        self.octet = random.randint(0, 255)
        self.subnet = '10.213.%d.0/24' % self.octet
        self.gateway = '10.213.%d.1' % self.octet
        self.port = random.randint(20000, 40000)
        subprocess.run(['ip', 'netns', 'add', self.netns], check=True)
        # Registered first, so it runs last: after the base class has
        # removed every container (from inside the namespace).
        self.addCleanup(self._delete_netns)
        subprocess.run(['ip', '-n', self.netns, 'link', 'set', 'lo', 'up'],
                       check=True)
        self.cli_prefix = ('ip', 'netns', 'exec', self.netns)
        self.extra_config = (
            '[kata_network]\n'
            'driver = bridge\n'
            'bridge = %s\n'
            'subnet = %s\n'
            'dns_servers = %s\n' % (self.bridge, self.subnet, self.gateway))
        super().setUp()
        self.load_busybox()

    def _delete_netns(self):
        # Only processes of this test live in its namespace.
        pids = subprocess.run(['ip', 'netns', 'pids', self.netns],
                              capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        subprocess.run(['ip', 'netns', 'del', self.netns],
                       capture_output=True)

    # ------------------------------------------------------------ helpers
    def host(self, *argv, check=None, timeout=60):
        """Run a command on the test's "host" (in its namespace)."""
        proc = subprocess.run(list(self.cli_prefix) + list(argv),
                              capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        result = base.Result(proc)
        if check is not None:
            self.assertEqual(check, result.code, result)
        return result

    def host_background(self, *argv):
        proc = subprocess.Popen(list(self.cli_prefix) + list(argv),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        self.addCleanup(self._stop, proc)
        return proc

    @staticmethod
    def _stop(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()

    def fetch(self, url, deadline=30):
        """GET ``url`` from the host, retrying while the server starts."""
        end = time.monotonic() + deadline
        while True:
            r = self.host(sys.executable, '-c', FETCH, url)
            if r.code == 0 or time.monotonic() > end:
                return r
            time.sleep(0.5)

    def settings(self, ref):
        info = json.loads(self.kz('inspect', ref, check=0).out)[0]
        return info['NetworkSettings']

    def leases(self):
        path = os.path.join(self.state_path, 'network',
                            'leases-%s.json' % self.bridge)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)['leases']

    def nft_table(self):
        r = self.host('nft', 'list', 'table', 'inet', 'kata_zun')
        return r.text if r.code == 0 else None

    def assert_nothing_left(self, cids):
        links = self.host('ip', '-o', 'link', 'show', check=0).text
        table = self.nft_table() or ''
        for cid in cids:
            self.assertNotIn('kzt' + cid[:12], links)
            self.assertNotIn(cid, table)
        self.assertNotIn('kzt', links)
        self.assertNotIn('kz:%s:' % self.bridge, table)
        self.assertIn(self.leases(), (None, {}))

    def assert_nothing_made(self):
        """After refused input: no record, no link, no rule, no lease."""
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)
        links = self.host('ip', '-o', 'link', 'show', check=0).text
        self.assertNotIn('kzt', links)
        table = self.nft_table() or ''
        self.assertNotIn('kz:%s:' % self.bridge, table)
        self.assertIn(self.leases(), (None, {}))

    # -------------------------------------------------------------- tests
    def test_containers_reach_each_other_and_the_host(self):
        a = self.kz('run', '-d', '--name', 'a', '--hostname', 'alpha',
                    'busybox', 'sleep', '600', check=0).text.strip()
        b = self.kz('run', '-d', '--name', 'b', 'busybox', 'sleep', '600',
                    check=0).text.strip()
        sa, sb = self.settings('a'), self.settings('b')
        for s in (sa, sb):
            self.assertEqual(('bridge', self.bridge, self.gateway, 24),
                             (s['Network'], s['Bridge'], s['Gateway'],
                              s['IPPrefixLen']))
            self.assertTrue(s['IPAddress'].startswith('10.213.%d.' %
                                                      self.octet))
        self.assertNotEqual(sa['IPAddress'], sb['IPAddress'])
        self.assertEqual({a, b}, set(self.leases()))

        # The guest side: address, MTU, default route, DNS, /etc/hosts.
        r = self.kz('exec', 'a', 'sh', '-c',
                    'ip -o -4 addr show; ip route; cat /etc/resolv.conf; '
                    'cat /etc/hosts', check=0)
        self.assertIn('inet %s/24' % sa['IPAddress'], r.text)
        self.assertIn('default via %s' % self.gateway, r.text)
        self.assertIn('nameserver %s' % self.gateway, r.text)
        self.assertIn('%s\talpha' % sa['IPAddress'], r.text)
        self.assertIn('lo', r.text)

        # Container to container, by address.
        self.kz('exec', 'a', 'ping', '-c', '2', '-W', '10', sb['IPAddress'],
                check=0)
        self.kz('exec', 'b', 'ping', '-c', '2', '-W', '10', sa['IPAddress'],
                check=0)

        # Container to a server on the host (on the bridge address).
        docroot = tempfile.mkdtemp(dir=self.state_path)
        token = secrets.token_hex(8)
        with open(os.path.join(docroot, 'hello.txt'), 'w') as f:
            f.write(token)
        server = self.host_background(
            sys.executable, '-m', 'http.server', '--bind', self.gateway,
            '--directory', docroot, str(self.port))
        self.assertIsNone(server.poll())
        url = 'http://%s:%d/hello.txt' % (self.gateway, self.port)
        self.assertEqual(token, self.fetch(url).text)    # it is up
        r = self.kz('exec', 'b', 'wget', '-q', '-O', '-', url,
                    check=0)
        self.assertEqual(token, r.text)

        self.kz('rm', '-f', 'a', 'b', check=0)
        self.assert_nothing_left([a, b])

    def test_published_ports_from_the_host_then_nothing_left(self):
        token = secrets.token_hex(8)
        p1, p2 = self.port, self.port + 1
        cid = self.kz('run', '-d', '--name', 'web', '-e', 'TOKEN=' + token,
                      '-p', '%d:8080' % p1,
                      '-p', '127.0.0.1:%d:8080/tcp' % p2,
                      'busybox', 'sh', '-c', HTTPD, check=0).text.strip()
        s = self.settings('web')
        self.assertEqual({'8080/tcp': [
            {'HostIp': '0.0.0.0', 'HostPort': str(p1)},
            {'HostIp': '127.0.0.1', 'HostPort': str(p2)}]}, s['Ports'])
        # docker port: every mapping, or the host side of one port.
        self.assertEqual(['8080/tcp -> 0.0.0.0:%d' % p1,
                          '8080/tcp -> 127.0.0.1:%d' % p2],
                         self.kz('port', 'web', check=0).text.splitlines())
        self.assertEqual(['0.0.0.0:%d' % p1, '127.0.0.1:%d' % p2],
                         self.kz('port', 'web', '8080/tcp',
                                 check=0).text.splitlines())
        self.assertIn(b"No public port '8080/udp' published for web",
                      self.kz('port', 'web', '8080/udp', check=1).err)
        # From the host itself: through loopback and through the bridge
        # address (OUTPUT DNAT), on every address and on 127.0.0.1 only.
        for url in ('http://127.0.0.1:%d/' % p1,
                    'http://%s:%d/' % (self.gateway, p1),
                    'http://127.0.0.1:%d/' % p2):
            r = self.fetch(url)
            self.assertEqual((0, token + '\n'), (r.code, r.text), r)
        self.assertNotEqual(0, self.fetch('http://%s:%d/' % (
            self.gateway, p2), deadline=0).code)

        # A second container may not take the same host port.
        r = self.kz('run', '-d', '-p', '%d:80' % p1, 'busybox', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'already published by container %s' %
                      cid[:12].encode(), r.err)
        self.assertEqual([cid[:12]],
                         self.kz('ps', '-a', '-q', check=0).text.split())
        self.assertEqual({cid}, set(self.leases()))

        # Tagged rules exist while it lives, stopped or not ...
        self.assertIn('kz:%s:%s' % (self.bridge, cid), self.nft_table())
        self.kz('stop', '-t', '0', 'web', check=0)
        self.assertIn('kzt' + cid[:12], self.host('ip', '-o', 'link',
                                                  check=0).text)
        # Like Docker, a stopped container publishes nothing.
        self.assertEqual(b'', self.kz('port', 'web', check=0).out)
        # ... and rm removes every tap, rule and lease it made.
        self.kz('rm', 'web', check=0)
        self.assert_nothing_left([cid])
        # The bridge stays, with its NAT rules (like docker0).
        self.assertIn(self.bridge, self.host('ip', '-o', 'link',
                                             check=0).text)
        self.assertIn('masquerade comment "kz-br:%s"' % self.bridge,
                      self.nft_table())

    def test_leftovers_of_a_vanished_container_are_reconciled(self):
        # --rm -d: the shim deletes the record when the container exits,
        # with no CLI around to release its network.
        gone = self.kz('run', '-d', '--rm', '-p', '%d:80' % self.port,
                       'busybox', 'true', check=0).text.strip()
        deadline = time.monotonic() + 60
        while self.kz('ps', '-a', '-q', check=0).text.strip():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.2)
        self.assertIn(gone, self.leases())
        self.assertIn('kzt' + gone[:12], self.host('ip', '-o', 'link',
                                                   check=0).text)
        # The next start reconciles: the tap, rules and lease are gone,
        # and the host port is free again.
        r = self.kz('run', '--rm', '-p', '%d:80' % self.port, 'busybox',
                    'echo', 'ok', check=0)
        self.assertEqual('ok\n', r.text)
        self.assert_nothing_left([gone])

    def test_network_none_is_loopback_only(self):
        r = self.kz('run', '--rm', '--network', 'none', 'busybox', 'sh',
                    '-c', 'ip -o link show; ip -o -4 addr show', check=0)
        self.assertIn('lo:', r.text)
        self.assertIn('127.0.0.1/8', r.text)
        self.assertNotIn('eth0', r.text)
        self.assert_nothing_made()

    def test_bad_input_clear_errors_nothing_made(self):
        cases = [
            (('--network', 'moon'), b"unknown network 'moon'"),
            (('-p', '80'), b'invalid port mapping'),
            (('-p', '8080:80/sctp'), b'protocol must be tcp or udp'),
            (('-p', '1:1', '-p', '1:2'), b'is given twice'),
            (('--network', 'none', '-p', '1:1'), b'needs a network'),
            (('-p', '10.213.%d.77:1:1' % (self.octet ^ 1)),
             b'is not an address of this host'),
        ]
        # A host port something on the host listens on.
        listener = self.host_background(sys.executable, '-c', LISTEN,
                                        str(self.port))
        self.assertEqual(b'listening\n', listener.stdout.readline())
        cases.append((('-p', '%d:80' % self.port),
                      b'host port 0.0.0.0:%d/tcp is already in use' %
                      self.port))
        for args, message in cases:
            r = self.kz('run', '-d', *(args + ('busybox', 'true')))
            self.assertEqual(125, r.code, r)
            self.assertIn(message, r.err)
            self.assert_nothing_made()
        self.assertIsNone(self.nft_table())
        self.assertNotIn(self.bridge, self.host('ip', '-o', 'link',
                                                check=0).text)

        # A subnet that overlaps a route of the host.
        self.host('ip', 'route', 'add', '10.213.%d.128/25' % self.octet,
                  'dev', 'lo', check=0)
        r = self.kz('run', '-d', 'busybox', 'true')
        self.assertEqual(125, r.code, r)
        self.assertIn(b'overlaps 10.213.%d.128/25 dev lo' % self.octet,
                      r.err)
        self.assert_nothing_made()
        self.assertNotIn(self.bridge, self.host('ip', '-o', 'link',
                                                check=0).text)

    def test_hostile_privileged_calls_change_nothing(self):
        """Whatever an unprivileged caller passes to the privileged
        functions: no other bridge, no table but ours, no forward to an
        address that is not a guest's, no rule syntax of its own.
        """
        cid = secrets.token_hex(32)
        net = '10.213.%d' % self.octet
        other = '10.213.%d' % (self.octet ^ 1)
        tap = 'kzt' + cid[:12]
        good = {'proto': 'tcp', 'host_ip': '0.0.0.0', 'host_port': 8080,
                'container_port': 80}
        attacks = [
            # Main's rule-text entrypoint, should there be one.
            ['nft_apply', ['add rule inet kata_zun prerouting tcp dport '
                           '2222 dnat ip to 192.0.2.1:22 comment "kz:x"']],
            ['nft_apply', ['add table ip kz_evil']],
            ['nft_apply', ['add rule inet kata_zun output oifname "lo" '
                           'drop comment "kz:x"']],
            # Another bridge, another subnet.
            ['ensure_bridge', ['kzother', other + '.1', 24, 1500]],
            ['ensure_bridge', [self.bridge, other + '.1', 24, 1500]],
            ['create_tap', [tap, 'kzother', 1500]],
            ['nat_publish', ['kzother', self.subnet, cid, net + '.2',
                             [good]]],
            ['nat_publish', [self.bridge, other + '.0/24', cid,
                             other + '.2', [good]]],
            # A forward to something that is not a guest.
            ['nat_publish', [self.bridge, self.subnet, cid, '192.0.2.1',
                             [good]]],
            ['nat_publish', [self.bridge, self.subnet, cid, self.gateway,
                             [good]]],
            ['nat_publish', [self.bridge, self.subnet, cid, net + '.2',
                             [dict(good, host_ip=net + '.3')]]],
            # Rule syntax in every value.
            ['nat_publish', [self.bridge + '" accept; #', self.subnet, cid,
                             net + '.2', [good]]],
            ['nat_publish', [self.bridge, self.subnet, cid + '" drop #',
                             net + '.2', [good]]],
            ['nat_publish', [self.bridge, self.subnet, cid,
                             net + '.2 drop', [good]]],
            ['nat_publish', [self.bridge, self.subnet, cid, net + '.2',
                             [dict(good, proto='tcp dport 1 drop')]]],
            ['nat_publish', [self.bridge, self.subnet, cid, net + '.2',
                             [dict(good, host_port='1 drop')]]],
        ]
        r = self.host(sys.executable, '-c', PRIV_CALLS, self.conf_file,
                      json.dumps(attacks), check=0)
        outcomes = json.loads(r.out.decode().strip().splitlines()[-1])
        self.assertEqual(len(attacks), len(outcomes))
        ruleset = self.host('nft', 'list', 'ruleset', check=0).text
        links = self.host('ip', '-o', 'link', 'show', check=0).text
        # The host is untouched ...
        self.assertNotIn('kzother', links)
        self.assertNotIn(tap, links)
        self.assertNotIn('kz_evil', ruleset)
        self.assertNotIn('192.0.2.1', ruleset)
        self.assertNotIn(other, ruleset)
        self.assertNotIn('drop', ruleset)
        self.assertNotIn('dnat', ruleset)
        # ... because every call was refused, with a clear error.
        for (name, _args), (_name, outcome) in zip(attacks, outcomes):
            self.assertNotEqual('accepted', outcome, name)
            if name != 'nft_apply':
                self.assertTrue(outcome.startswith('ValueError: refusing')
                                or outcome.startswith('ValueError: '),
                                outcome)

        # The same functions with the configured values do their job.
        legit = [['ensure_bridge', [self.bridge, self.gateway, 24, 1500]],
                 ['create_tap', [tap, self.bridge, 1500]],
                 ['nat_publish', [self.bridge, self.subnet, cid,
                                  net + '.2', [good]]],
                 ['nat_publish', [self.bridge, self.subnet, cid,
                                  net + '.2', [good]]],
                 ['nat_unpublish', [self.bridge, cid]],
                 ['delete_link', [tap]]]
        r = self.host(sys.executable, '-c', PRIV_CALLS, self.conf_file,
                      json.dumps(legit[:4]), check=0)
        self.assertEqual([[n, 'accepted'] for n, _a in legit[:4]],
                         json.loads(r.out.decode().strip().splitlines()[-1]))
        table = self.nft_table()
        # Re-applied, not duplicated: one DNAT per hook.
        self.assertEqual(2, table.count(
            'dnat ip to %s.2:80 comment "kz:%s:%s"' % (net, self.bridge,
                                                       cid)), table)
        self.assertIn(tap, self.host('ip', '-o', 'link', 'show',
                                     check=0).text)
        r = self.host(sys.executable, '-c', PRIV_CALLS, self.conf_file,
                      json.dumps(legit[4:]), check=0)
        self.assertEqual([[n, 'accepted'] for n, _a in legit[4:]],
                         json.loads(r.out.decode().strip().splitlines()[-1]))
        self.assertNotIn(cid, self.nft_table())
        self.assertNotIn(tap, self.host('ip', '-o', 'link', 'show',
                                        check=0).text)
