"""docker top's ps options from the guest's process list."""

from oslotest import base

from kata_zun import exception
from kata_zun.runtime import pstable

NOW = 1_000_000.0
PROCS = [
    {'pid': 1, 'ppid': 0, 'uid': 0, 'state': 'S', 'cpu_time': 3.0,
     'start_time': NOW - 10, 'rss_kb': 1200, 'cmd': '/bin/sh -c sleep'},
    {'pid': 7, 'ppid': 1, 'uid': 1000, 'state': 'R', 'cpu_time': 90000.0,
     'start_time': NOW - 200000, 'rss_kb': 4, 'cmd': 'sleep 1000'},
]


class PsTableTestCase(base.BaseTestCase):

    def titles(self, args):
        return pstable.table(PROCS, args, now=NOW)['Titles']

    def test_default_is_docker_s_ps_ef(self):
        for args in (None, 'None', '', '-ef', 'ef', '-f', '-eFw', '-A -f'):
            self.assertEqual(['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY',
                              'TIME', 'CMD'], self.titles(args), args)
        rows = pstable.table(PROCS, None, now=NOW)['Processes']
        self.assertEqual(['0', '1', '0', '30'], rows[0][:4])
        self.assertEqual(['1-01:00:00', 'sleep 1000'], rows[1][-2:])

    def test_selection_only(self):
        for args in ('-e', '-A', 'ax', 'aex'):
            self.assertEqual(['PID', 'TTY', 'TIME', 'CMD'],
                             self.titles(args))

    def test_output_fields(self):
        for args in ('-o pid,comm,rss', '-eo pid,comm,rss', 'axo pid,comm,rss',
                     '-opid,comm,rss', '--format pid,comm,rss',
                     '-o pid -o comm,rss'):
            table = pstable.table(PROCS, args, now=NOW)
            self.assertEqual(['PID', 'COMMAND', 'RSS'], table['Titles'],
                             args)
            self.assertEqual([['1', 'sh', '1200'], ['7', 'sleep', '4']],
                             table['Processes'])
        table = pstable.table(PROCS, '-o pid,pcpu,etime,user,stat',
                              now=NOW)
        self.assertEqual(['1', '30.0', '00:00:10', '0', 'S'],
                         table['Processes'][0])

    def test_refused_with_a_clear_message(self):
        for args in ('aux', '-u', 'l', '-o pid,vsz', '-o', '-x -Z',
                     '--sort=pid', '"unterminated', 'x' * 300, '-o ,,'):
            e = self.assertRaises(exception.InvalidInput, pstable.table,
                                  PROCS, args)
            self.assertIn('Supported:', str(e))
            self.assertLess(len(str(e)), 1024)

    def test_guest_text_stays_inert(self):
        procs = [dict(PROCS[0], cmd='evil\x1b[2J\nPID', state='\x07S')]
        row = pstable.table(procs, '-o cmd,stat,comm', now=NOW)[
            'Processes'][0]
        shown = 'evil\\x1b[2J\\nPID'
        self.assertEqual([shown, '\\x07S', shown], row)
