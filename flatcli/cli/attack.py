"""``flatrob attack``: PGD-linf / PGD-l2 (APGD, Square) recording loss and sharpness along every trajectory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, AttackOpt, BatchSize, ChannelsLast, Checkpoints, CheckpointsFrom, Crop, Data, Device, Eps, FailFast,
    FisherSamples, Format, FormatOpt, ImageColumn, InterpolationOpt, LabelColumn, Layer, LayerMethod, LayerMethodOpt,
    Layers, Limit, LossOpt, NormOpt, Output, PerSample, Precision, PrecisionOpt, PresetOpt, Queries, Quiet,
    RandomStart, Resize, Restarts, ResumeOpt, SaveAdv, Scale, ScaleBias, Seed, SpecFile, Split, Steps, Takeoff,
    TrustEmbeddedCode, value, WeightNorm, WeightNormOpt,
)
from flatcli.cli.tables.attack import render
from flatcli.errors import UsageError


@app.command()
def attack(
    checkpoint: Checkpoints = None,
    checkpoints_from: CheckpointsFrom = None,
    fail_fast: FailFast = False,
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
    attack_kind: AttackOpt = None,
    loss: LossOpt = None,
    norm: NormOpt = None,
    eps: Eps = None,
    alpha: Alpha = None,
    steps: Steps = None,
    queries: Queries = None,
    random_start: RandomStart = False,
    restarts: Restarts = 1,
    targeted: Annotated[
        Optional[str], typer.Option("--targeted", help="Targeted attack towards class CLASS, or least-likely (the lowest clean logit).", metavar="CLASS|least-likely")
    ] = None,
    takeoff: Takeoff = 0.1,
    trajectory: Annotated[
        Optional[str], typer.Option("--trajectory", help="Write one row per sample and step to FILE (.csv or .jsonl), streamed; with several "
                     "checkpoints a name with {stem} or {index}.", metavar="FILE")
    ] = None,
    save_adv: SaveAdv = None,
    plot: Annotated[
        Optional[str], typer.Option("--plot", help="Draw mean/spread of loss and sharpness per step (paper Fig. 3) to FILE (.png, .pdf, .svg); "
                     "with several checkpoints, the summary measures against the checkpoint order.", metavar="FILE")
    ] = None,
    weight_norm: WeightNormOpt = WeightNorm.squared,
    scale: Scale = 1.0,
    scale_bias: ScaleBias = True,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
    resume: ResumeOpt = None,
    layers: Layers = None,
    layer_method: LayerMethodOpt = LayerMethod.auto,
    fisher_samples: FisherSamples = 2,
    hutchinson: Annotated[int, typer.Option("--hutchinson", help="Probes for the layers measured by Hutchinson (0: 100).")] = 0,
) -> None:
    """PGD-linf / PGD-l2 (or APGD, Square) recording loss, sharpness and confidence at every step (uncanny valley, take-off)."""
    common.check_common(limit=limit, batch_size=batch_size)
    for option, path in (("--trajectory", trajectory), ("--save-adv", save_adv)):
        if path == "-":
            raise UsageError(f"{option} needs a file name (stdout carries the result)")
    common.check_outputs(output=output, trajectory=trajectory, save_adv=save_adv, plot=plot)
    from flatcli import api

    rows = per_sample or format in (Format.jsonl, Format.csv)
    with common.writer(format, output, command="attack", per_sample=per_sample, render_table=render) as out:
        with common.progress_bar("attack", quiet) as progress:
            result = api.attack(
                common.models(checkpoint, checkpoints_from), data, checkpoints_from=checkpoints_from,
                fail_fast=fail_fast, on_error=common.checkpoint_error, spec=spec, arch=arch, layer=layer, split=split,
                limit=limit, batch_size=batch_size, device=device, seed=seed,
                resize=resize, crop=crop, interpolation=value(interpolation), image_column=image_column,
                label_column=label_column, preset=value(preset), attack=value(attack_kind), loss=value(loss),
                norm=value(norm), eps=eps, alpha=alpha, steps=steps, queries=queries, random_start=random_start,
                restarts=restarts, targeted=targeted, takeoff=takeoff,
                trajectory=trajectory, save_adv=save_adv, plot=plot, weight_norm=weight_norm.value, scale=scale,
                scale_bias=scale_bias, precision=precision.value, channels_last=channels_last, resume=resume,
                layers=layers, layer_method=layer_method.value, fisher_samples=fisher_samples, hutchinson=hutchinson,
                samples=False, on_rows=out.rows if rows else None, progress=progress,
                trust_embedded_code=trust_embedded_code,
            )
        common.finish(out, result, quiet)
    common.exit_status(result)
