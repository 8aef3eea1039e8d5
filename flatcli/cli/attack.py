"""``flatrob attack``: PGD-linf / PGD-l2 recording loss and sharpness along every trajectory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, BatchSize, Checkpoint, Data, Device, Eps, Format, FormatOpt, Layer, Limit, NormOpt, Output,
    PerSample, PresetOpt, Quiet, RandomStart, Restarts, ResumeOpt, Scale, ScaleBias, Seed, SpecFile, Split, Steps, WeightNorm,
    WeightNormOpt, ChannelsLast, Precision, PrecisionOpt, SaveAdv, Takeoff,
)
from flatcli import interrupts
from flatcli.errors import UsageError

CONVENTIONS = {
    "objective": "per-sample cross-entropy summed over the batch (targeted: minus the cross-entropy to the target)",
    "update": "step (linf: alpha*sign(g); l2: alpha*g/max(||g||_2,1e-12)), project onto the eps-ball, clamp to [0,1]",
    "random_start": "linf: uniform in the box; l2: uniform in the ball's volume",
    "adversarial": "final iterate; with restarts, per sample the restart with the highest final objective",
    "recording": "measures of x_t from the forward pass that gives the gradient at step t, plus one final forward",
    "loss_increase": "loss at x_T minus loss at the clean input",
    "takeoff": "first t with (l_t - l_0)/(max l - l_0) >= tau; width ||x_{t*-1} - x_clean||_2; censored if max l - l_0 <= 1e-6",
    "valley": "sample's sharpness peaks at 0 < t < T and ends below half of its peak",
    "ever_fooled_accuracy": "share of samples classified correctly at the clean input and at every iterate",
    "nonfinite": "a sample whose logits or gradients turn NaN/Inf at any step is flagged (nonfinite), counted in "
    "summary.nonfinite and left out of every mean and rate; --save-adv keeps its clean input",
}

TRAJECTORY_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def render_table(stream, summary: dict, samples: list[dict] | None) -> None:
    con = render.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(render.key_values("PGD attack", scalars))
    steps = [
        {
            "step": t,
            "loss": summary["mean_loss_by_step"][t],
            "loss std": summary["std_loss_by_step"][t],
            "sharpness": summary["mean_sharpness_by_step"][t],
            "sharpness std": summary["std_sharpness_by_step"][t],
            "accuracy": summary["accuracy_by_step"][t],
            "confidence": summary["mean_confidence_by_step"][t],
            "dist_l2": summary["mean_dist_l2_by_step"][t],
        }
        for t in range(len(summary["mean_loss_by_step"]))
    ]
    con.print(render.rows_table("Mean over samples, per step", steps))
    to = summary["takeoff"]
    stats = {
        "loss_increase": summary["loss_increase"],
        "clean_sharpness": summary["clean_sharpness"],
        "adv_sharpness": summary["adv_sharpness"],
        "basin_width": to["width"],
        "takeoff_step": to["step"],
    }
    con.print(render.stats_table(f"Per-sample statistics (take-off tau {to['tau']:g}: {to['measured']} measured, "
                                 f"{to['censored']} censored)", stats))
    if samples:
        con.print(render.rows_table("Samples", samples))


def _parse_targeted(value: str | None) -> int | str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("least-likely", "ll", "least_likely"):
        return "least-likely"
    try:
        cls = int(text)
    except ValueError:
        raise UsageError(f"--targeted takes a class number or least-likely, got {value!r}") from None
    if cls < 0:
        raise UsageError(f"--targeted {cls}: class numbers start at 0")
    return cls


def _resume_store(directory: str, loaded, ds, dev, settings, pgd, channels_last: bool, *, enabled: bool):
    """The --resume directory, checked against everything the per-batch numbers depend on."""
    from flatcli.resume import ResumeStore, run_identity
    from flatcli.trajectory import Takeoff

    identity = run_identity(
        loaded, ds, dev, batch_size=settings.batch_size, seed=settings.seed, **pgd.config(), targeted=settings.targeted,
        takeoff=settings.takeoff, weight_norm=settings.weight_norm, scale=settings.scaling.scale,
        scale_bias=settings.scaling.scale_bias, precision=settings.precision, channels_last=channels_last,
    )
    return ResumeStore(directory, "attack", identity, {"Takeoff": Takeoff}) if enabled else None


@app.command()
def attack(
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
    preset: PresetOpt = None,
    norm: NormOpt = None,
    eps: Eps = None,
    alpha: Alpha = None,
    steps: Steps = None,
    random_start: RandomStart = False,
    restarts: Restarts = 1,
    targeted: Annotated[
        Optional[str], typer.Option("--targeted", help="Targeted attack towards class CLASS, or least-likely (the lowest clean logit).", metavar="CLASS|least-likely")
    ] = None,
    takeoff: Takeoff = 0.1,
    trajectory: Annotated[
        Optional[str], typer.Option("--trajectory", help="Write one row per sample and step to FILE (.csv or .jsonl), streamed.", metavar="FILE")
    ] = None,
    save_adv: SaveAdv = None,
    plot: Annotated[
        Optional[str], typer.Option("--plot", help="Draw mean/spread of loss and sharpness per step (paper Fig. 3) to FILE (.png, .pdf, .svg).", metavar="FILE")
    ] = None,
    weight_norm: WeightNormOpt = WeightNorm.squared,
    scale: Scale = 1.0,
    scale_bias: ScaleBias = True,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
    resume: ResumeOpt = None,
) -> None:
    """PGD-linf / PGD-l2 recording loss, sharpness and confidence at every step (uncanny valley, take-off)."""
    from flatcli.attacks import PGD, PRESETS

    common.check_common(limit=limit, batch_size=batch_size)
    if not scale > 0:
        raise UsageError(f"--scale must be positive, got {scale}")
    preset_name = preset.value if preset is not None else "uncanny"
    pgd = PGD.from_options(
        preset_name,
        norm=norm.value if norm is not None else None,
        eps=eps,
        alpha=alpha,
        steps=steps,
        random_start=random_start,
        restarts=restarts,
    )
    target = _parse_targeted(targeted)
    if not 0 < takeoff <= 1:
        raise UsageError(f"--takeoff must be in (0, 1], got {takeoff}")
    for option, path in (("--trajectory", trajectory), ("--save-adv", save_adv)):
        if path == "-":
            raise UsageError(f"{option} needs a file name (stdout carries the result)")
    common.check_outputs(output=output, trajectory=trajectory, save_adv=save_adv, plot=plot)
    traj_format = None
    if trajectory is not None:
        traj_format = TRAJECTORY_FORMATS.get(Path(trajectory).suffix.lower())
        if traj_format is None:
            raise UsageError(f"--trajectory {trajectory}: use a .csv or .jsonl file name")
    if plot is not None:
        from flatcli.plots import check_plot_path, require_matplotlib

        check_plot_path(plot)
        require_matplotlib()

    import torch

    from flatcli.head import Scaling
    from flatcli.output import ResultWriter
    from flatcli.trajectory import AttackSettings, run_attack

    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device=device, channels_last=channels_last)
    dist = common.distributed(dev)
    if isinstance(target, int) and target >= loaded.num_classes:
        raise UsageError(f"--targeted {target}: the model has classes 0..{loaded.num_classes - 1}")
    ds = common.load_data_for(loaded, data, split, limit)
    settings = AttackSettings(
        attack=pgd,
        batch_size=batch_size,
        scaling=Scaling(scale, scale_bias),
        weight_norm=weight_norm.value,
        takeoff=takeoff,
        targeted=target,
        seed=seed,
        keep_adv=save_adv is not None,
        precision=precision.value,
    )
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "preset": preset_name,
        "preset_values": PRESETS[preset_name],
        **pgd.config(),
        "targeted": target,
        "takeoff_tau": takeoff,
        "weight_norm": weight_norm.value,
        "scale": scale,
        "scale_bias": scale_bias,
        "trajectory": trajectory,
        "save_adv": save_adv,
        "plot": plot,
        "precision": precision.value,
        "channels_last": channels_last,
        "conventions": CONVENTIONS,
    }
    main = dist.is_main  # under torchrun only rank 0 writes
    store = None
    if resume is not None:
        from flatcli.resume import hint_for

        store = _resume_store(resume, loaded, ds, dev, settings, pgd, channels_last, enabled=main)
        interrupts.set_hint("no output file was written; " + hint_for(resume))
    else:
        interrupts.set_hint("no output file was written; rerun with --resume DIR to keep finished batches across interruptions")
    with common.writer(format, output, command="attack", per_sample=per_sample, render_table=render_table, enabled=main) as out:
        traj = ResultWriter(traj_format, trajectory, command="attack", enabled=main) if trajectory else None
        with traj if traj is not None else contextlib.nullcontext():
            with common.progress_bar(len(ds), "attack", quiet or not main) as progress:
                outcome = run_attack(
                    loaded, ds, settings, device=dev,
                    on_steps=traj.rows if traj is not None else None,
                    on_samples=out.rows if per_sample or format in (Format.jsonl, Format.csv) else None,
                    progress=progress,
                    dist=dist,
                    store=store,
                )
            if main and outcome.summary.get("nonfinite"):
                common.note(
                    f"note: {outcome.summary['nonfinite']} of {outcome.summary['n']} samples hit NaN/Inf in the logits or "
                    "gradients; they are flagged (nonfinite) and left out of the means", quiet,
                )
            if store is not None and store.reused:
                common.note(f"resumed: {store.reused} finished batch(es) read from {resume}", quiet or not main)
            if not main:
                return
            if save_adv is not None:
                from flatcli.data import save_tensors

                x_adv, y_adv, index = outcome.adv
                # One metadata key: safetensors writes several in random (hash) order, which would break
                # "same seed, same bytes".
                meta = {
                    "flatrob.attack": json.dumps(
                        {"checkpoint_sha256": loaded.checkpoint.sha256, "data": ds.name, "seed": seed,
                         "targeted": target, "scale": scale, "scale_bias": scale_bias, **pgd.config()},
                        sort_keys=True,
                    ),
                }
                save_tensors(save_adv, x_adv, y_adv, index, metadata=meta)
            if plot is not None:
                from flatcli.plots import attack_figure

                title = f"{loaded.checkpoint.name}: PGD-{pgd.norm} eps {pgd.eps:g}, alpha {pgd.alpha:g}, {pgd.steps} steps"
                attack_figure(outcome.summary, plot, title=title)
            if traj is not None:
                traj.finish(config, outcome.summary)
        out.finish(config, outcome.summary)

