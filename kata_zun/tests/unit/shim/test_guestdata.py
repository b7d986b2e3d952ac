from oslotest import base

from kata_zun.shim import guestdata


class PrintableTestCase(base.BaseTestCase):

    def test_no_forged_lines_or_escape_sequences(self):
        text = guestdata.printable(
            'ok\n2026-01-01 ERROR forged\r\x1b[2J\x00\x7f\x9b'
            '\u2028\u202e\ufeff\U000e0001\ud800 é 中 \\n')
        for bad in ('\n', '\r', '\x1b', '\x00', '\x7f', '\x9b', '\u2028',
                    '\u202e', '\ufeff', '\U000e0001', '\ud800'):
            self.assertNotIn(bad, text)
        self.assertIn('\\x1b[2J', text)
        self.assertIn('é 中 \\n', text)          # printable text is kept
        self.assertEqual(text, guestdata.printable(text))   # idempotent

    def test_truncated_with_a_marker(self):
        self.assertEqual('abc...[7 more characters]',
                         guestdata.printable('abcdefghij', 3))
        self.assertEqual("{'a': 1}", guestdata.printable({'a': 1}))
        self.assertEqual('\ufffd', guestdata.printable(b'\xff'))

    def test_types(self):
        self.assertIsNone(guestdata.integer(True))
        self.assertIsNone(guestdata.integer(2 ** 70))
        self.assertIsNone(guestdata.integer(-1))
        self.assertEqual(5, guestdata.integer(5))
        self.assertIsNone(guestdata.number(float('nan')))
        self.assertIsNone(guestdata.number(float('inf')))
        self.assertEqual(1.5, guestdata.number(1.5))
        self.assertEqual({'code': 'guest', 'message': 'x\\ny'},
                         guestdata.error('x\ny'))
        self.assertEqual({'proc': None, 'pid': None, 'error': None},
                         guestdata.started({'proc': 'a', 'pid': 0}))
