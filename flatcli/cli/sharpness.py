"""``flatrob sharpness``: relative sharpness of the head in closed form (plus Hutchinson traces)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import (
    Arch, BatchSize, Checkpoint, Data, Device, FormatOpt, Format, Layer, Limit, Output, PerSample, Quiet,
    Scale, ScaleBias, Seed, SpecFile, Split, WeightNorm, WeightNormOpt, PrecisionOpt, Precision, ChannelsLast,
)
from flatcli.errors import UsageError


def render_table(stream, summary: dict, samples: list[dict] | None) -> None:
    con = render.console(stream)
    scalars, stats = render.split_summary(summary)
    con.print(render.key_values("Relative sharpness of the head (closed form)", scalars))
    con.print(render.stats_table("Per-sample measures", stats))
    if summary.get("hutchinson"):
        con.print(render.rows_table("Hutchinson traces", summary["hutchinson"]))
    if samples:
        con.print(render.rows_table("Samples", samples))


@app.command()
def sharpness(
    checkpoint: Checkpoint,
    spec: SpecFile = None,
    arch: Arch = None,
    layer: Layer = None,
    data: Data = None,
    split: Split = "test",
    limit: Limit = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    seed: Seed = 0,
    format: FormatOpt = Format.table,
    output: Output = None,
    quiet: Quiet = False,
    per_sample: PerSample = False,
    weight_norm: WeightNormOpt = WeightNorm.squared,
    scale: Scale = 1.0,
    scale_bias: ScaleBias = True,
    hutchinson: Annotated[int, typer.Option("--hutchinson", help="Probes for a Hutchinson estimate of the head's trace (0: off).")] = 0,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Comma-separated earlier layers for Hutchinson traces (Fig. 14).")] = None,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
) -> None:
    """Relative sharpness of the head layer, per sample and per data set (closed form)."""
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    if hutchinson < 0 or hutchinson == 1:
        raise UsageError(f"--hutchinson needs 0 (off) or at least 2 probes, got {hutchinson}")
    if not scale > 0:
        raise UsageError(f"--scale must be positive, got {scale}")
    import torch

    from flatcli.head import Scaling
    from flatcli.measure import SharpnessSettings, measure_sharpness

    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device=device, channels_last=channels_last)
    ds = common.load_data_for(loaded, data, split, limit)
    chosen_layers = tuple(n.strip() for n in layers.split(",") if n.strip()) if layers else loaded.spec.layers
    settings = SharpnessSettings(
        batch_size=batch_size,
        scaling=Scaling(scale, scale_bias),
        weight_norm=weight_norm.value,
        hutchinson=hutchinson,
        layers=chosen_layers,
        seed=seed,
        precision=precision.value,
    )
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "weight_norm": weight_norm.value,
        "scale": scale,
        "scale_bias": scale_bias,
        "hutchinson_probes": hutchinson,
        "layers": list(chosen_layers),
        "precision": precision.value,
        "channels_last": channels_last,
    }
    dist = common.distributed(dev)
    with common.writer(
        format, output, command="sharpness", per_sample=per_sample, render_table=render_table, enabled=dist.is_main
    ) as out:
        with common.progress_bar(len(ds), "sharpness", quiet or not dist.is_main) as progress:
            summary = measure_sharpness(loaded, ds, settings, device=dev, on_rows=out.rows, progress=progress, dist=dist)
        out.finish(config, summary)
