"""The ``kata-zun-cli-help`` directive: the help of every CLI verb.

Renders ``kata-zun --help`` and ``kata-zun VERB --help`` (and the
sub-verbs of ``guest`` and ``volume``) from the parser the CLI itself
builds (``kata_zun.cmd.cli.build_parser``), so that the user guide can
never describe an option the code does not have.
"""

import argparse
import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _sections(parser, prefix):
    """Yield (title, help text) for parser and its sub-verbs, depth first."""
    yield prefix, parser.format_help()
    for name, sub in _subparsers(parser).items():
        yield from _sections(sub, '%s %s' % (prefix, name))


class CliHelp(SphinxDirective):
    has_content = False

    def run(self):
        # argparse wraps at $COLUMNS: the same width on every machine.
        os.environ['COLUMNS'] = '79'
        from kata_zun.cmd import cli
        parser = cli.build_parser()
        parser.prog = 'kata-zun'
        result = []
        for title, text in _sections(parser, 'kata-zun'):
            ids = [nodes.make_id('cli-' + title)]
            section = nodes.section(ids=ids)
            section += nodes.title(text=title)
            section += nodes.literal_block(text, text)
            result.append(section)
        return result


def setup(app):
    app.add_directive('kata-zun-cli-help', CliHelp)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
