"""Ctrl-C (SIGINT) and SIGTERM stop a run at the next batch boundary, never in the middle of a batch.

:func:`handling` (installed once per CLI run by ``FlatrobGroup.main``) replaces the handlers of both
signals. Outside a batch loop a signal raises :class:`~flatcli.errors.Interrupted` at once (as
Ctrl-C always did). Inside one (:func:`deferring`, entered by :meth:`flatcli.runtime.distributed.Dist.rounds`
for every data-parallel loop) it only sets a flag; :func:`check`, called at every batch boundary,
raises ``Interrupted`` there, so finished batches are complete (and saved, with ``--resume``). A
second signal while one is pending (and more than :data:`SAME_INTERRUPT_S` later: a Ctrl-C delivered
twice is one) stops at once. Atomic output paths (:mod:`flatcli.outputs.files`) make sure
no partial output file is left either way; the CLI exits with ``128 + signum`` (130, 143) and one
line saying how to resume (:func:`set_hint`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator

from flatcli.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}

#: A second signal sooner than this after the first is the same interruption, not a request to stop at once.
SAME_INTERRUPT_S = 0.5

_state = {"pending": None, "depth": 0, "hint": None, "since": 0.0}


def pending() -> int | None:
    """The signal number waiting to be acted on at the next batch boundary, if any."""
    return _state["pending"]


def set_hint(hint: str | None) -> None:
    """What the one-line message says about resuming (e.g. ``rerun with --resume DIR``)."""
    _state["hint"] = hint


def message(signum: int) -> str:
    hint = _state["hint"] or "no output file was written; run the command again to start over"
    return f"interrupted by {NAMES.get(signum, f'signal {signum}')} at a batch boundary; {hint}"


def _handler(signum, frame) -> None:
    now = time.monotonic()
    if _state["pending"] is not None and now - _state["since"] < SAME_INTERRUPT_S:
        return  # one Ctrl-C delivered twice (terminal to the process group, then torchrun forwarding it)
    if _state["depth"] > 0 and _state["pending"] is None:
        _state.update(pending=signum, since=now)  # acted on by check() at the next batch boundary
        return
    _state.update(pending=signum, since=now)
    raise Interrupted(signum, message(signum))


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handlers for the duration of one command (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(pending=None, depth=0, hint=None)
    try:
        for s in SIGNALS:
            signal.signal(s, _handler)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(pending=None, depth=0, hint=None)


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Inside: a signal waits for :func:`check` instead of interrupting the batch being computed."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] = max(0, _state["depth"] - 1)


def check() -> None:
    """At a batch boundary: raise :class:`Interrupted` if a signal arrived since the last check."""
    signum = _state["pending"]
    if signum is not None:
        raise Interrupted(signum, message(signum))  # pending stays set: a further signal stops at once


def stop(signum: int) -> None:
    """Act on a signal another process (a torchrun rank) received: stop here as if it came to us."""
    _state["pending"] = signum
    check()
