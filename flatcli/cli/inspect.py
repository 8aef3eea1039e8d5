"""``flatrob inspect``: what a checkpoint holds."""

from __future__ import annotations

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Arch, Checkpoint, Format, FormatOpt, Layer, Output, SpecFile
from flatcli.cli.tables.inspect import render


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
    from flatcli import api

    result = api.inspect(checkpoint, spec=spec, arch=arch, layer=layer)
    with common.writer(format, output, command="inspect", per_sample=False, render_table=render) as out:
        out.rows(result.samples)
        out.finish(result.config, result.summary)
