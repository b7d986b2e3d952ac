import subprocess
import sys

from oslotest import base


class LightweightTestCase(base.BaseTestCase):

    def test_console_imports_neither_zun_nor_eventlet(self):
        code = ('import sys; import kata_zun.console.server; '
                'bad = [m for m in sys.modules if m == "zun" or '
                'm.startswith(("zun.", "eventlet"))]; '
                'print(bad); sys.exit(1 if bad else 0)')
        proc = subprocess.run([sys.executable, '-c', code],
                              capture_output=True, text=True)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
