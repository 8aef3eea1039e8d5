"""``flatrob inspect``: what a checkpoint holds."""

from __future__ import annotations

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Arch, Checkpoint, Format, FormatOpt, Layer, Output, SpecFile, TrustEmbeddedCode
from flatcli.cli.tables.inspect import render


@app.command()
def inspect(
    checkpoint: Checkpoint,
    spec: SpecFile = None,
    arch: Arch = None,
    trust_embedded_code: TrustEmbeddedCode = False,
    layer: Layer = None,
    format: FormatOpt = Format.table,
    output: Output = None,
) -> None:
    """Show a checkpoint's architecture, parameter count, linear layers and spec."""
    common.check_outputs(output=output)
    from flatcli import api

    result = api.inspect(checkpoint, spec=spec, arch=arch, layer=layer, trust_embedded_code=trust_embedded_code)
    with common.writer(format, output, command="inspect", per_sample=False, render_table=render) as out:
        out.rows(result.samples)
        out.finish(result.config, result.summary)
