"""``flatrob sweep-scale``: scale the head by s, measure loss increase, basins, robust accuracy, transfer."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, AttackAlpha, AttackEps, AttackLoss, AttackNormOpt, AttackSteps, BatchSize, ChannelsLast, Checkpoints,
    CheckpointsFrom, Crop, Data, Device, Eps, FailFast, Format, FormatOpt, ImageColumn, InterpolationOpt, LabelColumn,
    Layer, Limit, NormOpt, Output, PerSample, Precision, PrecisionOpt, PresetOpt, Queries, Quiet, RandomStart, Resize,
    Restarts, ResumeOpt, ScaleBias, Seed, SpecFile, Split, Steps, Takeoff, TrustEmbeddedCode, value, WeightNorm,
    WeightNormOpt,
)
from flatcli.cli.tables.sweep import render

DEFAULT_SCALES = "0.25,0.5,1,2.5,5,10,50"


@app.command("sweep-scale")
def sweep_scale(
    checkpoint: Checkpoints = None,
    checkpoints_from: CheckpointsFrom = None,
    fail_fast: FailFast = False,
    scales: Annotated[
        str, typer.Option("--scales", help="Comma-separated head scales s (W -> sW); §6.1 uses 0.25..50, D.3 goes to 100.")
    ] = DEFAULT_SCALES,
    spec: SpecFile = None,
    arch: Arch = None,
    trust_embedded_code: TrustEmbeddedCode = False,
    layer: Layer = None,
    data: Data = None,
    split: Split = "test",
    limit: Limit = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    seed: Seed = 0,
    resize: Resize = None,
    crop: Crop = None,
    interpolation: InterpolationOpt = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    format: FormatOpt = Format.table,
    output: Output = None,
    quiet: Quiet = False,
    per_sample: PerSample = False,
    preset: PresetOpt = None,
    norm: NormOpt = None,
    eps: Eps = None,
    alpha: Alpha = None,
    steps: Steps = None,
    random_start: RandomStart = False,
    restarts: Restarts = 1,
    takeoff: Takeoff = 0.1,
    attack_each_scale: Annotated[
        bool,
        typer.Option("--attack-each-scale/--no-attack-each-scale", help="Attack every scaled model (D.3) and evaluate the s=1 adversarials at every scale."),
    ] = True,
    attack_norm: AttackNormOpt = None,
    attack_eps: AttackEps = None,
    attack_alpha: AttackAlpha = None,
    attack_steps: AttackSteps = None,
    attack_loss: AttackLoss = None,
    square: Annotated[
        bool, typer.Option("--square", help="Also run the gradient-free Square attack (torchattacks) on every scaled model.")
    ] = False,
    queries: Queries = None,
    masking_threshold: Annotated[
        float,
        typer.Option("--masking-threshold", help="Flag masking when margin-loss PGD, Square or transfer leaves this "
                     "much less robust accuracy than the attack (a fraction)."),
    ] = 0.05,
    scale_bias: ScaleBias = True,
    weight_norm: WeightNormOpt = WeightNorm.squared,
    plot: Annotated[
        Optional[str],
        typer.Option("--plot", help="Write the Fig. 2 and Fig. 13 panels as PNGs into DIR (needs matplotlib); with several "
                     "checkpoints, FILE (.png, .pdf, .svg): robust accuracy and sharpness median per scale against the "
                     "checkpoint order.", metavar="DIR|FILE"),
    ] = None,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
    resume: ResumeOpt = None,
) -> None:
    """Scale the head by each s: loss increase on fixed trajectories, basin widths, robust accuracy, transfer.

    The fixed trajectories (--norm/--eps/--alpha/--steps, default --preset basin: PGD-l2, 25 steps,
    eps 0.025, alpha 0.001; §6.1) run once on the unscaled model and every scale is evaluated on their
    cached features. The per-scale attack (--attack-*, default PGD-linf, 10 steps, eps 8/255,
    alpha 2/255; D.3) runs on each scaled model, with the same PGD on the margin loss (and --square)
    to tell real robustness from gradient masking.
    """
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    from flatcli import api

    # csv/jsonl without --per-sample: one row per scale, written after the run
    streamed = per_sample
    with common.writer(format, output, command="sweep-scale", per_sample=per_sample, render_table=render) as out:
        with common.progress_bar("sweep-scale", quiet) as progress:
            result = api.sweep_scale(
                common.models(checkpoint, checkpoints_from), data, checkpoints_from=checkpoints_from,
                fail_fast=fail_fast, on_error=common.checkpoint_error, scales=scales, spec=spec, arch=arch, layer=layer,
                split=split, limit=limit, batch_size=batch_size, device=device, seed=seed,
                resize=resize, crop=crop, interpolation=value(interpolation), image_column=image_column,
                label_column=label_column, preset=value(preset), norm=value(norm), eps=eps,
                alpha=alpha, steps=steps, random_start=random_start, restarts=restarts, takeoff=takeoff,
                attack_each_scale=attack_each_scale, attack_norm=value(attack_norm), attack_eps=attack_eps,
                attack_alpha=attack_alpha, attack_steps=attack_steps, attack_loss=value(attack_loss), square=square,
                queries=queries, masking_threshold=masking_threshold, scale_bias=scale_bias,
                weight_norm=weight_norm.value, plot=plot, precision=precision.value, channels_last=channels_last,
                resume=resume, samples=False, on_rows=out.rows if streamed else None, progress=progress,
                trust_embedded_code=trust_embedded_code,
            )
        if not streamed and format in (Format.jsonl, Format.csv):
            out.rows(common.summary_rows(result, lambda summary: summary["scales"]))
        common.finish(out, result, quiet)
    common.exit_status(result)
