"""Reading data offline: a network connection or download attempted while a data source is opened is an error.

torchvision's data sets are built with ``download=False`` and Hugging Face ``datasets`` folders are
opened from local files, so nothing should reach the network; :func:`no_network` makes sure: while a
source is being opened, the events behind every connection (``urllib.Request``, ``socket.connect``,
``socket.getaddrinfo``, ``http.client.connect``) are refused before they happen, with a
:class:`~flatcli.errors.DataError` naming the source (:mod:`flatcli.inputs.audit`). (Networks are built
under the same kind of guard, :mod:`flatcli.models.offline`, which also keeps torch.hub's cache out.)
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from flatcli.errors import DataError
from flatcli.inputs.audit import NETWORK_EVENTS, refusing


def no_network(what: str) -> AbstractContextManager[None]:
    """While the block opens the data source ``what``, network connections are refused."""

    def check(event: str, args: tuple) -> str | None:
        if event not in NETWORK_EVENTS:
            return None
        return (f"reading {what} tried to open a network connection ({event}); flatrob never downloads data: "
                "put the files on disk and point --data at them")

    return refusing(check, DataError)
