"""The tables of ``flatrob detect`` on a language model's prompts: the curvature detector and the perplexity filter side by side."""

from __future__ import annotations

from rich.table import Table

from flatcli.cli import tables

#: The columns of the side-by-side comparison: key -> heading.
COLUMNS = {"accuracy_mean": "accuracy", "accuracy_std": "std", "auc": "AUC", "tpr_at_5fpr": "TPR@5%FPR",
           "threshold": "threshold", "direction": "direction"}


def render_suffixes(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(tables.key_values("Detecting GCG suffixes (cross-validated)", scalars))
    con.print(side_by_side(summary))
    con.print(tables.key_values("AUROC of each raw feature (higher = adversarial), before any fit", summary["auroc"]))
    if samples:
        con.print(tables.rows_table("Prompts", samples, [c for c in samples[0] if c != "input_ids"]))


def side_by_side(summary: dict) -> Table:
    """The stump on the curvature score and the perplexity filter, on the same folds."""
    table = Table(title=f"Detectors on the same {summary['folds']} folds", title_justify="left")
    table.add_column("detector", style="bold", no_wrap=True)
    for heading in COLUMNS.values():
        table.add_column(heading, justify="right")
    base = summary["baseline"]
    for name, fit in ((f"{summary['score']} ({summary['method']})", summary),
                      (f"{base['score']} (perplexity filter)", base)):
        table.add_row(name, *(tables.fmt(fit[c]) for c in COLUMNS))
    return table
