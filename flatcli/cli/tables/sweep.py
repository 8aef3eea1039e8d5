"""The table of ``flatrob sweep-scale``: one row per scale, then the sweep's scalars."""

from __future__ import annotations

from flatcli.cli import tables

ROW_COLUMNS = {
    "scale": "s",
    "clean_accuracy": "clean",
    "sharpness_mean": "sharpness mean",
    "sharpness_median": "sharpness median",
    "loss_increase_mean": "loss+ mean",
    "loss_increase_median": "loss+ median",
    "basin_width_median": "width median",
    "censored": "censored",
    "robust_accuracy": "robust",
    "transfer_accuracy": "transfer",
    "robust_accuracy_cw": "robust cw",
    "robust_accuracy_square": "robust square",
    "zero_grad_fraction": "zero grad",
    "masking": "masking",
}
CAPTION = (
    "clean: accuracy; sharpness: relative sharpness at the clean inputs (the mean is ruled by a few near-tie "
    "samples); loss+: l(x_T) - l(x_clean) on the fixed trajectories; width: basin width (censored: the loss never "
    "rises); robust: accuracy under the attack at s; transfer: accuracy at s on the adversarials crafted at s=1; "
    "robust cw / square: under PGD on the margin loss / Square (--square); zero grad: share of first-step input "
    "gradients that vanish; masking: a sign of gradient masking (reasons below)"
)


def _cell(key: str, rec: dict, n: int) -> str:
    value = rec[key]
    if key == "censored":
        return f"{value}/{n}"
    if key == "basin_width_median" and value is None and rec["censored"]:
        return "censored"
    if key == "masking" and value is not None:
        return "masking" if value else "no"
    if isinstance(value, float) and key != "scale":
        return f"{value:.4g}"
    return tables.fmt(value)


def render(stream, summary: dict, samples: list[dict] | None) -> None:
    from rich.table import Table

    con = tables.console(stream)
    n = summary["n"]
    columns = {k: label for k, label in ROW_COLUMNS.items()
               if k != "robust_accuracy_square" or any(r.get(k) is not None for r in summary["scales"])}
    cells = [[_cell(k, rec, n) for k in columns] for rec in summary["scales"]]
    table = Table(title=f"Scaling the head by s (n = {n})", title_justify="left", caption=CAPTION, caption_justify="left")
    for i, label in enumerate(columns.values()):
        width = max([len(row[i]) for row in cells] + [max(len(w) for w in label.split())])
        table.add_column(label, justify="right", min_width=width)  # numbers stay whole; headers wrap
    for row in cells:
        table.add_row(*row)
    con.print(table)
    for rec in summary["scales"]:
        if rec.get("masking"):
            con.print(f"s = {rec['scale']:g}: masking: {rec['masking_reason']}")
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(tables.key_values("Sweep", scalars))
    if samples:
        con.print(tables.rows_table("Samples", samples))
