"""The agent's process half: output frame buffers."""

from oslotest import base

from kata_zun.agent import guestproc
from kata_zun.agent import protocol


class OutputBufferTestCase(base.BaseTestCase):

    def test_reused_only_once_no_frame_uses_it(self):
        ops = guestproc.ProcessOps()
        first = ops._output_buffer()
        self.assertEqual(protocol.STREAM_HEAD.size + guestproc.OUTPUT_READ,
                         len(first))
        queued = memoryview(first)[:10]     # a frame waiting to go out
        first_id = id(first)
        del first                           # only the pool and the frame
        self.assertNotEqual(first_id, id(ops._output_buffer()))
        queued.release()                    # it went out
        self.assertEqual(first_id, id(ops._output_buffer()))

    def test_the_pool_is_bounded(self):
        ops = guestproc.ProcessOps()
        views = [memoryview(ops._output_buffer())
                 for _ in range(guestproc.OUTPUT_BUFFERS + 5)]
        self.assertEqual(guestproc.OUTPUT_BUFFERS, len(ops._out_pool))
        self.assertEqual(len(views), len({id(v.obj) for v in views}))
