"""``flatrob inspect``: what a checkpoint holds."""

from __future__ import annotations

import yaml

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import Arch, Checkpoint, Format, FormatOpt, Layer, Output, SpecFile


def render_table(stream, summary: dict, samples) -> None:
    con = render.console(stream)
    scalars = {k: v for k, v in summary.items() if k not in ("linear_layers", "embedded_spec", "effective_spec")}
    con.print(render.key_values("Checkpoint", scalars))
    con.print(render.rows_table("Linear layers (head candidates)", summary["linear_layers"]))
    con.print("Effective spec:")
    con.print(yaml.safe_dump(summary["effective_spec"], sort_keys=False).rstrip(), markup=False, highlight=False)
    con.print(f"Embedded spec: {'yes' if summary['embedded_spec'] else 'none'}")


@app.command()
def inspect(
    checkpoint: Checkpoint,
    spec: SpecFile = None,
    arch: Arch = None,
    layer: Layer = None,
    format: FormatOpt = Format.table,
    output: Output = None,
) -> None:
    """Show a checkpoint's architecture, parameter count, linear layers and spec."""
    from flatcli.inspection import describe_checkpoint

    loaded, _ = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device="cpu")
    summary = describe_checkpoint(loaded)
    with common.writer(format, output, command="inspect", per_sample=False, render_table=render_table) as out:
        out.rows(summary["linear_layers"])
        out.finish({"checkpoint": checkpoint, "spec": spec, "arch": arch, "layer": layer, "versions": common.versions()}, summary)
