"""The table of a command run on several checkpoints: one row per checkpoint (per checkpoint and scale for
``sweep-scale``), its summary measures or its error."""

from __future__ import annotations

from typing import TextIO

from rich.table import Table

from flatcli.cli.tables import console, fmt
from flatcli.runs.many import short_names, trend

#: Columns of words, not numbers: left-aligned, folded onto more lines rather than cut.
TEXT_COLUMNS = ("checkpoint", "error")
#: ``sweep-scale``'s columns per scale: column -> key of a ``summary.scales`` record.
SCALE_COLUMNS = {"scale": "scale", "clean accuracy": "clean_accuracy", "robust accuracy": "robust_accuracy",
                 "sharpness median": "sharpness_median", "masking": "masking"}


def render(stream: TextIO, command: str, entries: list[dict]) -> None:
    """``entries`` are the ``summaries`` of the JSON document; columns: checkpoint (its
    :func:`~flatcli.runs.many.short_names` name), n, each measure of :func:`flatcli.runs.many.trend`, and the
    error of a checkpoint that failed. ``sweep-scale`` has a row per scale instead (:data:`SCALE_COLUMNS`, with
    the gradient-masking verdict of each scale: ``-`` when the per-scale attack was skipped)."""
    groups, columns = [], ["checkpoint", "n"]
    names = short_names([e["checkpoint"] for e in entries])
    for e, name in zip(entries, names):
        rows = _rows(command, e, name)
        for row in rows:
            columns += [c for c in row if c not in columns]
        groups.append(rows)
    failed = sum(e["error"] is not None for e in entries)
    columns = [c for c in columns if c != "error"] + (["error"] if failed else [])
    title = f"{command}: {len(entries)} checkpoints" + (f", {failed} failed" if failed else "")
    shortened = names != [e["checkpoint"] for e in entries]
    table = Table(title=title, title_justify="left", caption_justify="left",
                  caption="checkpoints named by what tells them apart; --format json has the paths" if shortened
                  else None)
    for c in columns:
        text = c in TEXT_COLUMNS
        table.add_column(c, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    sections = any(len(rows) > 1 for rows in groups)  # a line between checkpoints of several rows each
    for rows in groups:
        for i, row in enumerate(rows):
            table.add_row(*(fmt(row.get(c)) if c in row else "" for c in columns),
                          end_section=sections and i == len(rows) - 1)
    console(stream).print(table)


def _rows(command: str, entry: dict, name: str) -> list[dict]:
    """One checkpoint's rows: its error, its measures, or (``sweep-scale``) one row per scale, the checkpoint and
    ``n`` on the first."""
    if entry["error"] is not None:
        return [{"checkpoint": name, "error": entry["error"]}]
    summary = entry["summary"]
    first = {"checkpoint": name, "n": summary.get("n")}
    if command == "sweep-scale":
        scales = sorted(summary.get("scales") or [], key=lambda s: s["scale"])
        return [{**(first if i == 0 else {}), **{c: s.get(key) for c, key in SCALE_COLUMNS.items()}}
                for i, s in enumerate(scales)] or [first]
    for values in trend(command, summary).values():
        first.update(values)
    return [first]
