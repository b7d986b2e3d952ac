# Sphinx configuration of the kata-zun documentation ("tox -e docs",
# tools/run-tests.sh: sphinx-build -W, so every warning fails the build).

import os
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

# The release notes page (releasenotes/notes, read from git by reno).
extensions.append('reno.sphinxext')

config_generator_config_file = (
    '../../etc/kata_zun/kata_zun-config-generator.conf')
sample_config_basename = '_static/kata_zun'

project = 'kata-zun'
copyright = 'kata-zun developers'
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'native'
html_static_path = ['_static']
