import os
import random
import socket
import struct

from oslotest import base

from kata_zun.agent import protocol


class DecoderTestCase(base.BaseTestCase):

    def test_round_trip_byte_by_byte(self):
        frames = [protocol.encode_json(protocol.REQUEST, {'id': 1, 'op': 'x'}),
                  protocol.encode_stream(protocol.STDOUT, 7, b'\x00\xffhi'),
                  protocol.encode(protocol.STDIN, struct.pack('>I', 3))]
        data = b''.join(frames)
        dec = protocol.Decoder()
        out = []
        for i in range(len(data)):
            out.extend(dec.feed(data[i:i + 1]))
        self.assertEqual(3, len(out))
        self.assertEqual({'id': 1, 'op': 'x'}, out[0].json())
        self.assertEqual((7, b'\x00\xffhi'), out[1].stream())
        self.assertEqual((3, b''), out[2].stream())
        self.assertEqual(0, dec.pending)

    def test_oversized_frame_rejected_before_payload(self):
        dec = protocol.Decoder(max_frame=1024)
        header = protocol.HEADER.pack(protocol.STDOUT, 1025)
        self.assertRaisesRegex(protocol.ProtocolError, 'exceeds the limit',
                               dec.feed, header)

    def test_unknown_type_rejected(self):
        dec = protocol.Decoder()
        self.assertRaisesRegex(protocol.ProtocolError, 'unknown frame type',
                               dec.feed, protocol.HEADER.pack(99, 0))

    def test_malformed_json(self):
        for payload in (b'\xff\xfe', b'not json', b'[1, 2]', b'"s"',
                        b'{"a": ' * 40 + b'1' + b'}' * 40):
            frame = protocol.Frame(protocol.RESPONSE, payload)
            self.assertRaises(protocol.ProtocolError, frame.json)

    def test_deep_nesting_is_a_protocol_error_not_recursion(self):
        # Deeper than the C decoder's recursion limit: today's json.loads
        # raised RecursionError, which no caller expects.
        limit = protocol.DEFAULT_MAX_FRAME
        for payload in (b'[' * limit,
                        b'{"a":' + b'[]' * 100 + b'[' * 5000 + b'}',
                        b'{"a":' * 5000 + b'1' + b'}' * 5000,
                        b'{"a":' + b'[1,[' * 3000 + b'1' + b']]' * 3000 +
                        b'}',
                        b'{"a":' * 17 + b'1' + b'}' * 17):
            frame = protocol.Frame(protocol.RESPONSE, payload)
            self.assertRaisesRegex(protocol.ProtocolError, 'nested deeper',
                                   frame.json)

    def test_nesting_within_the_limit_and_brackets_in_strings(self):
        depth = protocol.MAX_JSON_DEPTH
        ok = b'{"a":' * depth + b'1' + b'}' * depth
        self.assertEqual(1, len(protocol.Frame(protocol.RESPONSE,
                                               ok).json()))
        shallow = {'a': [[i] for i in range(100)], 'b': [{}] * 100}
        frame = protocol.Frame(protocol.RESPONSE, protocol.encode_json(
            protocol.RESPONSE, shallow)[protocol.HEADER.size:])
        self.assertEqual(shallow, frame.json())
        text = {'s': '[{' * 5000 + '\\"]' + '[' * 99}
        frame = protocol.Frame(protocol.RESPONSE, protocol.encode_json(
            protocol.RESPONSE, text)[protocol.HEADER.size:])
        self.assertEqual(text, frame.json())

    def test_stream_frame_without_handle(self):
        frame = protocol.Frame(protocol.STDOUT, b'ab')
        self.assertRaises(protocol.ProtocolError, frame.stream)

    def test_random_garbage_never_escapes_as_other_errors(self):
        rng = random.Random(42)
        for _ in range(300):
            dec = protocol.Decoder(max_frame=4096)
            blob = bytes(rng.getrandbits(8)
                         for _ in range(rng.randint(0, 64)))
            try:
                for frame in dec.feed(blob):
                    if frame.type in protocol.CONTROL_TYPES:
                        frame.json()
                    else:
                        frame.stream()
            except protocol.ProtocolError:
                pass


class ChannelTestCase(base.BaseTestCase):

    def test_queue_and_flush_without_blocking(self):
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        a.setblocking(False)
        b.setblocking(False)
        chan = protocol.Channel(a.fileno())
        big = os.urandom(protocol.STREAM_CHUNK)
        for _ in range(64):     # far more than a socket buffer holds
            chan.send(protocol.encode_stream(protocol.STDOUT, 1, big))
        self.assertGreater(chan.pending_out, 0)
        peer = protocol.Channel(b.fileno())
        got = []
        while len(got) < 64:
            chan.flush()
            frames, eof = peer.read()
            self.assertFalse(eof)
            got.extend(frames)
        self.assertTrue(all(f.stream() == (1, big) for f in got))
        chan.close()
        frames, eof = peer.read()
        self.assertTrue(eof)


class ReadStreamTestCase(base.BaseTestCase):

    def test_a_whole_frame_read_in_place(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        os.write(w, b'hello')
        buf = bytearray(protocol.STREAM_HEAD.size + 64)
        frame = protocol.read_stream(r, protocol.STDERR, 9, buf)
        self.assertEqual(protocol.STREAM_HEAD.size + 5, len(frame))
        out = protocol.Decoder().feed(bytes(frame))
        self.assertEqual(1, len(out))
        self.assertEqual(protocol.STDERR, out[0].type)
        self.assertEqual((9, b'hello'), out[0].stream())
        # The frame is a view of the buffer: no copy was made.
        self.assertIs(buf, frame.obj)
        os.close(w)
        self.assertIsNone(protocol.read_stream(r, protocol.STDOUT, 9, buf))

    def test_reads_at_most_the_buffer(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        os.write(w, b'x' * 100)
        buf = bytearray(protocol.STREAM_HEAD.size + 30)
        frame = protocol.read_stream(r, protocol.STDOUT, 1, buf)
        self.assertEqual(protocol.Decoder().feed(bytes(frame))[0].stream(),
                         (1, b'x' * 30))
        self.assertEqual(b'x' * 70, os.read(r, 100))
        os.set_blocking(r, False)
        self.assertRaises(BlockingIOError, protocol.read_stream, r,
                          protocol.STDOUT, 1,
                          bytearray(protocol.STREAM_HEAD.size + 100))
