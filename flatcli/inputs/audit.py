"""Refusing what a library does while flatrob opens something: one Python audit hook (PEP 578) for the process.

Builders and data-set classes reach the network (and torch.hub's cache) in ways no keyword check can see.
:func:`refusing` installs, once per process, an audit hook that, while its block runs, hands every audit event
to the block's ``check(event, args)``; a check that returns a message refuses the event before it happens, by
raising ``error(message)`` inside the library's call. Should the library swallow that exception,
:func:`refusing` raises it when the block ends. Outside a block the hook does nothing but one test of a list.
Used by :func:`flatcli.inputs.data.offline.no_network` (data sources) and :func:`flatcli.models.offline.offline`
(network builds, which also keep torch.hub's cache out).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

#: The audit events behind every network connection, whatever library opens it.
NETWORK_EVENTS = frozenset({"urllib.Request", "socket.connect", "socket.getaddrinfo", "http.client.connect"})

Check = Callable[[str, tuple], "str | None"]

_blocks: list[tuple[Check, type, list[str]]] = []  # (check, error type, refusals so far), innermost last
_installed = False


def _hook(event: str, args: tuple) -> None:
    if not _blocks:
        return
    check, error, refused = _blocks[-1]
    message = check(event, args)
    if message is not None:
        refused.append(message)
        raise error(message)


@contextlib.contextmanager
def refusing(check: Check, error: type) -> Iterator[None]:
    """While the block runs, every audit event for which ``check`` returns a message raises ``error(message)``."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    refused: list[str] = []
    _blocks.append((check, error, refused))
    try:
        yield
    finally:
        _blocks.pop()
    if refused:
        raise error(refused[0])
