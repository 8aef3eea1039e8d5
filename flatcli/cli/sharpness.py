"""``flatrob sharpness``: relative sharpness of the head in closed form (plus Hutchinson traces)."""

from __future__ import annotations

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Checkpoints, TrendPlot
from flatcli.cli.params import expand
from flatcli.cli.tables.sharpness import render
from flatcli.options import (
    CheckpointListOptions, DataOptions, HeadOptions, LayerOptions, ModelOptions, OutputOptions, RunOptions,
    SpeedOptions,
)
from flatcli.options.lm import LanguageModelOptions, PositionOptions, PromptOptions


@app.command()
@expand
def sharpness(checkpoint: Checkpoints = None, checkpoints: CheckpointListOptions = None, model: ModelOptions = None,
              data: DataOptions = None, run: RunOptions = None, output: OutputOptions = None, head: HeadOptions = None,
              layers: LayerOptions = None, speed: SpeedOptions = None, plot: TrendPlot = None,
              prompt: PromptOptions = None, positions: PositionOptions = None, lm: LanguageModelOptions = None) -> None:
    """Relative sharpness of the head layer, per sample and per data set (closed form); per prompt and token for a
    causal language model on prompts: data."""
    result = common.call("sharpness", checkpoint, checkpoints, output, render, model, data, run, speed, head, layers,
                         prompt, positions, lm, plot=plot)
    common.exit_status(result)
