"""The table of a command run on several checkpoints: one row per checkpoint, its summary measures or its error."""

from __future__ import annotations

from typing import TextIO

from rich.table import Table

from flatcli.cli.tables import console, fmt
from flatcli.runs.many import trend


def render(stream: TextIO, command: str, entries: list[dict]) -> None:
    """``entries`` are the ``summaries`` of the JSON document; columns: checkpoint, n, each measure of
    :func:`flatcli.runs.many.trend`, and the error of a checkpoint that failed."""
    rows, columns = [], ["checkpoint", "n"]
    for e in entries:
        row = {"checkpoint": e["checkpoint"]}
        if e["error"] is not None:
            row["error"] = e["error"]
        else:
            row["n"] = e["summary"].get("n")
            for values in trend(command, e["summary"]).values():
                row.update(values)
        columns += [c for c in row if c not in columns]
        rows.append(row)
    failed = sum(e["error"] is not None for e in entries)
    columns = [c for c in columns if c != "error"] + (["error"] if failed else [])
    title = f"{command}: {len(entries)} checkpoints" + (f", {failed} failed" if failed else "")
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("checkpoint", "error") else "right")
    for row in rows:
        table.add_row(*(fmt(row.get(c)) if c in row else "" for c in columns))
    console(stream).print(table)
