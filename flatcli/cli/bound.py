"""``flatrob bound``: the certified radius of Proposition 8/9, from numbers, sharpness JSON or a checkpoint."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import TrendPlot
from flatcli.cli.params import expand
from flatcli.cli.tables.bound import render_checkpoint, render_numbers
from flatcli.options import CheckpointListOptions, DataOptions, ModelOptions, OutputOptions, RunOptions
from flatcli.options.bound import BoundChecks


def _number(flag: str, help: str, *short: str):
    return Annotated[Optional[str], typer.Option(flag, *short, help=help, show_default=False)]


Epsilon = _number("--epsilon", "Allowed loss increase epsilon > 0; a comma-separated list gives one row each.")
Kappa = _number("--kappa", "Relative sharpness ||W||_F^2 Tr(H) (numbers mode; list allowed).")
Lipschitz = _number("--lipschitz", "Lipschitz constant of phi: a number (list allowed), or with a checkpoint upper "
                    "(sound, default) or local (estimate).", "-L")
R = _number("--r", "Lower bound r > 0 on ||phi(x)|| (numbers mode; list allowed).")
Classes = _number("--classes", "Number of classes k (numbers mode; list allowed).", "-k")
Features = _number("--features", "Feature dimension m (numbers mode; list allowed).", "-m")
Grad = _number("--grad", "First-order term g = ||W||_F ||grad_W loss||_F >= 0 (default 0 in numbers mode; list "
               "allowed).")


@app.command()
@expand
def bound(
    checkpoint: Annotated[
        Optional[list[str]],
        typer.Argument(help="Checkpoint(s) (or example:digits-cnn) to measure everything from, several one after "
                       "another; omit for numbers-only mode.", show_default=False),
    ] = None,
    checkpoints: CheckpointListOptions = None,
    plot: TrendPlot = None,
    epsilon: Epsilon = None,
    kappa: Kappa = None,
    lipschitz: Lipschitz = None,
    r: R = None,
    classes: Classes = None,
    features: Features = None,
    grad: Grad = None,
    at_minimum: Annotated[bool, typer.Option("--at-minimum", help="Drop the first-order term, as the paper does (it "
                                             "assumes a minimum).")] = False,
    from_json: Annotated[Optional[str], typer.Option("--from-json", help="Take kappa, r, k, m (and g) from `flatrob "
                                                     "sharpness --format json` output; - reads stdin.",
                                                     show_default=False)] = None,
    checks: BoundChecks = None,
    model: ModelOptions = None,
    data: DataOptions = None,
    run: RunOptions = None,
    output: OutputOptions = None,
) -> None:
    """Certified radius of Proposition 8/9: from numbers, from sharpness JSON, or measured from a checkpoint.

    \b
    flatrob bound --kappa 0.8 --lipschitz 12 --r 3.1 --classes 10 --features 512 --epsilon 0.1
    flatrob sharpness m.safetensors --format json | flatrob bound --from-json - --lipschitz 12 --epsilon 0.1
    flatrob bound example:digits-cnn --epsilon 0.1 --check
    """
    given = {"kappa": kappa, "lipschitz": lipschitz, "r": r, "classes": classes, "features": features, "grad": grad,
             "epsilon": epsilon}
    if not checkpoint and checkpoints.checkpoints_from is None:  # numbers-only mode: no model, no torch
        from flatcli.errors import OptionError
        from flatcli.runs.bound_numbers import radius

        if plot is not None:
            raise OptionError("plot", "{} draws the measures of several checkpoints; numbers-only mode has no figure")
        common.check_outputs(output=output.output)
        result = radius(given, from_json=from_json, at_minimum=at_minimum,
                        model_options=[n for group in (model, data, run, checks) for n in group.given()])
        common.notes(result, output.quiet)
        with common.writer(output, command="bound", render_table=render_numbers) as out:
            out.rows(result.samples)
            out.finish(result.config, result.summary)
        return
    result = common.call("bound", checkpoint, checkpoints, output, render_checkpoint, model, data, run, checks,
                         plot=plot, from_json=from_json, at_minimum=at_minimum, **given)
    for summary in common.summaries(result):
        _report_check(summary, output.quiet)
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
