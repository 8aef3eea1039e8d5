"""The tables of ``flatrob detect``: the cross-validated fit, or a saved detector applied."""

from __future__ import annotations

from flatcli.cli import tables


def render_fit(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(tables.key_values("Adversarial-input detector (cross-validated)", scalars))
    con.print(tables.stats_table("Thresholded value of the inputs used",
                                 {"clean": summary["score_clean"], "adversarial": summary["score_adversarial"]}))
    if "components" in summary:
        comp = summary["components"]
        con.print(tables.key_values("Components detector (standardised log features)",
                                    {**{f"coef {k}": v for k, v in comp["coef"].items()}, "intercept": comp["intercept"]}))
    if "baseline" in summary:
        con.print(tables.key_values("Baseline: stump on relative sharpness, same folds", summary["baseline"]))
    if samples:
        con.print(tables.rows_table("Inputs", samples))


def render_apply(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(tables.key_values("Saved detector applied", scalars))
    con.print(tables.stats_table("Thresholded value", {"score": summary["score_stats"]}))
    if samples:
        con.print(tables.rows_table("Inputs", samples))
