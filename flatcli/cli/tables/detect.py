"""The tables of ``flatrob detect``: the cross-validated fit (every method with ``--method all``), or a saved detector applied."""

from __future__ import annotations

from rich.table import Table

from flatcli.cli import tables

#: The columns of the comparison of methods (``--method all``) and of its adaptive part: key -> heading.
METHOD_COLUMNS = {"accuracy_mean": "accuracy", "accuracy_std": "std", "auc": "AUC", "tpr_at_5fpr": "TPR@5%FPR",
                  "evaded": "evaded"}
ADAPTIVE_COLUMNS = {"accuracy_mean": "accuracy", "auc": "AUC", "tpr_at_5fpr": "TPR@5%FPR", "detected": "detected",
                    "prediction_changed": "fooled", "evaded": "evaded", "evaded_standard": "evaded (standard)"}


def render_fit(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(tables.key_values("Adversarial-input detector (cross-validated)", scalars))
    con.print(tables.stats_table("Thresholded value of the inputs used",
                                 {"clean": summary["score_clean"], "adversarial": summary["score_adversarial"]}))
    if "methods" in summary:
        con.print(methods_table(summary["methods"], summary["best"]))
        if all("adaptive" in m for m in summary["methods"].values()):
            con.print(methods_table(summary["methods"], summary["best"], adaptive=True))
    if "components" in summary:
        comp = summary["components"]
        con.print(tables.key_values("Components detector (standardised log features)",
                                    {**{f"coef {k}": v for k, v in comp["coef"].items()}, "intercept": comp["intercept"]}))
    if "logistic" in summary:
        fit = summary["logistic"]
        con.print(tables.key_values(f"{summary['method'].capitalize()} detector (standardised log features)",
                                    {**{f"coef {k}": v for k, v in fit["coef"].items()}, "intercept": fit["intercept"]}))
    if "probe" in summary:
        con.print(tables.key_values("Probes of the curvature profile", summary["probe"]))
    if "mahalanobis" in summary:
        con.print(tables.key_values("Mahalanobis model (clean --fit-data)", summary["mahalanobis"]))
    if "baseline" in summary:
        con.print(tables.key_values("Baseline: stump on relative sharpness, same folds", summary["baseline"]))
    if "adaptive" in summary:
        con.print(tables.key_values(f"Adaptive attack on the {summary['method']} detector", summary["adaptive"]))
    if samples:
        con.print(tables.rows_table("Inputs", samples))


def methods_table(methods: dict[str, dict], best: str, adaptive: bool = False) -> Table:
    """One row per method: its CV summary (or, with ``adaptive``, its adaptive check); the best one marked."""
    if adaptive:
        title, columns = "Adaptive attack on each method's fold detectors", ADAPTIVE_COLUMNS
    else:
        title, columns = f"Methods on the same folds (* best: {best})", METHOD_COLUMNS
    table = Table(title=title, title_justify="left", caption="evaded: fooled the model and not flagged",
                  caption_justify="left")
    table.add_column("method", style="bold", no_wrap=True)
    for heading in columns.values():
        table.add_column(heading, justify="right")
    for name, m in methods.items():
        values = m["adaptive"] if adaptive else m
        table.add_row(f"{name} *" if name == best else name, *(f"{values[c]:.3f}" for c in columns))
    return table


def render_apply(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(tables.key_values("Saved detector applied", scalars))
    con.print(tables.stats_table("Thresholded value", {"score": summary["score_stats"]}))
    if samples:
        con.print(tables.rows_table("Inputs", samples))
