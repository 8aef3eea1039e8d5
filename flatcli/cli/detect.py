"""``flatrob detect``: flag adversarial inputs by their sharpness (paper D.4) or the baselines beside it; fit +
cross-validate (and attack adaptively), save, or apply a saved detector (``--detector``)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import (
    Alpha, Arch, AttackOpt, BatchSize, Checkpoints, CheckpointsFrom, Crop, Data, Device, Eps, FailFast, Format,
    FormatOpt, ImageColumn, InterpolationOpt, LabelColumn, Layer, Limit, LossOpt, NormOpt, Output, PerSample,
    PresetOpt, Queries, Quiet, RandomStart, Resize, Restarts, ResumeOpt, SaveAdv, Seed, SpecFile, Split, Steps,
    TrustEmbeddedCode, value, WeightNorm,
)
from flatcli.cli.tables.detect import render_apply, render_fit


class Method(str, Enum):
    stump = "stump"
    components = "components"
    mahalanobis = "mahalanobis"
    profile = "profile"
    ensemble = "ensemble"
    all = "all"


class Score(str, Enum):
    relative_sharpness = "relative_sharpness"
    trace_h = "trace_h"
    confidence = "confidence"
    relative_flatness_full = "relative_flatness_full"


MethodOpt = Annotated[
    Optional[Method],
    typer.Option("--method", help="stump (threshold on one score; default), components (logistic regression on "
                 "the logs of sum_j p_j(1-p_j), ||phi||^2, ||W phi||^2), mahalanobis (threshold on the minimum "
                 "Mahalanobis distance of phi to the class means of --fit-data), profile (logistic regression on "
                 "the curvature profile: sharpness, loss, confidence, ||phi|| at the input and after each probe step "
                 "of gradient ascent on the predicted class's loss), ensemble (logistic regression on all of them), "
                 "or all (every method on the same folds; the best is kept).", show_default=False),
]
FitData = Annotated[
    Optional[str],
    typer.Option("--fit-data", help="Clean labelled data (a --data source, its train split) for the class means and "
                 "covariance of mahalanobis, ensemble and all (default: the train split of --data).",
                 metavar="SOURCE"),
]
ProbeSteps = Annotated[
    Optional[int],
    typer.Option("--probe-steps", help="Probe steps of the curvature profile, 1 to 3 (default 3).", show_default=False),
]
ProbeSize = Annotated[
    Optional[float],
    typer.Option("--probe-size", help="Size of a probe step (linf, inputs in [0, 1]; default 0.03).",
                 show_default=False),
]
AdaptiveOpt = Annotated[
    bool,
    typer.Option("--adaptive", help="Also attack model and detector together (PGD with the attack's settings on the "
                 "cross-entropy minus the detector's normalised decision) and report the detector against it."),
]
AdaptiveWeight = Annotated[
    Optional[float],
    typer.Option("--adaptive-weight", help="Weight of the detector's decision in the adaptive attack (default 3).",
                 show_default=False),
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
Save = Annotated[Optional[str], typer.Option("--save", help="Write the fitted detector (JSON) to FILE (with several checkpoints a "
                                                   "name with {stem} or {index}).", metavar="FILE")]
Plot = Annotated[
    Optional[str],
    typer.Option("--plot", help="Draw score histograms of clean vs adversarial inputs with the threshold, and the ROC "
                 "curve, to FILE (.png, .pdf, .svg); with several checkpoints, the summary measures against the "
                 "checkpoint order.", metavar="FILE"),
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


@app.command()
def detect(
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
    method: MethodOpt = None,
    score: ScoreOpt = None,
    folds: Folds = None,
    only_successful: OnlySuccessful = False,
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
    adversarial: Adversarial = None,
    fit_data: FitData = None,
    probe_steps: ProbeSteps = None,
    probe_size: ProbeSize = None,
    adaptive: AdaptiveOpt = False,
    adaptive_weight: AdaptiveWeight = None,
    save: Save = None,
    save_adv: SaveAdv = None,
    plot: Plot = None,
    detector: DetectorFile = None,
    force: Force = False,
    weight_norm: WeightNormMaybe = None,
    resume: ResumeOpt = None,
) -> None:
    """Detect adversarial inputs by their sharpness and its baselines: fit and cross-validate (D.4), or apply a saved detector."""
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    common.check_outputs(output=output, save=save, save_adv=save_adv, plot=plot)
    from flatcli import api

    render = render_apply if detector is not None else render_fit
    with common.writer(format, output, command="detect", per_sample=per_sample, render_table=render) as out:
        with common.progress_bar("detect", quiet) as progress:
            result = api.detect(
                common.models(checkpoint, checkpoints_from), data, checkpoints_from=checkpoints_from,
                fail_fast=fail_fast, on_error=common.checkpoint_error, spec=spec, arch=arch, layer=layer, split=split,
                limit=limit, batch_size=batch_size, device=device, seed=seed,
                resize=resize, crop=crop, interpolation=value(interpolation), image_column=image_column,
                label_column=label_column, method=value(method), score=value(score), folds=folds,
                only_successful=only_successful, preset=value(preset), attack=value(attack_kind), loss=value(loss),
                norm=value(norm), eps=eps, alpha=alpha, steps=steps, queries=queries, random_start=random_start,
                restarts=restarts, adversarial=adversarial, fit_data=fit_data,
                probe_steps=probe_steps, probe_size=probe_size, adaptive=adaptive, adaptive_weight=adaptive_weight,
                save=save,
                save_adv=save_adv, plot=plot, detector=detector, force=force, weight_norm=value(weight_norm),
                resume=resume, samples=False, on_rows=out.rows, progress=progress,
                trust_embedded_code=trust_embedded_code,
            )
        common.finish(out, result, quiet)
    for s in common.summaries(result) if detector is not None else []:
        common.note(f"flagged {s['n_flagged']} of {s['n']} inputs ({s['flagged_share']:.1%})",
                    quiet or format not in (Format.jsonl, Format.csv))
    common.exit_status(result)
