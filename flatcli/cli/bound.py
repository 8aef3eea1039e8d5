"""``flatrob bound``: the certified radius of Prop. 8/9, from numbers, from sharpness JSON or a checkpoint.

Numbers-only mode (no checkpoint, no ``--from-json``) must answer fast in shell loops: it imports
numpy and :mod:`flatcli.runs.bound_numbers`, never torch. Keep this module's top-level imports light;
torch is imported by the API only when a checkpoint is measured (``tests/cli/test_bound.py`` checks it).
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import (
    Arch, CheckpointsFrom, Crop, Data, Device, FailFast, Format, FormatOpt, ImageColumn, InterpolationOpt, LabelColumn,
    Layer, Limit, LossOpt, Output, PerSample, Quiet, Resize, Seed, SpecFile, TrendPlot, TrustEmbeddedCode, value,
)
from flatcli.cli.tables.bound import render_checkpoint, render_numbers
from flatcli.errors import UsageError


@app.command()
def bound(
    checkpoint: Annotated[
        Optional[list[str]],
        typer.Argument(help="Checkpoint(s) (or example:digits-cnn) to measure everything from, several one after another; "
                       "omit for numbers-only mode.", show_default=False),
    ] = None,
    checkpoints_from: CheckpointsFrom = None,
    fail_fast: FailFast = False,
    plot: TrendPlot = None,
    epsilon: Annotated[Optional[str], typer.Option("--epsilon", help="Allowed loss increase epsilon > 0; a comma-separated list gives one row each.", show_default=False)] = None,
    kappa: Annotated[Optional[str], typer.Option("--kappa", help="Relative sharpness ||W||_F^2 Tr(H) (numbers mode; list allowed).", show_default=False)] = None,
    lipschitz: Annotated[Optional[str], typer.Option("--lipschitz", "-L", help="Lipschitz constant of phi: a number (list allowed), or with a checkpoint upper (sound, default) or local (estimate).", show_default=False)] = None,
    r: Annotated[Optional[str], typer.Option("--r", help="Lower bound r > 0 on ||phi(x)|| (numbers mode; list allowed).", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", "-k", help="Number of classes k (numbers mode; list allowed).", show_default=False)] = None,
    features: Annotated[Optional[str], typer.Option("--features", "-m", help="Feature dimension m (numbers mode; list allowed).", show_default=False)] = None,
    grad: Annotated[Optional[str], typer.Option("--grad", help="First-order term g = ||W||_F ||grad_W loss||_F >= 0 (default 0 in numbers mode; list allowed).", show_default=False)] = None,
    at_minimum: Annotated[bool, typer.Option("--at-minimum", help="Drop the first-order term, as the paper does (it assumes a minimum).")] = False,
    from_json: Annotated[Optional[str], typer.Option("--from-json", help="Take kappa, r, k, m (and g) from `flatrob sharpness --format json` output; - reads stdin.", show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="Attack each sample with PGD-l2 inside its certified radius and report the largest loss increase.")] = False,
    check_steps: Annotated[Optional[int], typer.Option("--check-steps", help="PGD-l2 steps per sample for --check [default: 20].", show_default=False)] = None,
    loss: LossOpt = None,
    local_iters: Annotated[Optional[int], typer.Option("--local-iters", help="Power iterations per batch for the local Lipschitz estimate [default: 50].", show_default=False)] = None,
    spec: SpecFile = None,
    arch: Arch = None,
    trust_embedded_code: TrustEmbeddedCode = False,
    layer: Layer = None,
    data: Data = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Data split: train, test or all (digits) [default: test].", show_default=False)] = None,
    limit: Limit = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Samples per batch; memory is bounded by it [default: 256].", show_default=False)] = None,
    device: Device = "auto",
    seed: Seed = 0,
    resize: Resize = None,
    crop: Crop = None,
    interpolation: InterpolationOpt = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    per_sample: PerSample = False,
    format: FormatOpt = Format.table,
    output: Output = None,
    quiet: Quiet = False,
) -> None:
    """Certified radius of Proposition 8/9: from numbers, from sharpness JSON, or measured from a checkpoint.

    \b
    flatrob bound --kappa 0.8 --lipschitz 12 --r 3.1 --classes 10 --features 512 --epsilon 0.1
    flatrob sharpness m.safetensors --format json | flatrob bound --from-json - --lipschitz 12 --epsilon 0.1
    flatrob bound example:digits-cnn --epsilon 0.1 --check
    """
    model = common.models(checkpoint, checkpoints_from, required=False)
    if model is not None and from_json is not None:
        raise UsageError("give either a checkpoint or --from-json, not both")
    common.check_common(limit=limit, batch_size=batch_size, output=output)
    if model is None:
        if plot is not None:
            raise UsageError("--plot draws the measures of several checkpoints; numbers-only mode has no figure")
        from flatcli.runs.bound_numbers import radius

        model_options = {
            "--check": check, "--check-steps": check_steps is not None, "--local-iters": local_iters is not None,
            "--loss": loss is not None, "--spec": spec, "--arch": arch, "--layer": layer, "--data": data, "--split": split,
            "--limit": limit is not None, "--batch-size": batch_size is not None, "--per-sample": per_sample,
            "--resize": resize is not None, "--crop": crop is not None, "--interpolation": interpolation is not None,
            "--image-column": image_column is not None, "--label-column": label_column is not None,
        }
        given = {"kappa": kappa, "lipschitz": lipschitz, "r": r, "classes": classes, "features": features,
                 "grad": grad, "epsilon": epsilon}
        result = radius(given, from_json=from_json, at_minimum=at_minimum,
                        model_options={k: bool(v) for k, v in model_options.items()})
        common.notes(result, quiet)
        with common.writer(format, output, command="bound", per_sample=False, render_table=render_numbers) as out:
            out.rows(result.samples)
            out.finish(result.config, result.summary)
        return
    from flatcli import api

    with common.writer(format, output, command="bound", per_sample=per_sample, render_table=render_checkpoint) as out:
        with common.progress_bar("bound", quiet) as progress:
            result = api.bound(
                model, data, checkpoints_from=checkpoints_from, fail_fast=fail_fast, on_error=common.checkpoint_error,
                plot=plot, epsilon=epsilon, lipschitz=lipschitz, kappa=kappa, r=r, classes=classes,
                features=features, grad=grad, at_minimum=at_minimum, from_json=from_json, check=check,
                check_steps=check_steps, local_iters=local_iters, loss=value(loss), spec=spec, arch=arch, layer=layer,
                split=split, limit=limit, batch_size=batch_size, device=device, seed=seed,
                resize=resize, crop=crop, interpolation=value(interpolation), image_column=image_column,
                label_column=label_column, samples=False, on_rows=out.rows,
                progress=progress,
                trust_embedded_code=trust_embedded_code,
            )
        common.finish(out, result, quiet)
    for summary in common.summaries(result):
        _report_check(summary, quiet)
    common.exit_status(result)


def _report_check(summary: dict, quiet: bool) -> None:
    """A violated bound is printed loudly on stderr (even with --quiet); a passed check is a note."""
    chk = summary.get("check")
    if not chk:
        return
    worst = max(chk["per_epsilon"], key=lambda p: p["max_increase_over_epsilon"])
    if chk["violations"]:
        lip = summary["lipschitz"]
        what = "a sound upper bound on L" if lip["certificate"] else f"a {lip['kind']} L (not a certificate)"
        print(
            f"BOUND VIOLATED: {chk['violations']} sample(s) lost more than epsilon inside their certified radius "
            f"with {what} (largest increase {worst['max_loss_increase']:.4g} at epsilon {worst['epsilon']:.4g}, "
            f"sample {worst['worst_index']})",
            file=sys.stderr,
        )
        for item in chk["broken_assumptions"]:
            print(f"  broken assumption: {item}", file=sys.stderr)
        print(f"  {'also: ' if chk['broken_assumptions'] else 'no measured assumption is broken; '}{chk['caveat']}", file=sys.stderr)
    else:
        common.note(
            f"check: no sample's loss rose by more than epsilon inside its certified radius "
            f"(largest increase {worst['max_loss_increase']:.3g} = {worst['max_increase_over_epsilon']:.3g} x epsilon)",
            quiet,
        )
