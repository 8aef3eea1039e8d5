"""Rich tables for people (the ``table`` format): shared helpers; one module per command beside this one."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.table import Table

STAT_COLUMNS = ("mean", "std", "median", "min", "max")


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def console(stream: TextIO) -> Console:
    return Console(file=stream, soft_wrap=False, width=max(Console(file=stream).width, 100))


def key_values(title: str, items: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in items.items():
        table.add_row(k, fmt(v))
    return table


def stats_table(title: str, stats: dict[str, dict]) -> Table:
    """One row per measure, columns mean/std/median/min/max."""
    table = Table(title=title, title_justify="left")
    table.add_column("measure", style="bold")
    for c in STAT_COLUMNS:
        table.add_column(c, justify="right")
    for name, s in stats.items():
        table.add_row(name, *(fmt(s.get(c)) for c in STAT_COLUMNS))
    return table


def rows_table(title: str, rows: list[dict], columns: list[str] | None = None) -> Table:
    columns = columns or list(rows[0]) if rows else []
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    return table


def split_summary(summary: dict) -> tuple[dict, dict]:
    """Scalars vs per-measure statistics (dicts with a ``mean``)."""
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    stats = {k: v for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
    return scalars, stats
