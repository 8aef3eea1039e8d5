"""Building a network offline: any download, network connection or torch.hub cache access while it is built is an error.

Builders reach the network or the hub cache in ways no keyword check can see (a default
``weights_backbone``, a class that fetches files in ``__init__``, ``torch.hub.load``), and torch.hub
unpickles a cached file with ``weights_only=False``: a file planted under the cache name would run
code. :func:`offline` installs (once per process) a Python audit hook (PEP 578) that, while a network
is being built, refuses the events behind every such access before it happens:

* ``urllib.Request``, ``socket.connect``, ``socket.getaddrinfo``, ``http.client.connect``: reaching
  the network (whatever library called them);
* ``open``, ``os.mkdir``, ``os.listdir``, ``os.scandir``, ``os.rename`` and ``os.remove`` on a path
  inside torch.hub's directory (``torch.hub.get_dir()``: ``$TORCH_HOME/hub``): reading the cache,
  planting a download there.

The refused operation raises :class:`~flatcli.errors.SpecError` naming what was being built and what
it tried (the hook and its guarantees: :mod:`flatcli.inputs.audit`).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from flatcli.errors import SpecError
from flatcli.inputs.audit import NETWORK_EVENTS, refusing

PATH_EVENTS = frozenset({"open", "os.mkdir", "os.listdir", "os.scandir", "os.rename", "os.remove"})


def _path(arg) -> str | None:
    if isinstance(arg, (str, bytes, os.PathLike)):
        try:
            return os.path.realpath(os.fsdecode(arg))
        except (TypeError, ValueError):
            return None
    return None


def _hub_dir() -> str:
    import torch.hub

    return os.path.realpath(torch.hub.get_dir())


def offline(what: str) -> AbstractContextManager[None]:
    """While the block builds ``what``, downloads, connections and torch.hub cache access are refused."""
    hub = _hub_dir()

    def check(event: str, args: tuple) -> str | None:
        if event in NETWORK_EVENTS:
            detail = "a network connection"
        elif event in PATH_EVENTS and args:
            path = _path(args[0])
            if path is None or not (path == hub or path.startswith(hub + os.sep)):
                return None
            detail = f"torch.hub's cache ({path})"
        else:
            return None
        return (f"building {what} tried to reach {detail}; flatrob never downloads and never reads torch.hub's "
                "cache (the checkpoint supplies the weights): use a classification builder without weights")

    return refusing(check, SpecError)
