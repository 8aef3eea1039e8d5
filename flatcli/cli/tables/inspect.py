"""The table of ``flatrob inspect``: the checkpoint, its linear layers, the effective and embedded spec (and for
an unknown architecture its tensors and the candidates; for a language model, its head)."""

from __future__ import annotations

import yaml

from flatcli.cli import tables

#: Entries shown as tables of their own, not as key-value rows.
LISTS = ("linear_layers", "tensor_shapes", "arch_candidates", "preprocessing_sources")


def render(stream, summary: dict, samples) -> None:
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if k not in (*LISTS, "embedded_spec", "effective_spec")}
    con.print(tables.key_values("Checkpoint", scalars))
    for key in LISTS:
        value = summary.get(key)
        if isinstance(value, dict):
            value = [{"name": k, "value": v} for k, v in value.items()]
        if value:
            con.print(tables.rows_table(key.replace("_", " ").capitalize(), value))
    if summary.get("effective_spec") is not None:
        con.print("Effective spec:")
        con.print(yaml.safe_dump(summary["effective_spec"], sort_keys=False).rstrip(), markup=False, highlight=False)
    if "embedded_spec" in summary:
        con.print(f"Embedded spec: {'yes' if summary['embedded_spec'] else 'none'}")
