"""The table of ``flatrob inspect``: the checkpoint, its linear layers, the effective and embedded spec."""

from __future__ import annotations

import yaml

from flatcli.cli import tables


def render(stream, summary: dict, samples) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if k not in ("linear_layers", "embedded_spec", "effective_spec")}
    con.print(tables.key_values("Checkpoint", scalars))
    con.print(tables.rows_table("Linear layers (head candidates)", summary["linear_layers"]))
    con.print("Effective spec:")
    con.print(yaml.safe_dump(summary["effective_spec"], sort_keys=False).rstrip(), markup=False, highlight=False)
    con.print(f"Embedded spec: {'yes' if summary['embedded_spec'] else 'none'}")
