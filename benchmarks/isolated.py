"""A kata-zun of the benchmarks' own: a temporary state path (the host's
guest assets linked in), a short run path and a config file naming them,
so that no benchmark touches a user's containers or images.
"""

import compileall
import os
import shutil
import tempfile

GUEST_DIR = os.environ.get('KATA_ZUN_GUEST_DIR', '/var/lib/kata-zun/guest')


def compile_package():
    """Compile the bytecode of the kata_zun being measured, as an install
    does: a checkout run where Python may not write its cache
    (PYTHONDONTWRITEBYTECODE) would otherwise compile every module of
    every CLI run and shim again (about 0.1 s each).
    """
    import kata_zun
    compileall.compile_dir(os.path.dirname(kata_zun.__file__), quiet=1)


class Isolated(object):
    """:param prefix: of the temporary directory.
    :param extra_config: more config text (sections and options).
    """

    def __init__(self, prefix, extra_config=''):
        compile_package()
        self.root = tempfile.mkdtemp(prefix=prefix)
        self.state = os.path.join(self.root, 'state')
        os.makedirs(self.state)
        os.symlink(GUEST_DIR, os.path.join(self.state, 'guest'))
        # Unix socket paths must stay short.
        self.run = tempfile.mkdtemp(prefix='kzr', dir='/tmp')
        self.conf = os.path.join(self.root, 'kata-zun.conf')
        with open(self.conf, 'w') as f:
            f.write('[kata]\nstate_path = %s\nrun_path = %s\n'
                    '[kata_network]\ndriver = none\n%s'
                    % (self.state, self.run, extra_config))

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)
