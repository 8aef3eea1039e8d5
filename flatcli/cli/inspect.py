"""``flatrob inspect``: what a checkpoint holds."""

from __future__ import annotations

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Checkpoint
from flatcli.cli.params import expand
from flatcli.cli.tables.inspect import render
from flatcli.options import ModelOptions, OutputOptions
from flatcli.options.lm import LanguageModelOptions


@app.command()
@expand
def inspect(checkpoint: Checkpoint, model: ModelOptions = None, output: OutputOptions = None,
            lm: LanguageModelOptions = None) -> None:
    """Show a checkpoint's architecture, parameter count, linear layers and spec."""
    common.check_outputs(output=output.output)
    from flatcli import api

    result = api.inspect(checkpoint, model, lm)
    common.notes(result, output.quiet)
    with common.writer(output, command="inspect", render_table=render) as out:
        out.rows(result.samples)
        out.finish(result.config, result.summary)
