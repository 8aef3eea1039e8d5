"""Output files one at a time: checked before any work, written atomically (temporary file beside it, then
rename), except special files (devices, pipes, ``/dev/stdout``), which are written in place.

A run's outputs go through :mod:`flatcli.outputs.plan`, which stages them with these helpers and commits
them together; the ``--resume`` store (:mod:`flatcli.runtime.resume`) writes its files with them too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from flatcli.errors import OutputError, UsageError

#: Paths below these directories are pseudo files: ``/dev/stdout`` leads to ``/proc/self/fd/1``, whatever
#: that is; renaming over them would replace the device or the link.
PSEUDO_ROOTS = ("/dev/", "/proc/")
#: ``OSError`` numbers that mean "this output cannot be written" rather than a bug: reported as one line.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: How much of the target's name a temporary file's name keeps (``.NAME.XXXXXXXX.tmp`` must fit in the 255
#: bytes a file name may have, whatever the length of a legal target name).
MAX_NAME_KEPT = 200


def written_in_place(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a special file (not a regular file, or one reached through ``/dev`` or ``/proc``):
    such a target is opened and written as it is, never replaced by a rename."""
    target = os.path.abspath(os.path.expanduser(path))
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # exists (lstat or the link says so) but cannot be inspected: never rename over it
    if stat.S_ISDIR(mode):
        return False  # never written at all: check_writable refuses it
    if not stat.S_ISREG(mode):
        return True
    return (target + os.sep).startswith(PSEUDO_ROOTS) or os.path.realpath(target).startswith(PSEUDO_ROOTS)


def resolved(path: str | os.PathLike) -> Path:
    """Where a write to ``path`` lands: the file a link points to (links are written through, never replaced)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def check_writable(path: str | os.PathLike) -> Path:
    """The output path, if it can be written: a special file that is writable, or a file (new or existing,
    not a directory) in an existing writable directory."""
    target = Path(path).expanduser()
    if written_in_place(target):
        if not os.access(target, os.W_OK):
            raise UsageError(f"cannot write {target}: permission denied")
        return target
    real = resolved(target)
    if real.is_dir():
        raise UsageError(f"output {target} is a directory; name a file")
    parent = real.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {target}: directory {parent} is not writable")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_beside(target: Path) -> Path:
    """A new empty file in the directory of ``target`` (to be renamed onto it), with the usual file mode, named
    after it (``.NAME.XXXXXXXX.tmp``, the name cut to :data:`MAX_NAME_KEPT` characters)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:MAX_NAME_KEPT]}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual mode
    return Path(tmp)


@contextlib.contextmanager
def write_errors(target: str | os.PathLike) -> Iterator[None]:
    """A full disk (or quota, size limit, read-only file system) while writing ``target`` becomes one
    :class:`OutputError` line naming it, instead of a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {os.fspath(target)}: {e.strerror}") from None
