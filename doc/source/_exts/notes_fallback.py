"""A ``release-notes`` directive for builds where reno cannot run.

reno reads the notes through git history, which a shallow clone or a
source tree without ``.git`` does not have (reno then fails with a
KeyError on a missing parent commit). conf.py loads this extension
instead of ``reno.sphinxext`` there: it renders every note of
``releasenotes/notes`` as not yet released, by section, in reno's order.
"""

import glob
import os

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
import yaml

SECTIONS = (('prelude', 'Prelude'), ('features', 'New Features'),
            ('issues', 'Known Issues'), ('upgrade', 'Upgrade Notes'),
            ('deprecations', 'Deprecation Notes'),
            ('critical', 'Critical Issues'),
            ('security', 'Security Issues'), ('fixes', 'Bug Fixes'),
            ('other', 'Other Notes'))


class ReleaseNotes(SphinxDirective):
    has_content = False
    option_spec = {'notesdir': str, 'branch': str, 'earliest-version': str}

    def run(self):
        root = os.path.join(self.env.srcdir, '..', '..')
        notesdir = self.options.get('notesdir', 'releasenotes/notes')
        by_section = {key: [] for key, _title in SECTIONS}
        for path in sorted(glob.glob(os.path.join(root, notesdir,
                                                  '*.yaml'))):
            self.env.note_dependency(os.path.abspath(path))
            with open(path) as f:
                note = yaml.safe_load(f) or {}
            for key in by_section:
                value = note.get(key)
                if isinstance(value, str):
                    value = [value]
                by_section[key].extend(value or [])
        lines = ['Not yet released', '=' * 16, '',
                 '(reno could not read the git history here: every note',
                 'is listed.)', '']
        for key, title in SECTIONS:
            if not by_section[key]:
                continue
            lines += [title, '-' * len(title), '']
            for text in by_section[key]:
                body = text.strip().splitlines()
                lines += ['- ' + body[0]] + ['  ' + b for b in body[1:]]
                lines.append('')
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines), node)
        return node.children


def setup(app):
    app.add_directive('release-notes', ReleaseNotes)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
