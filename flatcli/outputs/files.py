"""Output files: checked before any work, written atomically (temporary file beside it, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from flatcli.errors import UsageError


def check_writable(path: str | os.PathLike) -> Path:
    """The output path, if it can be created: its directory exists and it is not itself a directory."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"output {target} is a directory; name a file")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {target}: directory {parent} is not writable")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failed or interrupted run therefore never leaves a half-written file, and an existing file
    is replaced in one step (``os.replace`` is atomic on POSIX within a file system).
    """
    target = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual mode
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_outputs(**paths: str | None) -> None:
    """Every output file named by an option is writable, and no two options name the same file.

    Keyword names are option names (``save_adv`` is ``--save-adv``); ``None`` and ``-`` (stdout) pass.
    """
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if path in (None, "-"):
            continue
        flag = "--" + option.replace("_", "-")
        if path == "":
            raise UsageError(f"{flag} needs a file name")
        if option != "plot":  # --plot checks its suffix and directory itself
            check_writable(path)
        key = os.path.abspath(os.path.expanduser(path))
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} name the same file {path}; give each its own file")
        seen[key] = flag
