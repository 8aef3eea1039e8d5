"""``flatrob detect``: flag adversarial inputs by their sharpness (paper D.4); fit + cross-validate,
save, or apply a saved detector (``--detector``)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, BatchSize, Checkpoint, Data, Device, Eps, Format, FormatOpt, Layer, Limit, NormOpt, Output,
    PerSample, PresetOpt, Quiet, RandomStart, Restarts, ResumeOpt, Seed, SpecFile, Split, Steps, WeightNorm, SaveAdv,
)
from flatcli import interrupts
from flatcli.errors import UsageError

DEFAULT_PRESET = "uncanny"  # §6.2: PGD-linf, 10 steps, eps 8/255, alpha 2/255
DEFAULT_FOLDS = 5

CONVENTIONS = {
    "labels": "0 = clean input, 1 = adversarial input; scores are label-free (the attack alone uses labels)",
    "balance": "the larger class is subsampled to the smaller one with numpy default_rng(seed)",
    "folds": "StratifiedKFold(folds, shuffle=True, random_state=seed); accuracy per held-out fold, std with ddof=0",
    "stump": "exact threshold search maximising balanced accuracy; flags score > threshold (above) or < (below)",
    "components": "logistic regression (class_weight=balanced) on standardised logs of sum_j p_j(1-p_j), "
    "||phi||^2, ||W phi||^2; flags logit > 0",
    "score_column": "the value the detector thresholds: the score (stump) or the logit (components)",
    "auc": "ROC-AUC of the pooled out-of-fold decisions; tpr_at_5fpr the best TPR at an FPR <= 0.05 on that curve",
    "prediction_changed": "share of adversarials whose prediction differs from their clean input's",
}


class Method(str, Enum):
    stump = "stump"
    components = "components"


class Score(str, Enum):
    relative_sharpness = "relative_sharpness"
    trace_h = "trace_h"
    confidence = "confidence"
    relative_flatness_full = "relative_flatness_full"


MethodOpt = Annotated[
    Optional[Method],
    typer.Option("--method", help="stump (threshold on one score; default) or components (logistic regression on "
                 "the logs of sum_j p_j(1-p_j), ||phi||^2, ||W phi||^2).", show_default=False),
]
ScoreOpt = Annotated[
    Optional[Score],
    typer.Option("--score", help="Label-free score the stump thresholds (default relative_sharpness).", show_default=False),
]
Folds = Annotated[Optional[int], typer.Option("--folds", help="Stratified cross-validation folds, >= 2 (default 5).", show_default=False)]
OnlySuccessful = Annotated[
    bool, typer.Option("--only-successful", help="Keep only adversarials whose prediction differs from their clean input's.")
]
Adversarial = Annotated[
    Optional[str],
    typer.Option("--adversarial", help="Read the adversarials from a tensors safetensors FILE (as `attack --save-adv` "
                 "writes) instead of attacking; --limit applies to it too.", metavar="FILE"),
]
Save = Annotated[Optional[str], typer.Option("--save", help="Write the fitted detector (JSON) to FILE.", metavar="FILE")]
Plot = Annotated[
    Optional[str],
    typer.Option("--plot", help="Draw score histograms of clean vs adversarial inputs with the threshold, and the ROC "
                 "curve, to FILE (.png, .pdf, .svg).", metavar="FILE"),
]
DetectorFile = Annotated[
    Optional[str],
    typer.Option("--detector", help="Apply a saved detector to --data: rows index, score, flagged and the flagged share.",
                 metavar="FILE"),
]
Force = Annotated[bool, typer.Option("--force", help="Apply a detector fitted on another checkpoint or layer anyway.")]
WeightNormMaybe = Annotated[
    Optional[WeightNorm],
    typer.Option("--weight-norm", help="Relative sharpness uses ||W||_F^2 (squared, default) or ||W||_F (plain); "
                 "with --detector, the detector's.", show_default=False),
]


def render_fit(stream, summary: dict, samples: list[dict] | None) -> None:
    con = render.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(render.key_values("Adversarial-input detector (cross-validated)", scalars))
    con.print(render.stats_table("Thresholded value of the inputs used",
                                 {"clean": summary["score_clean"], "adversarial": summary["score_adversarial"]}))
    if "components" in summary:
        comp = summary["components"]
        con.print(render.key_values("Components detector (standardised log features)",
                                    {**{f"coef {k}": v for k, v in comp["coef"].items()}, "intercept": comp["intercept"]}))
    if "baseline" in summary:
        con.print(render.key_values("Baseline: stump on relative sharpness, same folds", summary["baseline"]))
    if samples:
        con.print(render.rows_table("Inputs", samples))


def render_apply(stream, summary: dict, samples: list[dict] | None) -> None:
    con = render.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    con.print(render.key_values("Saved detector applied", scalars))
    con.print(render.stats_table("Thresholded value", {"score": summary["score_stats"]}))
    if samples:
        con.print(render.rows_table("Inputs", samples))


@app.command()
def detect(
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
    method: MethodOpt = None,
    score: ScoreOpt = None,
    folds: Folds = None,
    only_successful: OnlySuccessful = False,
    preset: PresetOpt = None,
    norm: NormOpt = None,
    eps: Eps = None,
    alpha: Alpha = None,
    steps: Steps = None,
    random_start: RandomStart = False,
    restarts: Restarts = 1,
    adversarial: Adversarial = None,
    save: Save = None,
    save_adv: SaveAdv = None,
    plot: Plot = None,
    detector: DetectorFile = None,
    force: Force = False,
    weight_norm: WeightNormMaybe = None,
    resume: ResumeOpt = None,
) -> None:
    """Detect adversarial inputs by their sharpness: fit and cross-validate a threshold (D.4), or apply a saved one."""
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    common.check_outputs(output=output, save=save, save_adv=save_adv, plot=plot)
    attack_given = {
        "--preset": preset, "--norm": norm, "--eps": eps, "--alpha": alpha, "--steps": steps,
        "--random-start": random_start or None, "--restarts": restarts if restarts != 1 else None,
    }
    attack_given = [k for k, v in attack_given.items() if v is not None]
    if detector is not None:
        fit_only = {
            "--method": method, "--score": score, "--folds": folds, "--only-successful": only_successful or None,
            "--adversarial": adversarial, "--save": save, "--save-adv": save_adv, "--plot": plot,
        }
        clash = [k for k, v in fit_only.items() if v is not None] + attack_given + (["--resume"] if resume else [])
        if clash:
            raise UsageError(
                f"--detector applies a saved detector, but {', '.join(clash)} belong to fitting one; drop them, "
                "or drop --detector to fit"
            )
        return _apply(checkpoint, detector, spec=spec, arch=arch, layer=layer, data=data, split=split, limit=limit,
                      batch_size=batch_size, device=device, seed=seed, format=format, output=output, quiet=quiet,
                      per_sample=per_sample, force=force, weight_norm=weight_norm)
    if force:
        raise UsageError("--force only applies with --detector (applying a saved detector)")
    if adversarial is not None:
        if attack_given:
            raise UsageError(f"--adversarial reads ready adversarials; {', '.join(attack_given)} would be ignored: drop them")
        if save_adv is not None:
            raise UsageError("--adversarial reads ready adversarials; --save-adv would only copy them: drop it")
        if adversarial in ("", "-"):
            raise UsageError("--adversarial needs a file name")
        if resume is not None:
            raise UsageError("--resume keeps the crafted adversarials of a run; with --adversarial nothing is crafted: drop it")
    if plot is not None:
        from flatcli.plots import check_plot_path, require_matplotlib

        check_plot_path(plot)
        require_matplotlib()

    from flatcli.attacks import PGD, PRESETS
    from flatcli.detection import DetectSettings

    settings = DetectSettings(
        method=(method or Method.stump).value,
        score=score.value if score is not None else None,
        folds=DEFAULT_FOLDS if folds is None else folds,
        seed=seed,
        only_successful=only_successful,
    )
    preset_name = preset.value if preset is not None else DEFAULT_PRESET
    pgd = None
    if adversarial is None:
        pgd = PGD.from_options(
            preset_name, norm=norm.value if norm is not None else None, eps=eps, alpha=alpha, steps=steps,
            random_start=random_start, restarts=restarts,
        )
    wn = (weight_norm or WeightNorm.squared).value

    import json

    import torch

    from flatcli import data as datamod
    from flatcli.detect import save_detector
    from flatcli.detection import attack_and_score, detect_figure, fit_detection, score_inputs

    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device=device)
    ds = common.load_data_for(loaded, data, split, limit)
    adv_ds = None
    adv_meta = None
    if adversarial is not None:
        adv_ds = datamod.load_data(f"tensors:{adversarial}", split, limit)
        datamod.check_compatible(adv_ds, loaded.spec.input_shape, loaded.num_classes)
        adv_meta = _attack_metadata(adv_ds)
        made_on = (adv_meta or {}).get("checkpoint_sha256")
        if made_on and made_on != loaded.checkpoint.sha256:
            common.note(f"note: the adversarials in {adversarial} were crafted on another checkpoint "
                        f"(sha256 {made_on[:12]}...): a transfer attack", quiet)
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "mode": "fit",
        "method": settings.method,
        "score": settings.score,
        "folds": settings.folds,
        "only_successful": only_successful,
        "weight_norm": wn,
        "adversarial": adversarial,
        "adversarial_metadata": adv_meta,
        "preset": preset_name if pgd is not None else None,
        "preset_values": PRESETS[preset_name] if pgd is not None else None,
        "attack": pgd.config() if pgd is not None else None,
        "save": save,
        "save_adv": save_adv,
        "plot": plot,
        "conventions": CONVENTIONS,
    }
    dist = common.distributed(dev)
    store = None
    if resume is not None and dist.is_main:
        from flatcli.detection import ScoreSet
        from flatcli.resume import ResumeStore, run_identity

        identity = run_identity(loaded, ds, dev, batch_size=batch_size, seed=seed, weight_norm=wn, **pgd.config())
        store = ResumeStore(resume, "detect", identity, {"ScoreSet": ScoreSet}, index_of=lambda r: r[0].index)
    if resume is not None:
        from flatcli.resume import hint_for

        interrupts.set_hint("no output file was written; " + hint_for(resume))
    elif pgd is not None:
        interrupts.set_hint("no output file was written; rerun with --resume DIR to keep finished batches across interruptions")
    with common.writer(
        format, output, command="detect", per_sample=per_sample, render_table=render_fit, enabled=dist.is_main
    ) as out:
        total = len(ds) + (len(adv_ds) if adv_ds is not None else 0)
        with common.progress_bar(total, "detect", quiet or not dist.is_main) as progress:
            if adv_ds is None:
                clean, adv, adv_tensors = attack_and_score(
                    loaded, ds, pgd, batch_size=batch_size, weight_norm=wn, seed=seed, device=dev,
                    keep_adv=save_adv is not None, progress=progress, dist=dist, store=store,
                )
                if store is not None and store.reused:
                    common.note(f"resumed: {store.reused} finished batch(es) read from {resume}", quiet)
            else:
                clean = score_inputs(loaded, ds, batch_size=batch_size, weight_norm=wn, device=dev, progress=progress, dist=dist)
                adv = score_inputs(loaded, adv_ds, batch_size=batch_size, weight_norm=wn, device=dev, progress=progress, dist=dist)
                adv_tensors = None
        if not dist.is_main:  # rank 0 fits and writes
            return
        outcome = fit_detection(clean, adv, settings)
        out.rows(outcome.rows)
        det = outcome.detector
        det.meta.update({
            "checkpoint": loaded.checkpoint.name,
            "checkpoint_sha256": loaded.checkpoint.sha256,
            "arch": loaded.spec.arch,
            "layer": loaded.layer,
            "weight_norm": wn,
            "data": ds.name,
            "split": split,
            "limit": limit,
            "attack": config["attack"],
            "adversarial": adversarial,
            "only_successful": only_successful,
        })
        det.meta["versions"] = {**det.meta.get("versions", {}), **common.versions()}
        if save_adv is not None and adv_tensors is not None:
            x_adv, y_adv, index = adv_tensors
            meta = {"flatrob.attack": json.dumps(
                {"checkpoint_sha256": loaded.checkpoint.sha256, "data": ds.name, "seed": seed, "targeted": None,
                 "scale": 1.0, "scale_bias": True, **pgd.config()}, sort_keys=True)}
            datamod.save_tensors(save_adv, x_adv, y_adv, index, metadata=meta)
        if plot is not None:
            what = (f"PGD-{pgd.norm} eps {pgd.eps:g}, alpha {pgd.alpha:g}, {pgd.steps} steps" if pgd is not None
                    else f"adversarials from {adversarial}")
            detect_figure(outcome, plot, title=f"{loaded.checkpoint.name} ({ds.name}): {what}")
        if save is not None:
            save_detector(save, det)
        out.finish(config, outcome.summary)


def _attack_metadata(ds) -> dict | None:
    """The ``flatrob.attack`` metadata of a ``--save-adv`` file (``None`` when absent or unreadable)."""
    import json

    text = ds.metadata.get("flatrob.attack")
    if not text:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _apply(checkpoint, detector_path, *, spec, arch, layer, data, split, limit, batch_size, device, seed, format,
           output, quiet, per_sample, force, weight_norm) -> None:
    from flatcli.detect import load_detector
    from flatcli.detection import apply_detection, check_detector

    det = load_detector(detector_path)  # a garbage file fails here, before any model is loaded
    det_wn = det.meta.get("weight_norm", "squared")
    if weight_norm is not None and weight_norm.value != det_wn:
        raise UsageError(
            f"--weight-norm {weight_norm.value} conflicts with the detector, fitted with --weight-norm {det_wn}; drop it"
        )
    import torch

    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer or det.meta.get("layer"), device=device)
    for line in check_detector(det, loaded, force=force):
        common.note(line, quiet)
    ds = common.load_data_for(loaded, data, split, limit)
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "mode": "apply",
        "detector": detector_path,
        "detector_checkpoint_sha256": det.meta.get("checkpoint_sha256"),
        "force": force,
        "method": det.method,
        "score": det.score,
        "weight_norm": det_wn,
        "conventions": {k: CONVENTIONS[k] for k in ("stump", "components", "score_column")},
    }
    dist = common.distributed(dev)
    with common.writer(
        format, output, command="detect", per_sample=per_sample, render_table=render_apply, enabled=dist.is_main
    ) as out:
        with common.progress_bar(len(ds), "detect", quiet or not dist.is_main) as progress:
            summary = apply_detection(det, loaded, ds, batch_size=batch_size, weight_norm=det_wn, device=dev,
                                      on_rows=out.rows, progress=progress, dist=dist)
        if not dist.is_main:
            return
        summary["checkpoint_match"] = det.meta.get("checkpoint_sha256") == loaded.checkpoint.sha256
        out.finish(config, summary)
        common.note(f"flagged {summary['n_flagged']} of {summary['n']} inputs ({summary['flagged_share']:.1%})",
                    quiet or format not in (Format.jsonl, Format.csv))
