"""The tables of ``flatrob bound``: radii (numbers mode), and measured values, L, assumptions, radii, check."""

from __future__ import annotations

from flatcli.cli import tables

_SHORT = {
    "kappa": "kappa", "lipschitz": "L", "r": "r", "classes": "k", "features": "m", "grad": "g",
    "epsilon": "epsilon", "delta": "delta", "saturation": "limit",
    "first_order": "1st", "second_order": "2nd", "third_order": "3rd",
}
_CAPTION = (
    "delta: certified radius; limit: delta as kappa -> 0 (g = 0); 1st, 2nd, 3rd: g D, (kappa/2) D^2, "
    "(k m L^3/24) D^3 at D = L delta / r (they sum to epsilon)"
)


def _radius_table(title: str, rows: list[dict]):
    table = tables.Table(title=title, title_justify="left", caption=_CAPTION, caption_justify="left")
    for k in _SHORT:
        table.add_column(_SHORT[k], justify="right")
    for row in rows:
        table.add_row(*(tables.fmt(row.get(k)) for k in _SHORT))
    return table


def _console(stream):
    """Like :func:`tables.console`, wide enough for the twelve columns of a radius table."""
    return tables.Console(file=stream, soft_wrap=False, width=max(tables.Console(file=stream).width, 140))


def render_numbers(stream, summary: dict, samples) -> None:
    con = _console(stream)
    con.print(_radius_table("Certified radius (Prop. 8/9)", summary["radii"]))


def render_checkpoint(stream, summary: dict, samples) -> None:
    con = _console(stream)
    lip = summary["lipschitz"]
    con.print(tables.key_values("Measured (data set)", {
        "samples": summary["n"], "accuracy": summary["accuracy"], "classes k": summary["classes"],
        "features m": summary["features"], "||W||_F": summary["weight_norm"],
        "kappa (mean, squared)": summary["kappa"], "r = min ||phi(x)||": summary["r"],
        "g = ||W|| ||mean grad||": summary["grad"],
    }))
    con.print(tables.key_values("Lipschitz constant of phi", {
        "used": lip["used"], "kind": lip["kind"] + ("" if lip["certificate"] else " (not a certificate)"),
        "upper (sound)": lip.get("upper"), "local (estimate)": lip.get("local"),
        "upper / local": lip.get("upper_over_local"),
    }))
    a = summary["assumptions"]
    table = tables.Table(title="Assumptions of the theorem, as measured", title_justify="left")
    for c in ("assumption", "measured", "holds"):
        table.add_column(c)
    table.add_row(a["input_norm"]["assumed"], f"max ||x|| = {tables.fmt(a['input_norm']['max'])}", tables.fmt(a["input_norm"]["holds"]))
    m = a["minimum"]
    table.add_row(
        m["assumed"],
        f"||grad|| mean {tables.fmt(m['grad_norm_mean'])}, max {tables.fmt(m['grad_norm_max'])}; "
        f"||mean grad|| {tables.fmt(m['mean_grad_norm'])}",
        f"first-order term {m['first_order_term']}",
    )
    table.add_row(a["feature_norm"]["assumed"], f"min ||phi|| = {tables.fmt(a['feature_norm']['min'])}", tables.fmt(a["feature_norm"]["holds"]))
    table.add_row(a["lipschitz"]["assumed"], f"L = {tables.fmt(a['lipschitz']['value'])} ({a['lipschitz']['kind']})", tables.fmt(a["lipschitz"]["certificate"]))
    con.print(table)
    con.print(_radius_table("Data-set radius (Prop. 9)", summary["radii"]))
    per = [{"epsilon": r["epsilon"], **{k: r["per_sample_delta"].get(k) for k in tables.STAT_COLUMNS}} for r in summary["radii"]]
    con.print(tables.rows_table("Per-sample radii delta_i (Prop. 8, each sample's own kappa, ||phi||, g)", per))
    con.print(tables.stats_table("Per-sample measures", summary["per_sample"]))
    if "check" in summary:
        rows = [{k: p[k] for k in ("epsilon", "max_loss_increase", "max_increase_over_epsilon", "violations")} for p in summary["check"]["per_epsilon"]]
        con.print(tables.rows_table(f"Check: PGD-l2 ({summary['check']['steps']} steps) inside each certified radius", rows))
    if samples:
        con.print(tables.rows_table("Samples", samples))
