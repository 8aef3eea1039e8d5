"""``flatrob convert``: a PyTorch pickle to a safetensors checkpoint (torch.load(weights_only=True), nothing executed)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import Format, FormatOpt, Quiet, SpecFile


def render_table(stream, summary: dict, samples) -> None:
    render.console(stream).print(render.key_values("Converted", summary))


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
    from flatcli.convert import convert_pickle

    spec_text = None
    if spec is not None:
        from pathlib import Path

        from flatcli.spec import read_spec_file

        read_spec_file(spec)  # validated before anything is written
        spec_text = Path(spec).expanduser().read_text(encoding="utf-8")
    summary = convert_pickle(source, dest, key=key, spec_text=spec_text, force=force)
    with common.writer(format, None, command="convert", per_sample=False, render_table=render_table) as out:
        out.finish({"source": source, "dest": dest, "key": key, "spec": spec, "versions": common.versions()}, summary)
