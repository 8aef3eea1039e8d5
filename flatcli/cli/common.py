"""Plumbing every command shares: option checks before work, progress, notes, the result writer."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from flatcli.errors import UsageError
from flatcli.outputs.plan import check_outputs
from flatcli.outputs.writer import ResultWriter

__all__ = ["call", "check_outputs", "progress_bar", "note", "notes", "writer", "is_main", "models",
           "checkpoint_error", "finish", "exit_status", "summaries", "summary_rows"]


def call(command: str, checkpoint: list[str] | None, checkpoints, output, render_table, *groups, rows: bool = True,
         required: bool = True, before_finish=None, **keywords):
    """The one library call of a command: ``api.<command>`` on the checkpoint(s) with the option groups and
    keywords, its rows streamed to the writer (``rows``), a progress bar on stderr, then the document or
    table (``before_finish(out, result)`` may add rows first). Returns the result."""
    from flatcli import api
    from flatcli.options import DataOptions

    check_outputs(output=output.output)  # the command's other files: the library checks them before any work
    data = next((g.data for g in groups if isinstance(g, DataOptions)), None)
    function = getattr(api, command.replace("-", "_"))
    with writer(output, command=command, render_table=render_table) as out:
        with progress_bar(command, output.quiet) as progress:
            result = function(models(checkpoint, checkpoints.checkpoints_from, required=required), data, *groups,
                              checkpoints_from=checkpoints.checkpoints_from, fail_fast=checkpoints.fail_fast,
                              on_error=checkpoint_error, samples=False, on_rows=out.rows if rows else None,
                              progress=progress, **keywords)
        if before_finish is not None:
            before_finish(out, result)
        finish(out, result, output.quiet)
    return result


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


def writer(output, *, command: str, render_table) -> ResultWriter:
    """The result writer of the output options; under torchrun ranks other than 0 write nothing anywhere."""
    return ResultWriter(output.format, output.output, command=command, per_sample=output.per_sample,
                        render_table=render_table, enabled=is_main())


def models(checkpoint: list[str] | None, checkpoints_from: str | None, *, required: bool = True):
    """The API's ``model``: one checkpoint as it is (today's output), else the list (several checkpoints or
    ``--checkpoints-from``: one summary each); ``None`` when none is named and none is ``required``."""
    paths = list(checkpoint or [])
    if checkpoints_from is None and len(paths) <= 1:
        if not paths and required:
            raise UsageError("name a checkpoint (or several, or --checkpoints-from FILE), e.g. example:digits-cnn")
        return paths[0] if paths else None
    return paths


def checkpoint_error(checkpoint: str, message: str) -> None:
    """One failed checkpoint of several: its ``Error:`` line on stderr (rank 0), even with --quiet."""
    if is_main():
        print(f"Error: {checkpoint}: {' '.join(message.split())}", file=sys.stderr)


def finish(out: ResultWriter, result, quiet: bool) -> None:
    """Notes on stderr, then the document or table (one summary per checkpoint for several)."""
    from flatcli.runs.many import ManyResult

    notes(result, quiet)
    if isinstance(result, ManyResult):
        from flatcli.cli.tables.many import render

        out.render_table = lambda stream, entries, samples: render(stream, result.command, entries)
        out.finish(result.config, None, summaries=result.summaries)
    else:
        out.finish(result.config, result.summary)


def exit_status(result) -> None:
    """Exit 2 (after the outputs were written) when some of several checkpoints failed."""
    code = getattr(result, "exit_code", 0)
    if code:
        import typer

        raise typer.Exit(code)


def summaries(result) -> list[dict]:
    """The summaries of the result: one, or one per checkpoint that succeeded (this rank's, so maybe empty)."""
    from flatcli.runs.many import ManyResult

    if isinstance(result, ManyResult):
        return [r.summary for r in result.results if r is not None and r.summary]
    return [result.summary] if result.summary else []


def summary_rows(result, rows_of) -> list[dict]:
    """Rows made from a summary (``rows_of(summary)``), with a ``checkpoint`` column for several checkpoints."""
    from flatcli.runs.many import ManyResult

    if isinstance(result, ManyResult):
        return [{"checkpoint": run.checkpoint, **row} for run in result.runs
                if run.result is not None and run.result.summary for row in rows_of(run.result.summary)]
    return rows_of(result.summary) if result.summary else []
