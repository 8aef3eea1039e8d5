"""``flatrob sweep-scale``: scale the head by s, measure loss increase, basins, robust accuracy, transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, AttackAlpha, AttackEps, AttackNormOpt, AttackSteps, BatchSize, ChannelsLast, Checkpoint, Data,
    Device, Eps, Format, FormatOpt, Layer, Limit, NormOpt, Output, PerSample, Precision, PrecisionOpt, PresetOpt,
    Quiet, RandomStart, Restarts, ResumeOpt, ScaleBias, Seed, SpecFile, Split, Steps, Takeoff, WeightNorm, WeightNormOpt,
)
from flatcli import interrupts
from flatcli.errors import UsageError

DEFAULT_SCALES = "0.25,0.5,1,2.5,5,10,50"

CONVENTIONS = {
    "scaling": "W -> sW, and b -> sb when scale_bias; phi (everything before the head) is unchanged",
    "trajectories": "one PGD run per sample on the unscaled model; every scale is evaluated on the features "
    "of its iterates, cached from the attack's own forward passes (closed forms in float64)",
    "clean_accuracy": "accuracy of the scaled model on the clean inputs",
    "sharpness_mean": "mean relative sharpness of the scaled head at the clean inputs",
    "loss_increase": "loss of the scaled model at the final iterate x_T minus at the clean input",
    "takeoff": "first t with (l_t - l_0)/(max l - l_0) >= tau on the scaled model's losses; width ||x_{t*-1} - x_clean||_2; "
    "censored if max l - l_0 <= 1e-6",
    "basin_width_median": "median over all samples, censored widths counted as wider than every measured one "
    "(they are >= the final distance); null when the median falls on a censored sample",
    "robust_accuracy": "accuracy of the scaled model at the final iterate of the per-scale attack run on that scaled model",
    "transfer_accuracy": "accuracy of the scaled model on the per-scale attack's adversarials crafted at s=1",
    "spearman_width_sharpness": "Spearman rank correlation (average ranks for ties) of basin width and clean "
    "relative sharpness at s=1, over uncensored samples",
    "nonfinite": "a sample whose logits or gradients turn NaN/Inf at scale s (fixed trajectory, its per-scale attack, "
    "or the s=1 adversarial transferred to s) is flagged (nonfinite) in its row at s, counted in that scale's "
    "record and left out of its means, medians and rates (and of the Spearman correlation if flagged at s=1); "
    "summary.nonfinite counts samples flagged at any scale",
}

ROW_COLUMNS = {
    "scale": "s",
    "clean_accuracy": "clean",
    "sharpness_mean": "sharpness",
    "loss_increase_mean": "loss+ mean",
    "loss_increase_median": "loss+ median",
    "basin_width_median": "width median",
    "censored": "censored",
    "robust_accuracy": "robust",
    "transfer_accuracy": "transfer",
}
CAPTION = (
    "clean: accuracy; sharpness: mean relative sharpness at the clean inputs; loss+: l(x_T) - l(x_clean) on the "
    "fixed trajectories; width: basin width (censored: the loss never rises); robust: accuracy under the attack "
    "at s; transfer: accuracy at s on the adversarials crafted at s=1"
)


def _cell(key: str, rec: dict, n: int) -> str:
    value = rec[key]
    if key == "censored":
        return f"{value}/{n}"
    if key == "basin_width_median" and value is None and rec["censored"]:
        return "censored"
    if isinstance(value, float) and key != "scale":
        return f"{value:.4g}"
    return render.fmt(value)


def render_table(stream, summary: dict, samples: list[dict] | None) -> None:
    from rich.table import Table

    con = render.console(stream)
    n = summary["n"]
    cells = [[_cell(k, rec, n) for k in ROW_COLUMNS] for rec in summary["scales"]]
    table = Table(title=f"Scaling the head by s (n = {n})", title_justify="left", caption=CAPTION, caption_justify="left")
    for i, label in enumerate(ROW_COLUMNS.values()):
        width = max([len(row[i]) for row in cells] + [max(len(w) for w in label.split())])
        table.add_column(label, justify="right", min_width=width)  # numbers stay whole; headers wrap
    for row in cells:
        table.add_row(*row)
    con.print(table)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(render.key_values("Sweep", scalars))
    if samples:
        con.print(render.rows_table("Samples", samples))


def _plot_dir(path: str) -> Path:
    """``--plot DIR``: an existing directory, or a new one whose parent exists (created before any work)."""
    d = Path(path).expanduser()
    if d.exists() and not d.is_dir():
        raise UsageError(f"--plot {path} is a file; --plot takes a directory for the figures")
    parent = d.parent if str(d.parent) else Path(".")
    if not d.exists() and not parent.is_dir():
        raise UsageError(f"--plot {path}: directory {parent} does not exist; create it first")
    return d


@app.command("sweep-scale")
def sweep_scale(
    checkpoint: Checkpoint,
    scales: Annotated[
        str, typer.Option("--scales", help="Comma-separated head scales s (W -> sW); §6.1 uses 0.25..50, D.3 goes to 100.")
    ] = DEFAULT_SCALES,
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
    takeoff: Takeoff = 0.1,
    attack_each_scale: Annotated[
        bool,
        typer.Option("--attack-each-scale/--no-attack-each-scale", help="Attack every scaled model (D.3) and evaluate the s=1 adversarials at every scale."),
    ] = True,
    attack_norm: AttackNormOpt = None,
    attack_eps: AttackEps = None,
    attack_alpha: AttackAlpha = None,
    attack_steps: AttackSteps = None,
    scale_bias: ScaleBias = True,
    weight_norm: WeightNormOpt = WeightNorm.squared,
    plot: Annotated[
        Optional[str],
        typer.Option("--plot", help="Write the Fig. 2 and Fig. 13 panels as PNGs into DIR (needs matplotlib).", metavar="DIR"),
    ] = None,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: ChannelsLast = False,
    resume: ResumeOpt = None,
) -> None:
    """Scale the head by each s: loss increase on fixed trajectories, basin widths, robust accuracy, transfer.

    The fixed trajectories (--norm/--eps/--alpha/--steps, default --preset basin: PGD-l2, 25 steps,
    eps 0.025, alpha 0.001; §6.1) run once on the unscaled model and every scale is evaluated on their
    cached features. The per-scale attack (--attack-*, default PGD-linf, 10 steps, eps 8/255,
    alpha 2/255; D.3) runs on each scaled model.
    """
    from flatcli.attacks import PGD, PRESETS
    from flatcli.sweep import SweepSettings, default_attack, parse_scales

    common.check_common(limit=limit, batch_size=batch_size, output=output)
    scale_values = parse_scales(scales)
    given = {"--attack-norm": attack_norm, "--attack-eps": attack_eps, "--attack-alpha": attack_alpha, "--attack-steps": attack_steps}
    if not attack_each_scale:
        named = [opt for opt, v in given.items() if v is not None]
        if named:
            raise UsageError(f"{', '.join(named)} set the per-scale attack, which --no-attack-each-scale skips; drop one or the other")
    preset_name = preset.value if preset is not None else "basin"
    trajectory = PGD.from_options(
        preset_name, norm=norm.value if norm is not None else None, eps=eps, alpha=alpha, steps=steps,
        random_start=random_start, restarts=restarts,
    )
    per_scale = None
    if attack_each_scale:
        per_scale = default_attack().with_(
            **{k: v for k, v in {"norm": attack_norm.value if attack_norm is not None else None, "eps": attack_eps,
                                 "alpha": attack_alpha, "steps": attack_steps}.items() if v is not None}
        )
    plot_dir = None
    if plot is not None:
        from flatcli.plots import require_matplotlib

        plot_dir = _plot_dir(plot)
        require_matplotlib()
    settings = SweepSettings(
        scales=scale_values, trajectory=trajectory, attack=per_scale, scale_bias=scale_bias,
        weight_norm=weight_norm.value, takeoff=takeoff, batch_size=batch_size, seed=seed, precision=precision.value,
    )

    import torch

    from flatcli.sweep import run_sweep

    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device=device, channels_last=channels_last)
    dist = common.distributed(dev)
    ds = common.load_data_for(loaded, data, split, limit)
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "scales": list(scale_values),
        "scale_bias": scale_bias,
        "weight_norm": weight_norm.value,
        "takeoff_tau": takeoff,
        "trajectory": {"preset": preset_name, "preset_values": PRESETS[preset_name], **trajectory.config()},
        "attack_each_scale": attack_each_scale,
        "attack": per_scale.config() if per_scale is not None else None,
        "plot": str(plot_dir) if plot_dir is not None else None,
        "precision": precision.value,
        "channels_last": channels_last,
        "conventions": CONVENTIONS,
    }
    rows_out = per_sample or format in (Format.jsonl, Format.csv)
    main = dist.is_main  # under torchrun only rank 0 writes
    store = None
    if resume is not None and main:
        from flatcli.resume import ResumeStore, run_identity

        identity = run_identity(
            loaded, ds, dev, batch_size=batch_size, seed=seed, scales=list(scale_values), scale_bias=scale_bias,
            weight_norm=weight_norm.value, takeoff_tau=takeoff, trajectory=trajectory.config(),
            attack=per_scale.config() if per_scale is not None else None, precision=precision.value,
            channels_last=channels_last, examples=settings.examples,
        )
        store = ResumeStore(resume, "sweep-scale", identity, {})
    if resume is not None:
        from flatcli.resume import hint_for

        interrupts.set_hint("no output file was written; " + hint_for(resume))
    else:
        interrupts.set_hint("no output file was written; rerun with --resume DIR to keep finished batches across interruptions")
    with common.writer(format, output, command="sweep-scale", per_sample=per_sample, render_table=render_table, enabled=main) as out:
        with common.progress_bar(len(ds), "sweep-scale", quiet or not main) as progress:
            outcome = run_sweep(
                loaded, ds, settings, device=dev, on_rows=out.rows if per_sample else None, progress=progress, dist=dist,
                store=store,
            )
        if main and outcome.summary.get("nonfinite"):
            common.note(
                f"note: {outcome.summary['nonfinite']} of {outcome.summary['n']} samples hit NaN/Inf in the logits or "
                "gradients at one or more scales; they are flagged (nonfinite) and left out of those scales' means", quiet,
            )
        if store is not None and store.reused:
            common.note(f"resumed: {store.reused} finished batch(es) read from {resume}", quiet)
        if not main:
            return
        if rows_out and not per_sample:
            out.rows(outcome.summary["scales"])  # csv/jsonl: one row per scale
        if plot_dir is not None:
            from flatcli.sweep_plots import sweep_figures

            plot_dir.mkdir(exist_ok=True)
            for path in sweep_figures(outcome, plot_dir, title=loaded.checkpoint.name, trajectory=trajectory, attack=per_scale):
                common.note(f"wrote {path}", quiet)
        out.finish(config, outcome.summary)
