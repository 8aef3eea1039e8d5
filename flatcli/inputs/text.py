"""Reading a text input (a spec, a detector, sharpness JSON, a manifest) with a bound on its size.

``stat`` cannot be trusted for the bound: ``/dev/zero``, a named pipe or ``/proc`` files report size 0
and never end. :func:`read_text` reads at most ``limit + 1`` bytes, whatever the file is, so an input
over its limit is refused after reading ``limit + 1`` bytes, never loaded whole; a named pipe that no
writer opens is refused after a few seconds instead of blocking for ever (:func:`open_input`).
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
from typing import BinaryIO, Type

from flatcli.errors import FlatrobError

#: How long a named pipe given as an input may stay without a writer before it is refused.
PIPE_WAIT_S = 5


def size_text(limit: int) -> str:
    """``65536`` -> ``64 KiB``, ``67108864`` -> ``64 MiB``."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def open_input(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading without hanging on a named pipe nobody writes to: the pipe is opened
    non-blocking and given :data:`PIPE_WAIT_S` seconds for a writer to come (then reads block as usual);
    without one it is an ``OSError`` (ETIMEDOUT) naming the wait."""
    fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(PIPE_WAIT_S * 1000):
                raise OSError(errno.ETIMEDOUT, f"a named pipe nothing was written to in {PIPE_WAIT_S} s")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_text(source: str | os.PathLike, *, limit: int, what: str, error: Type[FlatrobError],
              missing_hint: str = "") -> str:
    """The UTF-8 text of the file ``source`` (``-``: stdin), at most ``limit`` bytes long.

    Every failure is ``error(...)`` naming ``what`` and ``source``: missing (plus ``missing_hint``), a
    directory, unreadable, longer than ``limit`` bytes, not UTF-8.
    """
    name = "stdin" if os.fspath(source) == "-" else os.fspath(source)
    try:
        if name == "stdin":
            stream = getattr(sys.stdin, "buffer", sys.stdin)
            blob = stream.read(limit + 1)
        else:
            with open_input(name) as handle:
                blob = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} {name} does not exist{missing_hint}") from None
    except IsADirectoryError:
        raise error(f"{what} {name} is a directory; pass a file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "surrogateescape")
    if len(blob) > limit:
        raise error(f"{what} {name} is larger than the {size_text(limit)} a {what} may have")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {name} is not UTF-8 text") from None
