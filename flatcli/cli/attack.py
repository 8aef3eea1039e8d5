"""``flatrob attack``: PGD-linf / PGD-l2 (APGD, Square) recording loss and sharpness along every trajectory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Checkpoints, SaveAdv
from flatcli.cli.params import expand
from flatcli.cli.tables.attack import render
from flatcli.options import (
    AttackOptions, CheckpointListOptions, DataOptions, HeadOptions, LayerOptions, ModelOptions, OutputOptions,
    ResumeOptions, RunOptions, SpeedOptions, TakeoffOptions,
)
from flatcli.options.lm import GCGOptions, LanguageModelOptions, PositionOptions, PromptOptions

Targeted = Annotated[Optional[str], typer.Option(
    "--targeted", help="Targeted attack towards class CLASS, or least-likely (the lowest clean logit).",
    metavar="CLASS|least-likely")]
Trajectory = Annotated[Optional[str], typer.Option(
    "--trajectory", help="Write one row per sample and step to FILE (.csv or .jsonl), streamed; with several "
    "checkpoints a name with {stem} or {index}.", metavar="FILE")]
Plot = Annotated[Optional[str], typer.Option(
    "--plot", help="Draw the mean (the paper's line), median and 25-75%/10-90% bands of loss and sharpness per step "
    "(paper Fig. 3) to FILE (.png, .pdf, .svg); with several checkpoints, the summary measures against the checkpoint "
    "order and each checkpoint's mean curves overlaid.", metavar="FILE")]


@app.command()
@expand
def attack(checkpoint: Checkpoints = None, checkpoints: CheckpointListOptions = None, model: ModelOptions = None,
           data: DataOptions = None, run: RunOptions = None, output: OutputOptions = None,
           attack: AttackOptions = None, targeted: Targeted = None, takeoff: TakeoffOptions = None,
           trajectory: Trajectory = None, save_adv: SaveAdv = None, plot: Plot = None, head: HeadOptions = None,
           speed: SpeedOptions = None, resume: ResumeOptions = None, layers: LayerOptions = None,
           gcg: GCGOptions = None, prompt: PromptOptions = None, positions: PositionOptions = None,
           lm: LanguageModelOptions = None) -> None:
    """PGD-linf / PGD-l2 (or APGD, Square) recording loss, sharpness and confidence at every step (uncanny valley,
    take-off); GCG on a causal language model's prompts."""
    rows = output.per_sample or output.format in ("jsonl", "csv")
    result = common.call("attack", checkpoint, checkpoints, output, render, model, data, run, speed, attack, head,
                         layers, takeoff, gcg, prompt, positions, lm, rows=rows, targeted=targeted, trajectory=trajectory, save_adv=save_adv,
                         plot=plot, resume=resume.resume)
    common.exit_status(result)
