"""The tables of ``flatrob sweep-scale``: per scale the loss geometry, then the attacks and the masking verdict."""

from __future__ import annotations

from flatcli.cli import tables

GEOMETRY_COLUMNS = {
    "scale": "s",
    "clean_accuracy": "clean",
    "sharpness_mean": "sharpness mean",
    "sharpness_median": "sharpness median",
    "loss_increase_mean": "loss+ mean",
    "loss_increase_median": "loss+ median",
    "basin_width_median": "width median",
    "censored": "censored",
}
ATTACK_COLUMNS = {
    "scale": "s",
    "robust_accuracy": "robust",
    "transfer_accuracy": "transfer",
    "robust_accuracy_cw": "robust cw",
    "robust_accuracy_square": "robust square",
    "zero_grad_fraction": "zero grad",
    "masking": "masking",
}
GEOMETRY_CAPTION = (
    "clean: accuracy; sharpness: relative sharpness at the clean inputs (the mean is ruled by a few near-tie "
    "samples); loss+: l(x_T) - l(x_clean) on the fixed trajectories; width: basin width (censored: the loss never rises)"
)
ATTACK_CAPTION = (
    "robust: accuracy under the attack at s; transfer: at s on the adversarials crafted at s=1; robust cw / square: "
    "under PGD on the margin loss / Square (--square); zero grad: share of first-step input gradients that vanish; "
    "masking: a sign of gradient masking (reasons below)"
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


def _table(title: str, caption: str, columns: dict, records: list[dict], n: int):
    from rich.table import Table

    cells = [[_cell(k, rec, n) for k in columns] for rec in records]
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, label in enumerate(columns.values()):
        width = max([len(row[i]) for row in cells] + [max(len(w) for w in label.split())])
        table.add_column(label, justify="right", min_width=width)  # numbers stay whole; headers wrap
    for row in cells:
        table.add_row(*row)
    return table


def render(stream, summary: dict, samples: list[dict] | None) -> None:
    con = tables.console(stream)
    n, records = summary["n"], summary["scales"]
    con.print(_table(f"Scaling the head by s (n = {n})", GEOMETRY_CAPTION, GEOMETRY_COLUMNS, records, n))
    attack = {k: label for k, label in ATTACK_COLUMNS.items()
              if k != "robust_accuracy_square" or any(r[k] is not None for r in records)}
    con.print(_table("Per-scale attack: robust or masked?", ATTACK_CAPTION, attack, records, n))
    for rec in records:
        if rec["masking"]:
            con.print(f"s = {rec['scale']:g}: masking: {rec['masking_reason']}")
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(tables.key_values("Sweep", scalars))
    if samples:
        con.print(tables.rows_table("Samples", samples))
