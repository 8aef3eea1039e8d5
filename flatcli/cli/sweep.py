"""``flatrob sweep-scale``: scale the head by s and measure loss increase, basins, robust accuracy, transfer."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Checkpoints
from flatcli.cli.params import expand
from flatcli.cli.tables.sweep import render
from flatcli.options import (
    CheckpointListOptions, DataOptions, ModelOptions, OutputOptions, PGDOptions, ResumeOptions, RunOptions,
    ScalingOptions, SpeedOptions, TakeoffOptions,
)
from flatcli.options.sweep import SweepOptions

Plot = Annotated[Optional[str], typer.Option(
    "--plot", help="Write the Fig. 2 and Fig. 13 panels as PNGs into DIR (needs matplotlib); with several checkpoints, "
    "FILE (.png, .pdf, .svg): robust accuracy and sharpness median per scale against the checkpoint order, and each "
    "checkpoint's per-scale curves overlaid.",
    metavar="DIR|FILE")]


@app.command("sweep-scale")
@expand
def sweep_scale(checkpoint: Checkpoints = None, checkpoints: CheckpointListOptions = None, sweep: SweepOptions = None,
                model: ModelOptions = None, data: DataOptions = None, run: RunOptions = None,
                output: OutputOptions = None, attack: PGDOptions = None, takeoff: TakeoffOptions = None,
                head: ScalingOptions = None, plot: Plot = None, speed: SpeedOptions = None,
                resume: ResumeOptions = None) -> None:
    """Scale the head by each s: loss increase on fixed trajectories, basin widths, robust accuracy, transfer.

    The fixed trajectories (--norm/--eps/--alpha/--steps, default --preset basin: PGD-l2, 25 steps,
    eps 0.025, alpha 0.001; §6.1) run once on the unscaled model and every scale is evaluated on their
    cached features. The per-scale attack (--attack-*, default PGD-linf, 10 steps, eps 8/255,
    alpha 2/255; D.3) runs on each scaled model, with the same PGD on the margin loss (and --square)
    to tell real robustness from gradient masking.
    """
    streamed = output.per_sample  # csv/jsonl without --per-sample: one row per scale, written after the run

    def scale_rows(out, result):
        if not streamed and output.format in ("jsonl", "csv"):
            out.rows(common.summary_rows(result, lambda summary: summary["scales"]))

    result = common.call("sweep-scale", checkpoint, checkpoints, output, render, model, data, run, speed, attack, head,
                         takeoff, sweep, rows=streamed, before_finish=scale_rows, plot=plot, resume=resume.resume)
    common.exit_status(result)
