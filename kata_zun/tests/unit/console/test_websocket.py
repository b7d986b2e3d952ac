import os
import struct

from oslotest import base

from kata_zun.console import websocket as ws


def masked(opcode, payload=b'', fin=True, mask=b'\x01\x02\x03\x04'):
    return ws.encode_frame(opcode, payload, fin=fin, mask=mask)


class HandshakeTest(base.BaseTestCase):

    def test_accept_key_from_rfc6455(self):
        self.assertEqual('s3pPLMBiTxaQ9kYGzzhZRbK+xOo=',
                         ws.accept_key('dGhlIHNhbXBsZSBub25jZQ=='))

    def test_valid_key(self):
        self.assertTrue(ws.valid_key('dGhlIHNhbXBsZSBub25jZQ=='))
        for bad in (None, '', 'short', 'dGhlIHNhbXBsZSBub25jZQ',
                    'dGhlIHNhbXBsZSBub25jZSE=', '!' * 24, 'é' * 24):
            self.assertFalse(ws.valid_key(bad), bad)


class FrameParserTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.parser = ws.FrameParser(max_payload=100000)

    def assertError(self, code, data, parser=None):
        exc = self.assertRaises(ws.WebSocketError,
                                (parser or self.parser).feed, data)
        self.assertEqual(code, exc.code)
        return exc

    def test_masked_frames_of_every_length_encoding(self):
        for size in (0, 1, 125, 126, 65535, 65536, 99999):
            payload = os.urandom(size)
            frames = self.parser.feed(masked(ws.OP_BINARY, payload))
            self.assertEqual(1, len(frames))
            self.assertEqual(ws.OP_BINARY, frames[0].opcode)
            self.assertEqual(payload, frames[0].payload)

    def test_byte_by_byte_and_several_per_read(self):
        data = (masked(ws.OP_TEXT, b'ls -l\n') + masked(ws.OP_PING, b'p') +
                masked(ws.OP_BINARY, b'\xff\x00'))
        frames = []
        for i in range(len(data)):
            frames += self.parser.feed(data[i:i + 1])
        self.assertEqual([(ws.OP_TEXT, b'ls -l\n'), (ws.OP_PING, b'p'),
                          (ws.OP_BINARY, b'\xff\x00')],
                         [(f.opcode, f.payload) for f in frames])
        self.assertEqual(3, len(ws.FrameParser().feed(data)))

    def test_text_is_not_checked_for_utf8(self):
        # zun-wsproxy sends raw terminal bytes in text frames.
        frames = self.parser.feed(masked(ws.OP_TEXT, b'\xff\xfe'))
        self.assertEqual(b'\xff\xfe', frames[0].payload)

    def test_fragmented_message_with_interleaved_ping(self):
        data = (masked(ws.OP_TEXT, b'ab', fin=False) +
                masked(ws.OP_PING, b'x') +
                masked(ws.OP_CONT, b'cd', fin=False) +
                masked(ws.OP_CONT, b'ef', fin=True) +
                masked(ws.OP_BINARY, b'g'))
        frames = self.parser.feed(data)
        self.assertEqual([(1, False, b'ab'), (9, True, b'x'),
                          (0, False, b'cd'), (0, True, b'ef'),
                          (2, True, b'g')],
                         [(f.opcode, f.fin, f.payload) for f in frames])

    def test_fragmentation_out_of_sequence(self):
        self.assertError(ws.CLOSE_PROTOCOL_ERROR, masked(ws.OP_CONT, b'a'))
        parser = ws.FrameParser()
        parser.feed(masked(ws.OP_TEXT, b'a', fin=False))
        self.assertError(ws.CLOSE_PROTOCOL_ERROR,
                         masked(ws.OP_BINARY, b'b'), parser)

    def test_unmasked_client_frame_is_refused(self):
        exc = self.assertError(ws.CLOSE_PROTOCOL_ERROR,
                               ws.encode_frame(ws.OP_TEXT, b'a'))
        self.assertIn('masked', exc.reason)
        parser = ws.FrameParser(require_mask=False)
        self.assertEqual(b'a', parser.feed(
            ws.encode_frame(ws.OP_TEXT, b'a'))[0].payload)

    def test_reserved_bits_and_opcodes(self):
        frame = bytearray(masked(ws.OP_TEXT, b'a'))
        frame[0] |= 0x40
        self.assertError(ws.CLOSE_PROTOCOL_ERROR, bytes(frame))
        for opcode in (3, 7, 0xB, 0xF):
            self.assertError(ws.CLOSE_PROTOCOL_ERROR, masked(opcode, b''),
                             ws.FrameParser())

    def test_control_frames_are_short_and_whole(self):
        self.assertError(ws.CLOSE_PROTOCOL_ERROR,
                         masked(ws.OP_PING, b'x' * 126))
        self.assertError(ws.CLOSE_PROTOCOL_ERROR,
                         masked(ws.OP_PING, b'x', fin=False),
                         ws.FrameParser())

    def test_oversized_frame_is_refused_from_its_header(self):
        parser = ws.FrameParser(max_payload=1000)
        header = bytes([0x82, 0x80 | 126]) + struct.pack('>H', 1001)
        # Refused before any payload is buffered.
        self.assertError(ws.CLOSE_TOO_BIG, header, parser)
        parser = ws.FrameParser(max_payload=1000)
        header = bytes([0x82, 0x80 | 127]) + struct.pack('>Q', 1 << 40)
        self.assertError(ws.CLOSE_TOO_BIG, header, parser)
        parser = ws.FrameParser()
        header = bytes([0x82, 0x80 | 127]) + struct.pack('>Q', 1 << 63)
        self.assertError(ws.CLOSE_PROTOCOL_ERROR, header, parser)

    def test_close(self):
        frames = self.parser.feed(
            masked(ws.OP_CLOSE, ws.close_payload(1000, 'bye')) +
            masked(ws.OP_TEXT, b'ignored'))
        self.assertEqual([ws.OP_CLOSE], [f.opcode for f in frames])
        self.assertTrue(self.parser.closed)
        self.assertEqual((1000, 'bye'), ws.parse_close(frames[0].payload))
        self.assertEqual([], self.parser.feed(masked(ws.OP_TEXT, b'x')))
        self.assertEqual((None, ''), ws.parse_close(b''))

    def test_malformed_close(self):
        for payload, code in ((b'\x03', ws.CLOSE_PROTOCOL_ERROR),
                              (struct.pack('>H', 999),
                               ws.CLOSE_PROTOCOL_ERROR),
                              (struct.pack('>H', 1005),
                               ws.CLOSE_PROTOCOL_ERROR),
                              (struct.pack('>H', 1000) + b'\xff',
                               ws.CLOSE_INVALID_DATA)):
            self.assertError(code, masked(ws.OP_CLOSE, payload),
                             ws.FrameParser())
        self.assertEqual(4001, ws.parse_close(struct.pack('>H', 4001))[0])

    def test_close_payload_fits_a_control_frame(self):
        payload = ws.close_payload(1000, 'é' * 200)
        self.assertLessEqual(len(payload), 125)
        self.assertEqual(1000, ws.parse_close(payload)[0])

    def test_server_frames_are_unmasked(self):
        frame = ws.encode_frame(ws.OP_BINARY, b'x' * 300)
        self.assertEqual(0x82, frame[0])
        self.assertEqual(126, frame[1])
        self.assertEqual(b'x' * 300, frame[4:])
