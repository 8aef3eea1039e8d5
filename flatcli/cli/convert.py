"""``flatrob convert``: a PyTorch pickle to a safetensors checkpoint (torch.load(weights_only=True), nothing executed)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from flatcli.cli import common, tables
from flatcli.cli.app import app
from flatcli.cli.params import expand
from flatcli.errors import UsageError
from flatcli.options import OutputOptions


class Weights(str, Enum):
    model = "model"
    ema = "ema"


def render_table(stream, summary: dict, samples) -> None:
    tables.console(stream).print(tables.key_values("Converted", summary))


@app.command()
@expand
def convert(
    source: Annotated[str, typer.Argument(help="PyTorch file (.pt/.pth/.ckpt) holding a state dict.", show_default=False)],
    dest: Annotated[str, typer.Argument(help="The safetensors file to write.", show_default=False)],
    key: Annotated[
        Optional[str], typer.Option("--key", help="Entry holding the state dict (default: the file itself, else state_dict, model_state_dict, model, ...).")
    ] = None,
    weights: Annotated[
        Weights, typer.Option("--weights", help="Which weights of a training checkpoint: the model's (state_dict, model, last, ...) or the EMA's (state_dict_ema, model_ema, ema, ...).")
    ] = Weights.model,
    strip_prefix: Annotated[
        Optional[str], typer.Option("--strip-prefix", help="Keep only the keys under this prefix, without it (a LightningModule's net.); default: module., _orig_mod. and model. wrappers are removed.")
    ] = None,
    spec: Annotated[Optional[str], typer.Option("--spec", help="Layer spec (YAML) to embed in the metadata.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
    output: OutputOptions = None,
) -> None:
    """Convert a .pt/.pth state dict to safetensors with torch.load(weights_only=True): nothing in it is executed.

    Training checkpoints (Lightning, timm, RobustBench, torch.compile, AveragedModel) are unwrapped; the summary
    says which entry was taken and which prefixes and keys were removed. --spec embeds a layer spec in the
    metadata, so later commands need nothing else.
    """
    from flatcli import api

    if key is not None and weights is not Weights.model:
        raise UsageError("--key and --weights ema both choose the weights; give one")
    result = api.convert(source, dest, key=key, spec=spec, force=force, weights=weights.value,
                         strip_prefix=strip_prefix)
    common.notes(result, output.quiet)
    with common.writer(output, command="convert", render_table=render_table) as out:
        out.finish(result.config, result.summary)
