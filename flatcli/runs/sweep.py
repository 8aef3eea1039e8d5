"""``flatrob sweep-scale``: flatten the network by scaling its head (paper §6.1, D.3).

Scaling the head by ``s`` (``W -> sW``, ``b -> sb`` unless the bias is kept) changes nothing before the
head, so the features ``phi`` of any input are the same at every scale and only
``logits = s W phi (+ s) b`` change. Two parts, both streamed per batch:

1. Fixed trajectories (§6.1, Fig. 2). PGD (default PGD-l2, 25 steps, eps 0.025, alpha 0.001) runs once
   on the *unscaled* model with ``record=True``: the features of every iterate ``x_0 .. x_T`` come from
   the attack's own forward passes. Every scale is then evaluated from those cached features with the
   closed forms of :func:`flatcli.core.curvature.head_measures` (float64): loss along the trajectory, loss
   increase ``l(x_T) - l(x_clean)``, take-off step and basin width (:func:`flatcli.core.trajectories.takeoff`),
   clean accuracy and clean relative sharpness (:func:`flatcli.core.head_scaling.evaluate_scales`). No
   forward pass of the feature extractor per scale.
2. Per-scale attack (D.3, Fig. 13). For each scale, PGD (default PGD-linf, 10 steps, eps 8/255,
   alpha 2/255) attacks the *scaled* model; robust accuracy is measured at that scale. The s=1
   adversarials are evaluated at every scale (transfer) from their cached features. With the bias
   scaled, scaling cannot change a prediction, so transfer accuracy is the same at every scale,
   while robust accuracy rises with ``s``: the float32 softmax saturates, the input gradient
   vanishes, and a first-order attack stalls (gradient masking). The diagnostics of each scale: the
   share of first-step input gradients that vanish, the same PGD on the margin loss ``cw`` (whose
   steps do not depend on ``s``), with ``square`` the gradient-free Square attack, and the verdict of
   :func:`flatcli.core.masking.masking_verdict`.

Only per-sample scalars (one per sample and scale) and a few example trajectories (for the figures)
are kept; rows go out per batch through ``on_rows``.

NaN/Inf (in the logits or gradients of either attack) is caught per sample and scale with
:func:`flatcli.core.trajectories.finite_samples`, as ``flatrob attack`` does: a sample is ``nonfinite`` at scale
``s`` when its fixed-trajectory losses or clean measures at ``s``, its distances, its adversarial of the
attack at ``s`` or the s=1 adversarial it is transferred from are not finite. It is flagged in its row,
counted in that scale's record (``nonfinite``; the summary's ``nonfinite`` counts samples flagged at any
scale) and left out of that scale's means, medians and rates (and of the Spearman correlation when
flagged at s=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flatcli.core.curvature import WEIGHT_NORMS, head_measures
from flatcli.core.head_scaling import Scaling, evaluate_scales
from flatcli.core.masking import DEFAULT_THRESHOLD, masking_verdict
from flatcli.core.attacks import DEFAULT_QUERIES, PGD, PRESETS, Square, batch_generator
from flatcli.core.statistics import censored_median, spearman
from flatcli.core.trajectories import finite_samples
from flatcli.errors import OptionError, UsageError
from flatcli.options import PGDOptions, ScalingOptions, SpeedOptions, TakeoffOptions
from flatcli.options.calls import chosen_of
from flatcli.options.sweep import DEFAULT_SCALES, SweepOptions
from flatcli.models.head import HeadSplit
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runs.sanity import checked, degenerate_attack
from flatcli.runtime import interrupts
from flatcli.runtime.loop import RunContext, each_batch, resumed_note
from flatcli.runtime.precision import PRECISIONS, autocast

#: The paper's §6.1 scales (Fig. 2).

#: Keys of each record of ``summary["scales"]`` (pinned by a contract test).
SCALE_KEYS = (
    "scale", "clean_accuracy", "sharpness_mean", "sharpness_median", "loss_increase_mean", "loss_increase_median",
    "basin_width_median", "censored", "nonfinite", "robust_accuracy", "transfer_accuracy", "robust_accuracy_cw",
    "robust_accuracy_square", "zero_grad_fraction", "masking", "masking_reason",
)
#: Keys of the per-sample rows (one per sample and scale), in order.
SAMPLE_KEYS = (
    "index", "label", "scale", "clean_pred", "clean_loss", "clean_sharpness", "adv_loss", "loss_increase",
    "takeoff_step", "basin_width", "censored", "final_dist_l2", "robust_pred", "transfer_pred", "robust_pred_cw",
    "robust_pred_square", "zero_grad", "nonfinite",
)


CONVENTIONS = {
    "scaling": "W -> sW, and b -> sb when scale_bias; phi (everything before the head) is unchanged",
    "trajectories": "one PGD run per sample on the unscaled model; every scale is evaluated on the features "
    "of its iterates, cached from the attack's own forward passes (closed forms in float64)",
    "clean_accuracy": "accuracy of the scaled model on the clean inputs",
    "sharpness_mean": "mean relative sharpness of the scaled head at the clean inputs (ruled by a few near-tie "
    "samples whose sharpness grows like s^2)",
    "sharpness_median": "median relative sharpness of the scaled head at the clean inputs",
    "loss_increase": "loss of the scaled model at the final iterate x_T minus at the clean input",
    "takeoff": "first t with (l_t - l_0)/(max l - l_0) >= tau on the scaled model's losses; width ||x_{t*-1} - x_clean||_2; "
    "censored if max l - l_0 <= 1e-6",
    "basin_width_median": "median over all samples, censored widths counted as wider than every measured one "
    "(they are >= the final distance); null when the median falls on a censored sample",
    "robust_accuracy": "accuracy of the scaled model at the final iterate of the per-scale attack run on that scaled model",
    "transfer_accuracy": "accuracy of the scaled model on the per-scale attack's adversarials crafted at s=1",
    "robust_accuracy_cw": "the per-scale attack with the margin loss max_{j != y} z_j - z_y (cw), at that scale",
    "robust_accuracy_square": "torchattacks' Square (margin loss, the per-scale attack's norm and eps, --queries per "
    "restart) at that scale; null without --square",
    "zero_grad_fraction": "share of samples whose input gradient in the per-scale attack's first step is zero or "
    "underflows (every component below float32's smallest normal number)",
    "masking": "true when robust_accuracy exceeds robust_accuracy_cw, robust_accuracy_square or transfer_accuracy "
    "by more than masking_threshold, or zero_grad_fraction > 0.5; masking_reason lists the signs found",
    "spearman_width_sharpness": "Spearman rank correlation (average ranks for ties) of basin width and clean "
    "relative sharpness at s=1, over uncensored samples",
    "nonfinite": "a sample whose logits or gradients turn NaN/Inf at scale s (fixed trajectory, its per-scale attack, "
    "or the s=1 adversarial transferred to s) is flagged (nonfinite) in its row at s, counted in that scale's "
    "record and left out of its means, medians and rates (and of the Spearman correlation if flagged at s=1); "
    "summary.nonfinite counts samples flagged at any scale",
}

#: The fixed trajectories' default preset (§6.1) and the per-scale attack's (D.3: PGD-linf, 10 steps, 8/255, 2/255).
TRAJECTORY_PRESET = "basin"
ATTACK_PRESET = "uncanny"


def default_trajectory() -> PGD:
    return PGD.from_options(TRAJECTORY_PRESET)


def default_attack() -> PGD:
    return PGD.from_options(ATTACK_PRESET)


@dataclass
class SweepSettings:
    """What to sweep. ``trajectory``: the fixed-trajectory attack (on the unscaled model; its unset
    options came from ``preset``); ``attack``: the per-scale attack, or ``None`` to skip part 2.
    ``examples``: how many trajectories (the first ones of the data) keep their whole per-step loss at
    every scale, for the figures. Ranges are checked on construction."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    trajectory: PGD = field(default_factory=default_trajectory)
    attack: PGD | None = field(default_factory=default_attack)
    preset: str = TRAJECTORY_PRESET
    scale_bias: bool = True
    weight_norm: str = "squared"
    takeoff: float = 0.1  # tau
    examples: int = 32
    precision: str = "fp32"  # the network's forward/backward under autocast; closed forms stay float64
    channels_last: bool = False
    square: Square | None = None  # the gradient-free check per scale (--square)
    masking_threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        self.scales = check_scales(self.scales)
        if not (math.isfinite(self.masking_threshold) and 0 <= self.masking_threshold < 1):
            raise OptionError("masking_threshold", f"{{}} must be in [0, 1), got {self.masking_threshold}")
        if self.square is not None and self.attack is None:
            raise OptionError(("square", "!attack_each_scale"), "{} runs with the per-scale attack, which {} skips; "
                              "drop one or the other")
        if not 0 < self.takeoff <= 1:
            raise OptionError("takeoff", f"{{}} must be in (0, 1], got {self.takeoff}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise OptionError("weight_norm", f"{{}} must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.precision not in PRECISIONS:
            raise OptionError("precision", f"{{}} must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.examples < 0:
            raise UsageError(f"examples must be 0 or more, got {self.examples}")

    @classmethod
    def from_options(cls, **options) -> "SweepSettings":
        """The settings of keyword options, as the API takes them (``scales="1,10", steps=3, ...``)."""
        return cls.from_groups(chosen_of(options, PGDOptions, ScalingOptions, SpeedOptions, TakeoffOptions,
                                         SweepOptions))

    @classmethod
    def from_groups(cls, chosen) -> "SweepSettings":
        """The settings of one call's option groups (:mod:`flatcli.options`): both attacks from their presets with
        every given option applied; ``square`` adds the Square attack per scale (``queries`` per restart)."""
        sweep, attack, head, speed = chosen.sweep, chosen.attack, chosen.head, chosen.speed
        per_scale_options = ("attack_norm", "attack_eps", "attack_alpha", "attack_steps", "attack_loss")
        if attack.queries is not None and not sweep.square:
            raise OptionError(("queries", "square", "queries"), "{} is the budget of {}; add it or drop {}")
        if not sweep.attack_each_scale:
            named = [name for name in (*per_scale_options, "square") if name in sweep.given()]
            if named:
                raise OptionError((*named, "!attack_each_scale"), ", ".join("{}" for _ in named) +
                                  " set the per-scale attack, which {} skips; drop one or the other")
        preset = attack.preset or TRAJECTORY_PRESET
        trajectory = PGD.from_options(preset, norm=attack.norm, eps=attack.eps, alpha=attack.alpha, steps=attack.steps,
                                      random_start=attack.random_start, restarts=attack.restarts)
        per_scale = None
        if sweep.attack_each_scale:
            try:
                per_scale = PGD.from_options(ATTACK_PRESET, norm=sweep.attack_norm, eps=sweep.attack_eps,
                                             alpha=sweep.attack_alpha, steps=sweep.attack_steps, loss=sweep.attack_loss)
            except OptionError as exc:  # PGD names eps, steps, ...: here they are attack_eps, ...
                raise OptionError(tuple(f"attack_{name}" for name in exc.options), exc.problem) from None
        gradient_free = None
        if sweep.square and per_scale is not None:
            gradient_free = Square(norm=per_scale.norm, eps=per_scale.eps,
                                   steps=DEFAULT_QUERIES if attack.queries is None else attack.queries)
        return cls(scales=sweep.scales, trajectory=trajectory, attack=per_scale, preset=preset, square=gradient_free,
                   scale_bias=head.scale_bias, weight_norm=head.norm, takeoff=chosen.takeoff.takeoff,
                   precision=speed.precision, channels_last=speed.channels_last,
                   masking_threshold=sweep.masking_threshold)

    def scaling(self, scale: float) -> Scaling:
        return Scaling(float(scale), self.scale_bias)

    def identity(self) -> dict:
        """What the per-batch numbers depend on (the resume identity)."""
        return {
            "scales": list(self.scales), "scale_bias": self.scale_bias, "weight_norm": self.weight_norm,
            "takeoff_tau": self.takeoff, "trajectory": self.trajectory.config(),
            "attack": self.attack.config() if self.attack is not None else None, "precision": self.precision,
            "channels_last": self.channels_last, "examples": self.examples,
            "square": self.square.config() if self.square is not None else None,
        }

    def config(self) -> dict:
        return {
            "scales": list(self.scales),
            "scale_bias": self.scale_bias,
            "weight_norm": self.weight_norm,
            "takeoff_tau": self.takeoff,
            "trajectory": {"preset": self.preset, "preset_values": PRESETS[self.preset], **self.trajectory.config()},
            "attack_each_scale": self.attack is not None,
            "attack": self.attack.config() if self.attack is not None else None,
            "attack_cw": self.margin_attack.config() if self.attack is not None else None,
            "square": self.square.config() if self.square is not None else None,
            "masking_threshold": self.masking_threshold,
        }

    @property
    def margin_attack(self) -> PGD | None:
        """The per-scale attack with the margin loss (behind ``robust_accuracy_cw``)."""
        return None if self.attack is None else self.attack.with_(loss="cw")


def check_scales(scales) -> tuple[float, ...]:
    """The scales as floats: at least one, each finite and positive, no repeats."""
    values = tuple(float(s) for s in scales)
    if not values:
        raise OptionError("scales", "{} needs at least one scale, e.g. 0.25,0.5,1,2.5,5,10,50")
    for s in values:
        if not (math.isfinite(s) and s > 0):
            raise OptionError("scales", f"{{}}: every scale must be a finite number > 0, got {s:g}")
    seen = set()
    for s in values:
        if s in seen:
            raise OptionError("scales", f"{{}} lists {s:g} twice; give each scale once")
        seen.add(s)
    return values


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``, checked by :func:`check_scales`."""
    parts = [p.strip() for p in str(text).split(",")]
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise OptionError("scales", f"{{}} takes comma-separated numbers such as 0.25,1,10; got {p!r} in {text!r}") from None
    return check_scales(values)


# ------------------------------------------------------------------------------------------------
# Over a data set
# ------------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """``summary`` (JSON-ready); per-sample columns ``samples[key]`` ((S, N) arrays, scales in ``scales``
    order; ``samples["index"]`` and ``samples["y"]`` (N,)); ``reference``: the s=1 columns (N,) behind the Spearman
    correlation, whether or not 1 is among the scales; ``examples``: per-step losses ``loss`` (S, T+1, E)
    and distances ``dist_l2`` (T+1, E) of the first E trajectories, for the figures."""

    summary: dict
    scales: tuple[float, ...]
    samples: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    examples: dict


#: Per-sample columns of a batch result, each (S, B) over the evaluated scales.
_COLUMNS = (
    "clean_pred", "clean_correct", "clean_loss", "clean_sharpness", "adv_loss", "loss_increase", "takeoff_step",
    "width", "censored", "final_dist_l2", "nonfinite",
)
_ATTACK_COLUMNS = ("robust_pred", "robust_correct", "transfer_pred", "transfer_correct", "robust_cw_pred",
                   "robust_cw_correct", "zero_grad", "attack_finite")
_SQUARE_COLUMNS = ("square_pred", "square_correct")
#: Measures of an adversarial's head output checked for NaN/Inf (NaN features or overflowing logits show here).
_ADV_MEASURES = ("relative_sharpness", "confidence")


def sweep_scale(ctx: RunContext, settings: SweepSettings, *, plot: str | None = None, on_rows: OnRows | None = None,
                keep_samples: bool = False) -> Result:
    """Both parts of the sweep over the data, batch by batch; per-sample rows (one per sample and scale)
    go to ``on_rows`` as each batch is done; ``plot`` (a directory) receives the figures. The s=1
    quantities behind ``spearman_width_sharpness`` and the s=1 adversarials behind ``transfer_accuracy``
    are computed even when 1 is not among the scales. The result's ``artifacts["outcome"]`` is the
    :class:`SweepOutcome` (rank 0).

    Random starts draw from a generator seeded by ``(seed, batch number)``, as in ``flatrob attack``,
    so a batch is attacked the same way whichever process runs it.
    """
    plot_dir = plot_directory(plot) if plot is not None else None
    store = ctx.store("sweep-scale", settings.identity())
    ctx.expect(len(ctx.data))
    scales = settings.scales
    # Internal scales: the requested ones, plus s=1 when absent (Spearman at s=1; transfer source).
    evaluated = scales if 1.0 in scales else scales + (1.0,)
    loaded = ctx.loaded
    head = loaded.head
    heads = [(settings.scaling(s).weight(head).detach(), _bias(settings.scaling(s), head)) for s in evaluated]
    parts: list[dict] = []
    examples = _Examples(settings.examples)
    rows = Rows(on_rows, keep_samples)
    config = {**ctx.describe(), **settings.config(), "plot": str(plot_dir) if plot_dir is not None else None,
              "precision": settings.precision, "channels_last": settings.channels_last, "conventions": CONVENTIONS}
    with HeadSplit(loaded.model, head, loaded.layer) as split:

        def compute(b) -> dict:
            return _sweep_batch(split, settings, evaluated, heads, b.x, b.y, b.index, seed=ctx.seed, number=b.number,
                                verify=b.first)

        for r in each_batch(ctx, compute, store=store, resumable=True):
            if "nonfinite" not in r:  # a batch saved by a version that did not flag NaN/Inf
                r["nonfinite"] = torch.zeros_like(r["censored"], dtype=torch.bool)
            parts.append({k: r[k] for k in r if k not in ("loss_by_step", "dist_l2")})  # O(S) scalars per sample
            examples.add(r["loss_by_step"], r["dist_l2"], r["index"])
            if rows.wanted:
                rows(_rows(r, evaluated, scales, settings.attack is not None))
    if not ctx.dist.is_main:
        return Result("sweep-scale", config, {})
    if not parts:
        raise UsageError("the data set is empty; nothing to sweep (check --limit)")
    arrays = {k: np.concatenate([p[k].numpy() for p in parts], axis=-1) for k in parts[0]}
    one = evaluated.index(1.0)
    summary = _summary(arrays, evaluated, scales, one, settings)
    keep = [evaluated.index(s) for s in scales]
    samples = {k: (v[keep] if v.ndim == 2 else v) for k, v in arrays.items()}
    reference = {k: arrays[k][one] for k in ("clean_sharpness", "width", "censored", "final_dist_l2", "nonfinite")}
    outcome = SweepOutcome(summary=summary, scales=scales, samples=samples, reference=reference,
                           examples=examples.result(keep))
    figures = []
    if plot_dir is not None:
        from flatcli.outputs.figures.sweep import sweep_figures
        from flatcli.outputs.plan import output_directory

        output_directory(plot_dir)
        figures = sweep_figures(outcome, plot_dir, title=loaded.name, trajectory=settings.trajectory,
                                attack=settings.attack)
    notes = []
    if summary.get("nonfinite"):
        notes.append(f"note: {summary['nonfinite']} of {summary['n']} samples hit NaN/Inf in the logits or gradients "
                     "at one or more scales; they are flagged (nonfinite) and left out of those scales' means")
    notes += resumed_note(store, ctx.resume) + [f"wrote {path}" for path in figures]
    censored, finite = arrays["censored"][one].astype(bool), ~arrays["nonfinite"][one].astype(bool)
    degenerate = degenerate_attack(arrays["takeoff_step"][one][finite & ~censored], int((finite & censored).sum()),
                                   steps=settings.trajectory.steps, tau=settings.takeoff,
                                   attack=settings.trajectory.config())
    return checked(Result("sweep-scale", config, summary, rows.kept, artifacts={"outcome": outcome, "figures": figures},
                          notes=notes), ctx, _mean(arrays["clean_correct"][one]), degenerate)


def plot_directory(path: str) -> Path:
    """``--plot DIR``: an existing directory, or a new one whose parent exists (created after the run)."""
    d = Path(path).expanduser()
    if d.exists() and not d.is_dir():
        raise OptionError("plot", f"{{}} {path} is a file; it takes a directory for the figures")
    parent = d.parent if str(d.parent) else Path(".")
    if not d.exists() and not parent.is_dir():
        raise OptionError("plot", f"{{}} {path}: directory {parent} does not exist; create it first")
    return d


def _bias(scaling: Scaling, head) -> Tensor | None:
    b = scaling.bias(head)
    return None if b is None else b.detach()


def _sweep_batch(split: HeadSplit, settings: SweepSettings, evaluated, heads, x: Tensor, y: Tensor, index: Tensor,
                 *, seed: int, number: int, verify: bool) -> dict:
    """Both parts on one batch; per-sample columns (S, B) and the loss curves (S, T+1, B), on the CPU."""
    traj, atk = settings.trajectory, settings.attack
    if verify:
        split.verify(x[:2])  # BN in eval mode, samples independent, head is the last linear map
    clean_phi = None
    with autocast(x.device, settings.precision):
        if traj.random_start:
            with torch.no_grad():
                clean_phi = split.features(x).detach().double()
        res = traj.run(split, x, y, record=True, generator=batch_generator(seed, number))
    phi = res.phi.double()  # once for every scale
    dist_l2 = res.dist_l2.double()
    cols: dict[str, list[Tensor]] = {k: [] for k in _COLUMNS}
    losses = []
    for sb in evaluate_scales(phi, clean_phi, y, dist_l2, heads, weight_norm=settings.weight_norm, tau=settings.takeoff):
        pred = sb.clean["pred"]
        values = {
            "clean_pred": pred,
            "clean_correct": pred == y.to(pred.device),
            "clean_loss": sb.clean["loss"],
            "clean_sharpness": sb.clean["relative_sharpness"],
            "adv_loss": sb.loss[-1],
            "loss_increase": sb.loss_increase,
            "takeoff_step": sb.takeoff.step,
            "width": sb.takeoff.width,
            "censored": sb.takeoff.censored,
            "final_dist_l2": sb.takeoff.lower_bound,
            "nonfinite": ~finite_samples({"loss": sb.loss}, sb.clean, dist_l2, step_keys=("loss",)),
        }
        for k, v in values.items():
            cols[k].append(v.detach().cpu())
        losses.append(sb.loss.cpu())
    out = {k: torch.stack(v) for k, v in cols.items()}
    if atk is not None:
        out.update(_attack_batch(split, atk, x, y, evaluated, heads, settings, seed, number))
        out["nonfinite"] = out["nonfinite"] | ~out.pop("attack_finite")
    out.update(loss_by_step=torch.stack(losses), dist_l2=dist_l2.cpu(), y=y.cpu(), index=index.cpu())
    return out


def _attack_batch(split: HeadSplit, atk: PGD, x, y, evaluated, heads, settings: SweepSettings, seed: int,
                  number: int) -> dict:
    """Part 2 on one batch: on each scaled model PGD, PGD on the margin loss and (``--square``) Square, each
    seeded as ``flatrob attack --scale s`` seeds this batch; then every scale on its own adversarials and
    on the s=1 ones."""
    attacks = {"robust": atk, "robust_cw": settings.margin_attack}
    if atk.loss == "cw":
        attacks["robust_cw"] = None  # the attack itself
    if settings.square is not None:
        attacks["square"] = settings.square
    adv_phi: dict[str, list[Tensor]] = {k: [] for k in attacks}
    zero_grad: list[Tensor] = []
    with autocast(x.device, settings.precision):
        for s in evaluated:
            scaled = split.with_scaling(settings.scaling(s))
            for key, attack in attacks.items():
                if attack is None:
                    continue
                interrupts.check()  # a signal stops the batch between attacks; --resume recomputes it whole
                res = attack.run(scaled, x, y, generator=batch_generator(seed, number))
                if key == "robust":
                    zero_grad.append(res.zero_grad.cpu() if res.zero_grad is not None
                                     else torch.zeros(len(y), dtype=torch.bool))
                with torch.no_grad():
                    adv_phi[key].append(split.features(res.x_adv).detach().double())
    if attacks["robust_cw"] is None:
        adv_phi["robust_cw"] = adv_phi["robust"]
    one = evaluated.index(1.0)
    names = _ATTACK_COLUMNS + (_SQUARE_COLUMNS if settings.square is not None else ())
    cols: dict[str, list[Tensor]] = {k: [] for k in names}
    for i, (w, b) in enumerate(heads):
        measured = {key: head_measures(adv_phi[key][i], w, b) for key in adv_phi}
        measured["transfer"] = head_measures(adv_phi["robust"][one], w, b)
        finite = torch.ones(len(y), dtype=torch.bool)
        for key, m in measured.items():
            pred = m["pred"].cpu()
            prefix = "square" if key == "square" else key
            cols[f"{prefix}_pred"].append(pred)
            cols[f"{prefix}_correct"].append(pred == y.cpu())
            # the adversarials as one-step trajectories: finite features and head output at this scale
            finite &= finite_samples({k: m[k][None] for k in _ADV_MEASURES}, {}, step_keys=_ADV_MEASURES,
                                     clean_keys=()).cpu()
        cols["zero_grad"].append(zero_grad[i])
        cols["attack_finite"].append(finite)
    return {k: torch.stack(v) for k, v in cols.items()}


class _Examples:
    """Per-step losses (every scale) and distances of the first ``limit`` trajectories."""

    def __init__(self, limit: int):
        self.limit = limit
        self.loss: list[np.ndarray] = []
        self.dist: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        self.kept = 0

    def add(self, loss: Tensor, dist_l2: Tensor, index: Tensor) -> None:
        take = min(self.limit - self.kept, dist_l2.shape[1])
        if take <= 0:
            return
        self.loss.append(loss[:, :, :take].numpy())
        self.dist.append(dist_l2[:, :take].numpy())
        self.index.append(index[:take].numpy())
        self.kept += take

    def result(self, keep: list[int]) -> dict:
        if not self.kept:
            return {"loss": np.zeros((len(keep), 0, 0)), "dist_l2": np.zeros((0, 0)), "index": np.zeros(0, dtype=np.int64)}
        return {
            "loss": np.concatenate(self.loss, axis=2)[keep],  # (S, T+1, E)
            "dist_l2": np.concatenate(self.dist, axis=1),  # (T+1, E)
            "index": np.concatenate(self.index),
        }


def _rows(r: dict, evaluated, scales, attacked: bool) -> list[dict]:
    """One batch's per-sample rows, sample-major, one per requested scale."""
    cols = {k: v.tolist() for k, v in r.items() if k not in ("loss_by_step", "dist_l2")}
    rows = []
    for j, (index, label) in enumerate(zip(cols["index"], cols["y"])):
        for s in scales:
            i = evaluated.index(s)
            censored = bool(cols["censored"][i][j])
            rows.append({
                "index": index,
                "label": label,
                "scale": s,
                "clean_pred": cols["clean_pred"][i][j],
                "clean_loss": cols["clean_loss"][i][j],
                "clean_sharpness": cols["clean_sharpness"][i][j],
                "adv_loss": cols["adv_loss"][i][j],
                "loss_increase": cols["loss_increase"][i][j],
                "takeoff_step": None if censored else cols["takeoff_step"][i][j],
                "basin_width": None if censored else cols["width"][i][j],
                "censored": censored,
                "final_dist_l2": cols["final_dist_l2"][i][j],
                "robust_pred": cols["robust_pred"][i][j] if attacked else None,
                "transfer_pred": cols["transfer_pred"][i][j] if attacked else None,
                "robust_pred_cw": cols["robust_cw_pred"][i][j] if attacked else None,
                "robust_pred_square": cols["square_pred"][i][j] if "square_pred" in cols else None,
                "zero_grad": bool(cols["zero_grad"][i][j]) if attacked else None,
                "nonfinite": bool(cols["nonfinite"][i][j]),
            })
    return rows


def _mean(values: np.ndarray) -> float | None:
    """Mean, or ``None`` when no sample is left (every one non-finite)."""
    return float(values.mean()) if values.size else None


def _summary(arrays: dict, evaluated, scales, one: int, settings: SweepSettings) -> dict:
    attacked = settings.attack is not None
    nonfinite = arrays["nonfinite"].astype(bool)  # (S, N): left out of that scale's statistics
    records = []
    for s in scales:
        i = evaluated.index(s)
        ok = ~nonfinite[i]
        censored = arrays["censored"][i].astype(bool)[ok]
        increase = arrays["loss_increase"][i][ok]
        sharpness = arrays["clean_sharpness"][i][ok]
        robust = _mean(arrays["robust_correct"][i][ok]) if attacked else None
        transfer = _mean(arrays["transfer_correct"][i][ok]) if attacked else None
        robust_cw = _mean(arrays["robust_cw_correct"][i][ok]) if attacked else None
        robust_square = _mean(arrays["square_correct"][i][ok]) if "square_correct" in arrays else None
        zero_grad = _mean(arrays["zero_grad"][i][ok]) if attacked else None
        masking, reason = masking_verdict(robust, robust_cw=robust_cw, robust_square=robust_square, transfer=transfer,
                                          zero_grad_fraction=zero_grad, threshold=settings.masking_threshold)
        records.append({
            "scale": s,
            "clean_accuracy": _mean(arrays["clean_correct"][i][ok]),
            "sharpness_mean": _mean(sharpness),
            "sharpness_median": float(np.median(sharpness)) if sharpness.size else None,
            "loss_increase_mean": _mean(increase),
            "loss_increase_median": float(np.median(increase)) if increase.size else None,
            "basin_width_median": censored_median(arrays["width"][i][ok], censored),
            "censored": int(censored.sum()),
            "nonfinite": int((~ok).sum()),
            "robust_accuracy": robust,
            "transfer_accuracy": transfer,
            "robust_accuracy_cw": robust_cw,
            "robust_accuracy_square": robust_square,
            "zero_grad_fraction": zero_grad,
            "masking": masking if attacked else None,
            "masking_reason": reason,
        })
    keep1 = ~arrays["censored"][one].astype(bool) & ~nonfinite[one]
    width1 = arrays["width"][one][keep1]
    sharp1 = arrays["clean_sharpness"][one][keep1]
    rho = spearman(width1, sharp1) if width1.size else float("nan")
    return {
        "n": int(arrays["y"].size),
        "nonfinite": int(nonfinite.any(0).sum()),
        "scales": records,
        "spearman_width_sharpness": rho if math.isfinite(rho) else None,
        "spearman_samples": int(width1.size),
        "takeoff_tau": settings.takeoff,
        "trajectory_steps": settings.trajectory.steps,
        "attack_steps": settings.attack.steps if attacked else None,
    }
