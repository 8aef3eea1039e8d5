"""``flatrob sharpness``: relative sharpness of the head in closed form (plus Hutchinson traces)."""

from __future__ import annotations

from typing import Annotated

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import (
    Arch, BatchSize, ChannelsLast, Checkpoints, CheckpointsFrom, Crop, Data, Device, FailFast, FisherSamples, Format,
    FormatOpt, ImageColumn, InterpolationOpt, LabelColumn, Layer, LayerMethod, LayerMethodOpt, Layers, Limit, Output,
    PerSample, Precision, PrecisionOpt, Quiet, Resize, Scale, ScaleBias, Seed, SpecFile, Split, TrendPlot,
    TrustEmbeddedCode, value, WeightNorm, WeightNormOpt,
)
from flatcli.cli.tables.sharpness import render


@app.command()
def sharpness(
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
    weight_norm: WeightNormOpt = WeightNorm.squared,
    scale: Scale = 1.0,
    scale_bias: ScaleBias = True,
    hutchinson: Annotated[int, typer.Option("--hutchinson", help="Probes for a Hutchinson estimate of the head's trace (0: off); also the probes of --layers measured by Hutchinson (0: 100).")] = 0,
    layers: Layers = None,
    layer_method: LayerMethodOpt = LayerMethod.auto,
    fisher_samples: FisherSamples = 2,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
    plot: TrendPlot = None,
) -> None:
    """Relative sharpness of the head layer, per sample and per data set (closed form)."""
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    common.check_outputs(plot=plot)
    from flatcli import api

    with common.writer(format, output, command="sharpness", per_sample=per_sample, render_table=render) as out:
        with common.progress_bar("sharpness", quiet) as progress:
            result = api.sharpness(
                common.models(checkpoint, checkpoints_from), data, checkpoints_from=checkpoints_from,
                fail_fast=fail_fast, on_error=common.checkpoint_error, plot=plot, spec=spec, arch=arch, layer=layer,
                split=split, limit=limit, batch_size=batch_size, device=device, seed=seed,
                resize=resize, crop=crop, interpolation=value(interpolation), image_column=image_column,
                label_column=label_column, weight_norm=weight_norm.value, scale=scale, scale_bias=scale_bias,
                hutchinson=hutchinson, layers=layers, layer_method=layer_method.value, fisher_samples=fisher_samples,
                precision=precision.value, channels_last=channels_last, samples=False, on_rows=out.rows,
                progress=progress, trust_embedded_code=trust_embedded_code,
            )
        common.finish(out, result, quiet)
    common.exit_status(result)
