"""Plumbing every command shares: option checks before work, progress, notes, the result writer."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from flatcli.errors import UsageError
from flatcli.outputs.plan import check_outputs
from flatcli.outputs.writer import ResultWriter

__all__ = ["check_common", "check_outputs", "progress_bar", "note", "notes", "writer", "is_main"]


def check_common(*, limit: int | None = None, batch_size: int | None = None, output: str | None = None) -> None:
    """Reject out-of-range shared options (and an output path that cannot be written) before any work."""
    check_outputs(output=output)
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def is_main() -> bool:
    """Whether this process writes (rank 0 under torchrun; always in one process)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator:
    """``progress(done, total)`` drawing a rich bar on stderr when it is a terminal (and not --quiet)."""
    if quiet or not sys.stderr.isatty() or not is_main():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def note(message: str, quiet: bool) -> None:
    """A line for people on stderr (never stdout)."""
    if not quiet:
        print(message, file=sys.stderr)


def notes(result, quiet: bool) -> None:
    """The result's notes, one line each, on stderr."""
    for line in result.notes:
        note(line, quiet)


def writer(fmt, output: str | None, *, command: str, per_sample: bool, render_table) -> ResultWriter:
    """The result writer; under torchrun ranks other than 0 write nothing anywhere."""
    return ResultWriter(
        fmt.value, output, command=command, per_sample=per_sample, render_table=render_table, enabled=is_main()
    )
