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
    epsilon: _number("--epsilon", "Allowed loss increase epsilon > 0; a comma-separated list gives one row each.") = None,
    kappa: _number("--kappa", "Relative sharpness ||W||_F^2 Tr(H) (numbers mode; list allowed).") = None,
    lipschitz: _number("--lipschitz", "Lipschitz constant of phi: a number (list allowed), or with a checkpoint upper "
                       "(sound, default) or local (estimate).", "-L") = None,
    r: _number("--r", "Lower bound r > 0 on ||phi(x)|| (numbers mode; list allowed).") = None,
    classes: _number("--classes", "Number of classes k (numbers mode; list allowed).", "-k") = None,
    features: _number("--features", "Feature dimension m (numbers mode; list allowed).", "-m") = None,
    grad: _number("--grad", "First-order term g = ||W||_F ||grad_W loss||_F >= 0 (default 0 in numbers mode; list "
                  "allowed).") = None,
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
    numbers_only = not checkpoint and checkpoints.checkpoints_from is None

    def numbers_rows(out, result):
        if numbers_only:
            out.rows(result.samples)

    result = common.call("bound", checkpoint, checkpoints, output, render_numbers if numbers_only else render_checkpoint,
                         model, data, run, checks, rows=not numbers_only, required=False, before_finish=numbers_rows,
                         plot=plot, epsilon=epsilon, lipschitz=lipschitz, kappa=kappa, r=r, classes=classes,
                         features=features, grad=grad, at_minimum=at_minimum, from_json=from_json)
    for summary in common.summaries(result) if not numbers_only else []:
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
