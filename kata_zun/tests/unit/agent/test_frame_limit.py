"""The host's frame limit admits every frame the guest agent sends."""

import tempfile

from oslo_config import fixture as config_fixture
from oslotest import base

from kata_zun.agent import guestproc
from kata_zun.agent import protocol
from kata_zun import conf


def _largest_output_frame():
    """:returns: the bytes of the stream frame the agent makes from one
        full read of output (:meth:`ProcessOps._read_output`: a regular
        file gives a full read at once, as a busy pipe does).
    """
    with tempfile.TemporaryFile() as f:
        f.write(b'x' * (guestproc.OUTPUT_READ + 100))
        f.seek(0)
        buf = bytearray(protocol.STREAM_HEAD.size + guestproc.OUTPUT_READ)
        return bytes(protocol.read_stream(f.fileno(), protocol.STDOUT, 1,
                                          buf))


class FrameLimitTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))

    def _opt(self):
        return [o for o in conf.agent.OPTS if o.name == 'max_frame_bytes'][0]

    def test_smallest_limit_takes_the_largest_output_frame(self):
        # Regression: the minimum was 4096 while the agent sends output
        # frames of 512 KiB and a handle: the shim's decoder closed the
        # link on the first large output.
        frame = _largest_output_frame()
        dec = protocol.Decoder(self._opt().type.min)
        out = dec.feed(frame)
        self.assertEqual(1, len(out))
        self.assertEqual(guestproc.OUTPUT_READ, len(out[0].stream()[1]))
        self.assertEqual(protocol.MAX_AGENT_STREAM_FRAME,
                         len(out[0].payload))

    def test_a_smaller_limit_is_refused(self):
        self.assertRaises(ValueError, self.cfg.config,
                          max_frame_bytes=protocol.MAX_AGENT_STREAM_FRAME - 1,
                          group='kata_agent')
        self.cfg.config(max_frame_bytes=protocol.MAX_AGENT_STREAM_FRAME,
                        group='kata_agent')
        self.assertIn(str(protocol.MAX_AGENT_STREAM_FRAME),
                      self._opt().help)

    def test_default_readers_take_it_too(self):
        # The shim forwards output frames as they are to its clients
        # (ShimClient's default limit) and the template builder greets
        # the agent with the default decoder.
        self.assertGreaterEqual(protocol.DEFAULT_MAX_FRAME,
                                protocol.MAX_AGENT_STREAM_FRAME)
        self.assertGreaterEqual(conf.CONF.kata_agent.max_frame_bytes,
                                protocol.MAX_AGENT_STREAM_FRAME)
