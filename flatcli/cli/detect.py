"""``flatrob detect``: flag adversarial inputs by their sharpness (paper D.4) or the baselines beside it; fit +
cross-validate (and attack adaptively), save, or apply a saved detector (``--detector``); GCG suffixes on a
language model's prompts beside the perplexity filter."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flatcli.cli import common
from flatcli.cli.app import app
from flatcli.cli.options import Checkpoints, SaveAdv
from flatcli.cli.params import expand
from flatcli.cli.tables.detect import render_apply, render_fit
from flatcli.cli.tables.lm_detect import render_suffixes
from flatcli.options import (
    AttackOptions, CheckpointListOptions, DataOptions, ModelOptions, OutputOptions, ResumeOptions, RunOptions,
    WeightNormOptions,
)
from flatcli.options.detect import DetectOptions
from flatcli.options.lm import GCGOptions, LanguageModelOptions, PromptOptions


def _file(flag: str, help: str, metavar: str = "FILE"):
    return Annotated[Optional[str], typer.Option(flag, help=help, metavar=metavar)]


Adversarial = _file("--adversarial", "Read the adversarials from a tensors safetensors FILE (as `attack --save-adv` "
                    "writes) instead of attacking; --limit applies to it too.")
FitData = _file("--fit-data", "Clean labelled data (a --data source, its train split) for the class means and "
                "covariance of mahalanobis, ensemble and all (default: the train split of --data).",
                "SOURCE")
Save = _file("--save", "Write the fitted detector (JSON) to FILE (with several checkpoints a name with {stem} or "
             "{index}).")
Plot = _file("--plot", "Draw score histograms of clean vs adversarial inputs with the threshold, and the ROC curve, "
             "to FILE (.png, .pdf, .svg); with several checkpoints, the summary measures against the checkpoint "
             "order.")
Detector = _file("--detector", "Apply a saved detector to --data: rows index, score, flagged and the flagged "
                 "share.")


@app.command()
@expand
def detect(
    checkpoint: Checkpoints = None,
    checkpoints: CheckpointListOptions = None,
    model: ModelOptions = None,
    data: DataOptions = None,
    run: RunOptions = None,
    output: OutputOptions = None,
    detection: DetectOptions = None,
    attack: AttackOptions = None,
    adversarial: Adversarial = None,
    fit_data: FitData = None,
    save: Save = None,
    save_adv: SaveAdv = None,
    plot: Plot = None,
    detector: Detector = None,
    force: Annotated[bool, typer.Option("--force", help="Apply a detector fitted on another checkpoint or layer "
                                        "anyway.")] = False,
    head: WeightNormOptions = None,
    resume: ResumeOptions = None,
    gcg: GCGOptions = None,
    prompt: PromptOptions = None,
    lm: LanguageModelOptions = None,
) -> None:
    """Detect adversarial inputs by their sharpness and its baselines: fit and cross-validate (D.4), or apply a saved detector; GCG suffixes on a language model's prompts, beside the perplexity filter."""
    render = render_apply if detector is not None else _render_fit
    result = common.call("detect", checkpoint, checkpoints, output, render, model, data, run, detection, attack, head,
                         gcg, prompt, lm, adversarial=adversarial, fit_data=fit_data, save=save, save_adv=save_adv, plot=plot,
                         detector=detector, force=force, resume=resume.resume)
    for s in common.summaries(result) if detector is not None else []:
        common.note(f"flagged {s['n_flagged']} of {s['n']} inputs ({s['flagged_share']:.1%})",
                    output.quiet or output.format not in ("jsonl", "csv"))
    common.exit_status(result)


def _render_fit(stream, summary: dict, samples: list[dict] | None) -> None:
    """The fit's tables: a language model's GCG suffixes (the perplexity filter beside), or images."""
    (render_suffixes if "auroc" in summary else render_fit)(stream, summary, samples)
