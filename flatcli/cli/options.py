"""Options shared by every command, declared once (DESIGN.md §4)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from flatcli.cli import complete
from flatcli.inputs.data.forms import data_help
from flatcli.models.arch_forms import arch_help


def value(choice: Enum | None):
    """The string of a choice option (``None`` when the option was not given)."""
    return None if choice is None else choice.value


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class WeightNorm(str, Enum):
    squared = "squared"
    plain = "plain"


Checkpoint = Annotated[
    str,
    typer.Argument(help="safetensors checkpoint, or example:digits-cnn for the bundled example.", show_default=False),
]
Checkpoints = Annotated[
    Optional[list[str]],
    typer.Argument(help="safetensors checkpoint(s), or example:digits-cnn for the bundled example; several run one "
                   "after another in one process (one summary each).", show_default=False),
]
CheckpointsFrom = Annotated[
    Optional[str],
    typer.Option("--checkpoints-from", help="More checkpoints, one path per line (blank lines and # comments "
                 "skipped); - reads stdin.", metavar="FILE"),
]
FailFast = Annotated[
    bool, typer.Option("--fail-fast", help="With several checkpoints, stop at the first that fails and write nothing.")
]
TrendPlot = Annotated[
    Optional[str],
    typer.Option("--plot", help="With several checkpoints: draw the summary measures against the checkpoint order "
                 "to FILE (.png, .pdf, .svg).", metavar="FILE"),
]
SpecFile = Annotated[Optional[str], typer.Option("--spec", help="Layer spec (YAML); overrides the embedded spec.")]
Arch = Annotated[
    Optional[str],
    typer.Option("--arch", help=arch_help(), autocompletion=complete.arch),
]
TrustEmbeddedCode = Annotated[
    bool,
    typer.Option(
        "--trust-embedded-code",
        help="Let the checkpoint's embedded spec name a module.path:Class to import (it runs that module's code); "
        "without it only --arch or a --spec file may name code.",
    ),
]
Layer = Annotated[
    Optional[str],
    typer.Option(
        "--layer",
        help="Head layer (an nn.Linear), e.g. fc (default: spec, then the built-in's head).",
        autocompletion=complete.layer,
    ),
]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help=data_help(),
        autocompletion=complete.data,
    ),
]


class Interpolation(str, Enum):
    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"


# How the images of a --data string are read (flatcli.inputs.data.images): shared by every command with --data.
Resize = Annotated[
    Optional[int],
    typer.Option("--resize", help="Resize each image's shorter side to N pixels before the centre crop (default: spec, "
                 "else just covering the crop).", metavar="N", show_default=False),
]
Crop = Annotated[
    Optional[int],
    typer.Option("--crop", help="Centre-crop images to N x N (default: spec, else the model's input size).", metavar="N",
                 show_default=False),
]
InterpolationOpt = Annotated[
    Optional[Interpolation],
    typer.Option("--interpolation", help="Resizing filter: bilinear, bicubic or nearest (default: spec, else bilinear).",
                 show_default=False),
]
ImageColumn = Annotated[
    Optional[str],
    typer.Option("--image-column", help="hf: data: the image column (default: the one datasets.Image column).",
                 show_default=False),
]
LabelColumn = Annotated[
    Optional[str],
    typer.Option("--label-column", help="hf: data: the label column (default: the one datasets.ClassLabel column, "
                 "else the only integer column).", show_default=False),
]
Split = Annotated[str, typer.Option("--split", help="Data split: train, test or all (digits).", autocompletion=complete.split)]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N samples of the split.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Samples per batch; memory is bounded by it.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", autocompletion=complete.device)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed: same seed, same numbers.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format: table, json, jsonl or csv.")]
Output = Annotated[Optional[str], typer.Option("--output", "-o", help="Write the result to FILE (atomically); - is stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
ResumeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--resume",
        help="Keep finished batches in DIR (created if missing); rerunning with the same settings continues "
        "there and gives the same output as an uninterrupted run.",
        metavar="DIR",
    ),
]
PerSample = Annotated[bool, typer.Option("--per-sample", help="Include per-sample rows in json/table output.")]
WeightNormOpt = Annotated[
    WeightNorm,
    typer.Option("--weight-norm", help="Relative sharpness uses ||W||_F^2 (squared, the paper's proofs) or ||W||_F (plain, its code)."),
]
Scale = Annotated[float, typer.Option("--scale", help="Scale the head: W -> sW (and b -> sb unless --no-scale-bias).")]
ScaleBias = Annotated[bool, typer.Option("--scale-bias/--no-scale-bias", help="Scale the head's bias with its weight.")]

# Attack options, shared by attack, sweep-scale and detect. Values left unset come from --preset
# (each command has its default preset); see flatcli.attacks.PRESETS.


class Norm(str, Enum):
    linf = "linf"
    l2 = "l2"


class Preset(str, Enum):
    uncanny = "uncanny"
    basin = "basin"
    robust = "robust"


NormOpt = Annotated[Optional[Norm], typer.Option("--norm", help="Threat model: linf or l2 (default: from --preset).", show_default=False)]
Eps = Annotated[Optional[float], typer.Option("--eps", help="Radius of the eps-ball around each input (default: from --preset).", show_default=False)]
Alpha = Annotated[Optional[float], typer.Option("--alpha", help="Step size (default: from --preset).", show_default=False)]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Number of PGD steps (default: from --preset).", show_default=False)]
RandomStart = Annotated[
    bool, typer.Option("--random-start/--no-random-start", help="Start from a uniform point of the eps-ball (linf: box, l2: volume).")
]
Restarts = Annotated[int, typer.Option("--restarts", help="Random restarts; per sample the one with the highest final loss is kept.")]
PresetOpt = Annotated[
    Optional[Preset],
    typer.Option(
        "--preset",
        help="Paper settings: uncanny (PGD-linf, 10 steps, eps 8/255, alpha 2/255; §6.2), basin (PGD-l2, 25 steps, "
        "eps 0.025, alpha 0.001; §6.1), robust (PGD-l2, 50 steps, eps 0.5, alpha 0.01; D.2). Explicit options override it.",
        show_default=False,
    ),
]
SaveAdv = Annotated[
    Optional[str],
    typer.Option("--save-adv", help="Write the adversarials (x, y, index) as a tensors: safetensors FILE (with several "
                 "checkpoints a name with {stem} or {index}).", metavar="FILE"),
]
Takeoff = Annotated[float, typer.Option("--takeoff", help="Take-off threshold tau on the normalised loss, in (0, 1].")]


class AttackKind(str, Enum):
    pgd = "pgd"
    apgd = "apgd"
    square = "square"


class Loss(str, Enum):
    ce = "ce"
    cw = "cw"
    dlr = "dlr"


AttackOpt = Annotated[
    Optional[AttackKind],
    typer.Option("--attack", help="pgd (default), apgd (Auto-PGD: step-size halving, momentum) or square (gradient-free, "
                 "torchattacks' Square; --queries sets its budget).", show_default=False),
]
LossOpt = Annotated[
    Optional[Loss],
    typer.Option("--loss", help="Loss the attack ascends: ce (cross-entropy), cw (logit margin) or dlr (Croce & Hein's "
                 "difference-of-logits ratio); default ce, cw for square. Recording always reports the cross-entropy.",
                 show_default=False),
]
Queries = Annotated[
    Optional[int], typer.Option("--queries", help="Query budget per restart of --attack square (default 5000).", show_default=False)
]

# The second attack of sweep-scale (on each scaled model, appendix D.3); unset values: PGD-linf, 10 steps,
# eps 8/255, alpha 2/255 (the uncanny preset).
AttackNormOpt = Annotated[
    Optional[Norm], typer.Option("--attack-norm", help="Per-scale attack threat model: linf or l2 (default: linf).", show_default=False)
]
AttackEps = Annotated[Optional[float], typer.Option("--attack-eps", help="Per-scale attack radius (default: 8/255).", show_default=False)]
AttackAlpha = Annotated[Optional[float], typer.Option("--attack-alpha", help="Per-scale attack step size (default: 2/255).", show_default=False)]
AttackSteps = Annotated[Optional[int], typer.Option("--attack-steps", help="Per-scale attack PGD steps (default: 10).", show_default=False)]
AttackLoss = Annotated[
    Optional[Loss],
    typer.Option("--attack-loss", help="Loss of the per-scale attack: ce (default), cw or dlr.", show_default=False),
]


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


PrecisionOpt = Annotated[
    Precision,
    typer.Option("--precision", help="Forward pass precision (torch.autocast); closed-form measures stay float64."),
]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", help="Run convolutions in channels-last memory format (faster on GPUs).")]


# Earlier layers (paper Fig. 14), shared by sharpness and attack; see flatcli.runs.layers.


class LayerMethod(str, Enum):
    auto = "auto"
    exact = "exact"
    fisher_mc = "fisher-mc"
    hutchinson = "hutchinson"


Layers = Annotated[
    Optional[str],
    typer.Option("--layers", help="Comma-separated earlier layers whose trace and relative sharpness to measure (Fig. 14)."),
]
LayerMethodOpt = Annotated[
    LayerMethod,
    typer.Option(
        "--layer-method",
        help="How --layers are measured: exact (per sample, k backward passes), fisher-mc (per sample, labels drawn "
        "from p), hutchinson (data-set value, probes); auto: exact where the network is piecewise linear in the "
        "layer, else hutchinson.",
    ),
]
FisherSamples = Annotated[int, typer.Option("--fisher-samples", help="Labels drawn per sample for --layer-method fisher-mc (at least 2).")]
