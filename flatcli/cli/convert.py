"""``flatrob convert``: a PyTorch pickle to a safetensors checkpoint (torch.load(weights_only=True), nothing executed)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common, tables
from flatcli.cli.app import app
from flatcli.cli.options import Format, FormatOpt, Quiet, SpecFile


def render_table(stream, summary: dict, samples) -> None:
    tables.console(stream).print(tables.key_values("Converted", summary))


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="PyTorch file (.pt/.pth) holding a state dict.", show_default=False)],
    dest: Annotated[str, typer.Argument(help="The safetensors file to write.", show_default=False)],
    key: Annotated[
        Optional[str], typer.Option("--key", help="Entry holding the state dict (default: the file itself, else state_dict, model_state_dict, model, ...).")
    ] = None,
    spec: SpecFile = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
    format: FormatOpt = Format.table,
    quiet: Quiet = False,
) -> None:
    """Convert a .pt/.pth state dict to safetensors with torch.load(weights_only=True): nothing in it is executed.

    --spec embeds a layer spec in the metadata, so later commands need nothing else.
    """
    from flatcli import api

    result = api.convert(source, dest, key=key, spec=spec, force=force)
    with common.writer(format, None, command="convert", per_sample=False, render_table=render_table) as out:
        out.finish(result.config, result.summary)
