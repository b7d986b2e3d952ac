import subprocess
import sys

from oslotest import base


class LightweightTestCase(base.BaseTestCase):

    def test_cli_and_shim_do_not_import_zun(self):
        # zun pulls hundreds of MB of dependencies: only the driver may
        # import it, never the standalone CLI or the shim.
        code = ('import sys; import kata_zun.cmd.cli, kata_zun.cmd.shim, '
                'kata_zun.shim.server, kata_zun.runtime.manager, '
                'kata_zun.image.store, kata_zun.guest.builder, '
                'kata_zun.hypervisor.qemu.vm; '
                'bad = [m for m in sys.modules if m == "zun" or '
                'm.startswith(("zun.", "eventlet"))]; '
                'print(bad); sys.exit(1 if bad else 0)')
        proc = subprocess.run([sys.executable, '-c', code],
                              capture_output=True, text=True)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
