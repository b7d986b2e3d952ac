# Sphinx configuration of the kata-zun documentation ("tox -e docs",
# tools/run-tests.sh: sphinx-build -W, so every warning fails the build).

import os
import subprocess
import sys

sys.path.insert(0, os.path.abspath('_exts'))

extensions = [
    # [kata*] option reference from the oslo-config-generator config.
    'oslo_config.sphinxext',
    # The sample configuration file, generated at build time.
    'oslo_config.sphinxconfiggen',
    # "kata-zun VERB --help" of every verb, from the CLI's own parser.
    'cli_help',
]

try:
    import openstackdocstheme  # noqa: F401
except ImportError:
    # Without it (it is in doc/requirements.txt) the default theme does.
    html_theme = 'alabaster'
else:
    extensions.append('openstackdocstheme')
    html_theme = 'openstackdocs'
    openstackdocs_repo_name = 'x/kata-zun'
    openstackdocs_bug_project = 'kata-zun'
    openstackdocs_bug_tag = 'doc'
    openstackdocs_auto_name = False
    openstackdocs_use_storyboard = False


def _full_git_history():
    """True where reno can read the notes' history: a git checkout that
    is not shallow (CI may clone with --depth).
    """
    try:
        out = subprocess.run(
            ['git', 'rev-parse', '--is-shallow-repository'],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == 'false'


# The release notes page: reno where it can read git history, otherwise
# every note as unreleased (_exts/notes_fallback.py).
try:
    import reno.sphinxext  # noqa: F401
except ImportError:
    _reno = False
else:
    _reno = _full_git_history()
extensions.append('reno.sphinxext' if _reno else 'notes_fallback')

config_generator_config_file = (
    '../../etc/kata_zun/kata_zun-config-generator.conf')
sample_config_basename = '_static/kata_zun'

project = 'kata-zun'
copyright = 'kata-zun developers'
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'native'
html_static_path = ['_static']
