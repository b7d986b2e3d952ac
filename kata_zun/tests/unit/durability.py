"""A fixture that checks files reach the disk before they are named."""

import os

import fixtures


class SyncRecorder(fixtures.Fixture):
    """Records fsyncs (by the path of the descriptor) and renames, in
    order, so a test can check that what a rename publishes was fsynced
    before it and the directory it lands in after it.
    """

    def _setUp(self):
        self.events = []
        real_fsync, real_rename, real_replace = (os.fsync, os.rename,
                                                 os.replace)

        def fsync(fd):
            self.events.append(('fsync', os.path.realpath(
                '/proc/self/fd/%d' % fd)))
            return real_fsync(fd)

        def renamer(real):
            def rename(src, dst, *args, **kwargs):
                self.events.append(('rename', os.path.realpath(src),
                                    os.path.realpath(dst)))
                return real(src, dst, *args, **kwargs)
            return rename
        self.useFixture(fixtures.MonkeyPatch('os.fsync', fsync))
        self.useFixture(fixtures.MonkeyPatch('os.rename',
                                             renamer(real_rename)))
        self.useFixture(fixtures.MonkeyPatch('os.replace',
                                             renamer(real_replace)))

    def unsynced(self, dst):
        """:param dst: a file or directory renamed into place.
        :returns: what was not durable at its (last) rename: the paths
            (before the rename) of files and directories under it not
            fsynced before, and its parent directory if not fsynced
            after. Empty when all is well.
        """
        dst = os.path.realpath(dst)
        at = max(i for i, e in enumerate(self.events)
                 if e[0] == 'rename' and e[2] == dst)
        src = self.events[at][1]
        before = {e[1] for e in self.events[:at] if e[0] == 'fsync'}
        after = {e[1] for e in self.events[at + 1:] if e[0] == 'fsync'}
        wanted = ['']
        if os.path.isdir(dst):
            for dirpath, dirnames, filenames in os.walk(dst):
                rel = os.path.relpath(dirpath, dst)
                wanted.extend(os.path.normpath(os.path.join(rel, n))
                              for n in dirnames + filenames
                              if not os.path.islink(os.path.join(dirpath,
                                                                 n)))
        missing = [os.path.normpath(os.path.join(src, rel))
                   for rel in wanted
                   if os.path.normpath(os.path.join(src, rel)) not in before]
        if os.path.dirname(dst) not in after:
            missing.append(os.path.dirname(dst))
        return missing
