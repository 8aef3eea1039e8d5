"""The table of ``flatrob sharpness``: the summary, per-measure statistics, earlier layers, Hutchinson traces."""

from __future__ import annotations

from flatcli.cli import tables


def render(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars, stats = tables.split_summary(summary)
    con.print(tables.key_values("Relative sharpness of the head (closed form)", scalars))
    con.print(tables.stats_table("Per-sample measures", stats))
    if summary.get("layers"):
        columns = ["layer", "method", "curvature", "trace", "trace_stderr", "relative_sharpness", "reason"]
        con.print(tables.rows_table("Earlier layers", summary["layers"], columns))
    if summary.get("hutchinson"):
        con.print(tables.rows_table("Hutchinson traces", summary["hutchinson"]))
    if samples:
        con.print(tables.rows_table("Samples", samples))
