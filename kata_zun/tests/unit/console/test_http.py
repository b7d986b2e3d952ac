import socket
import threading
import time

from oslotest import base

from kata_zun.console import http


def _pair(data, close=True):
    a, b = socket.socketpair()

    def feed():
        try:
            b.sendall(data)
        finally:
            if close:
                b.shutdown(socket.SHUT_WR)
    threading.Thread(target=feed, daemon=True).start()
    return a, b


class ParseHeadTest(base.BaseTestCase):

    def assertStatus(self, status, head):
        exc = self.assertRaises(http.HttpError, http.parse_head, head)
        self.assertEqual(status, exc.status)
        return exc

    def test_good_request(self):
        r = http.parse_head(b'POST /v1.41/exec/ab/start?x=1&y=2 HTTP/1.1\r\n'
                            b'Host: h:2375\r\nConnection: Upgrade\r\n'
                            b'Upgrade: tcp\r\nX-Twice: a\r\nx-twice: b')
        self.assertEqual('POST', r.method)
        self.assertEqual('/v1.41/exec/ab/start', r.path)
        self.assertEqual('1', r.query_value('x'))
        self.assertIsNone(r.query_value('z'))
        self.assertEqual('h:2375', r.header('HOST'))
        self.assertEqual({'upgrade'}, r.header_tokens('connection'))
        self.assertEqual('a, b', r.header('x-twice'))

    def test_bad_request_lines(self):
        for head in (b'GET /', b'GET  / HTTP/1.1', b'get / HTTP/1.1',
                     b'GET http://x/ HTTP/1.1', b'GET /a#b HTTP/1.1',
                     b'GET / HTTP/1.1 extra', b'\xff / HTTP/1.1'):
            self.assertStatus(400, head)
        self.assertStatus(505, b'GET / HTTP/2.0')
        self.assertStatus(414, b'GET /' + b'a' * 5000 + b' HTTP/1.1')

    def test_bad_headers(self):
        for head in (b'GET / HTTP/1.1\r\n folded',
                     b'GET / HTTP/1.1\r\nno colon',
                     b'GET / HTTP/1.1\r\nbad name: x',
                     b'GET / HTTP/1.1\r\nX: a\x01b',
                     b'GET / HTTP/1.1\r\nContent-Length: 1\r\n'
                     b'Content-Length: 2',
                     b'GET / HTTP/1.1\r\nX: caf\xc3\xa9'):
            self.assertStatus(400, head)
        self.assertStatus(431, b'GET / HTTP/1.1' + b'\r\nX: y' * 65)

    def test_repeated_query_parameter(self):
        r = http.parse_head(b'GET /?token=a&token=b HTTP/1.1')
        self.assertEqual(400, self.assertRaises(
            http.HttpError, r.query_value, 'token').status)
        self.assertStatus(400, b'GET /?' + b'&'.join(
            b'a%d=1' % i for i in range(40)) + b' HTTP/1.1')


class ReadRequestTest(base.BaseTestCase):

    def read(self, data, close=True, **kw):
        a, b = _pair(data, close)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.settimeout(5)
        return http.read_request(a, **kw)

    def test_body_and_rest(self):
        r = self.read(b'POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n'
                      b'{"a"STREAM')
        self.assertEqual(b'{"a"', r.body)
        self.assertEqual(b'STREAM', r.rest)
        r = self.read(b'GET /x HTTP/1.1\r\n\r\nhello')
        self.assertEqual(b'', r.body)
        self.assertEqual(b'hello', r.rest)

    def test_limits(self):
        exc = self.assertRaises(http.HttpError, self.read,
                                b'GET / HTTP/1.1\r\n' + b'X: y\r\n' * 5000,
                                close=False)
        self.assertEqual(431, exc.status)
        exc = self.assertRaises(http.HttpError, self.read,
                                b'POST / HTTP/1.1\r\nContent-Length: '
                                b'65537\r\n\r\n')
        self.assertEqual(413, exc.status)
        for value in (b'-1', b'1x', b'9' * 13):
            exc = self.assertRaises(http.HttpError, self.read,
                                    b'POST / HTTP/1.1\r\nContent-Length: ' +
                                    value + b'\r\n\r\n')
            self.assertEqual(400, exc.status)
        exc = self.assertRaises(http.HttpError, self.read,
                                b'POST / HTTP/1.1\r\nTransfer-Encoding: '
                                b'chunked\r\n\r\n')
        self.assertEqual(501, exc.status)

    def test_early_close(self):
        self.assertIsNone(self.read(b''))
        exc = self.assertRaises(http.HttpError, self.read, b'GET / HT')
        self.assertEqual(400, exc.status)
        exc = self.assertRaises(http.HttpError, self.read,
                                b'POST / HTTP/1.1\r\nContent-Length: 9\r\n'
                                b'\r\nshort')
        self.assertEqual(400, exc.status)

    def test_slow_sender_hits_the_deadline(self):
        start = time.monotonic()
        self.assertRaises(socket.timeout, self.read, b'GET / HTTP/1.1\r\n',
                          close=False, deadline=time.monotonic() + 0.3)
        self.assertLess(time.monotonic() - start, 3)


class ResponseTest(base.BaseTestCase):

    def test_error_response_has_docker_shape(self):
        data = http.error_response(http.HttpError(
            405, 'nope', headers={'Allow': 'GET'}))
        head, _, body = data.partition(b'\r\n\r\n')
        self.assertTrue(head.startswith(b'HTTP/1.1 405 Method Not Allowed'))
        self.assertIn(b'Allow: GET', head)
        self.assertIn(b'Connection: close', head)
        self.assertIn(b'Content-Length: %d' % len(body), head)
        self.assertEqual(b'{"message": "nope"}', body)
