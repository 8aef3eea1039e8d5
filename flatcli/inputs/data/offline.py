"""Reading data offline: a network connection or download attempted while a data source is opened is an error.

torchvision's data sets are built with ``download=False`` and Hugging Face ``datasets`` folders are
opened from local files, so nothing should reach the network; :func:`no_network` makes sure. It installs
(once per process) a Python audit hook (PEP 578) that, while a source is being opened, refuses the
events behind every connection (``urllib.Request``, ``socket.connect``, ``socket.getaddrinfo``,
``http.client.connect``) before it happens, with a :class:`~flatcli.errors.DataError` naming the source;
should a library swallow that exception, :func:`no_network` raises it when the block ends. Outside such a
block the hook does nothing but one test of a list. (Networks are built under the same kind of guard,
:mod:`flatcli.models.offline`, which also keeps torch.hub's cache out.)
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from flatcli.errors import DataError

NETWORK_EVENTS = frozenset({"urllib.Request", "socket.connect", "socket.getaddrinfo", "http.client.connect"})

_opening: list[tuple[str, list[str]]] = []  # (the source being opened, refusals so far), innermost last
_installed = False


def _hook(event: str, args: tuple) -> None:
    if not _opening or event not in NETWORK_EVENTS:
        return
    what, refused = _opening[-1]
    message = (f"reading {what} tried to open a network connection ({event}); flatrob never downloads data: "
               "put the files on disk and point --data at them")
    refused.append(message)
    raise DataError(message)


@contextlib.contextmanager
def no_network(what: str) -> Iterator[None]:
    """While the block opens the data source ``what``, network connections are refused."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    refused: list[str] = []
    _opening.append((what, refused))
    try:
        yield
    finally:
        _opening.pop()
    if refused:
        raise DataError(refused[0])
