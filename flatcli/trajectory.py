"""``flatrob attack`` as a library call: PGD over a data set, recording every trajectory.

Per batch, :func:`flatcli.attacks.pgd` runs with ``record=True``: the features of every iterate come
from the forward pass that gives the gradient, plus one final forward for ``x_T``. One call of
:func:`flatcli.sharpness.head_measures` on all ``(T+1) * B`` feature vectors turns them into the
closed-form measures (the same numbers ``flatrob sharpness`` gives on ``x_t``). Rows go out per batch
(``on_steps``: one per sample and step; ``on_samples``: one per sample), so memory is bounded by the
batch; the summary keeps per-step sums and a few scalars per sample.

The statistics of DESIGN.md §2 are small pure functions on ``(T+1, B)`` tensors, reused by
``sweep-scale``: :func:`normalized_loss`, :func:`takeoff` (take-off step and basin width, censored
when the loss never rises), :func:`sharpness_peaks` / :func:`valley_mask` (uncanny valley).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from flatcli import data as datamod
from flatcli.attacks import PGD, batch_generator, eval_mode, least_likely
from flatcli.distributed import SINGLE, Dist
from flatcli.errors import UsageError
from flatcli.head import HeadSplit, Scaling
from flatcli.model import LoadedModel
from flatcli.precision import autocast
from flatcli.sharpness import head_measures
from flatcli.stats import describe, quantiles

#: A trajectory whose loss never rises by more than this is censored (no take-off on it).
MIN_RISE = 1e-6
#: A sample is in the uncanny valley when its sharpness ends below this share of its own peak.
VALLEY_RATIO = 0.5

STEP_KEYS = (
    "index", "step", "loss", "relative_sharpness", "trace_h", "confidence", "p_true", "pred", "correct",
    "dist_l2", "dist_linf",
)
SAMPLE_KEYS = (
    "index", "label", "target", "restart", "clean_pred", "adv_pred", "clean_loss", "adv_loss", "loss_increase",
    "clean_sharpness", "adv_sharpness", "peak_sharpness", "peak_step", "valley", "takeoff_step", "basin_width",
    "censored", "final_dist_l2", "final_dist_linf", "nonfinite",
)


# ------------------------------------------------------------------------------------------------
# Pure statistics on trajectories: tensors (T+1, B) in, tensors out
# ------------------------------------------------------------------------------------------------


def normalized_loss(losses: Tensor, min_rise: float = MIN_RISE) -> Tensor:
    """``n_t = (l_t - l_0) / (max_t l_t - l_0)`` per trajectory (columns of ``losses``, shape (T+1, B)).

    Columns whose loss never rises by more than ``min_rise`` are censored: all ``NaN``.
    """
    rise = losses.max(dim=0).values - losses[0]
    n = (losses - losses[0]) / torch.where(rise > min_rise, rise, torch.ones_like(rise))
    return torch.where((rise > min_rise)[None, :], n, torch.full_like(n, float("nan")))


@dataclass
class Takeoff:
    """Per sample: ``step`` t* (-1 if censored), ``width`` ``||x_{t*-1} - x_0||_2`` (NaN if censored),
    ``censored`` (bool), and ``lower_bound``: the final distance, which a censored width is at least."""

    step: Tensor
    width: Tensor
    censored: Tensor
    lower_bound: Tensor


def takeoff(losses: Tensor, dist_l2: Tensor, tau: float = 0.1, min_rise: float = MIN_RISE) -> Takeoff:
    """Take-off point and basin width (paper §6.1, Fig. 2; DESIGN.md §2).

    ``t* = min{t : n_t >= tau}`` on the normalised loss; the width is the distance reached just before
    take-off, ``dist_l2[t* - 1]`` (``dist_l2[t] = ||x_t - x_0||_2``, shape (T+1, B)). Since ``n_0 = 0 < tau``
    and ``n = 1`` at the loss maximum, ``1 <= t* <= T`` on every uncensored trajectory.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    n = normalized_loss(losses, min_rise)
    censored = torch.isnan(n[0])
    hit = n >= tau  # NaN compares False
    step = hit.to(torch.int8).argmax(dim=0)  # first True
    before = (step - 1).clamp_min(0)
    width = dist_l2.gather(0, before[None, :]).squeeze(0).to(torch.float64)
    width = torch.where(censored, torch.full_like(width, float("nan")), width)
    step = torch.where(censored, torch.full_like(step, -1), step)
    return Takeoff(step=step, width=width, censored=censored, lower_bound=dist_l2[-1].to(torch.float64))


def sharpness_peaks(sharpness: Tensor) -> tuple[Tensor, Tensor]:
    """Per trajectory (columns of (T+1, B)): the step of the highest value (first one) and that value."""
    peak, step = sharpness.max(dim=0)
    return step, peak


def valley_mask(sharpness: Tensor, ratio: float = VALLEY_RATIO) -> Tensor:
    """Samples whose own sharpness peaks strictly inside the trajectory (0 < t < T) and ends below
    ``ratio`` times that peak (the uncanny valley of paper §6.2, Fig. 3)."""
    last = sharpness.shape[0] - 1
    step, peak = sharpness_peaks(sharpness)
    return (step > 0) & (step < last) & (sharpness[-1] < ratio * peak)


def valley_of_mean(mean_by_step) -> dict:
    """Peak step of the mean sharpness curve and the ratio of its final value to the peak."""
    curve = np.asarray(mean_by_step, dtype=np.float64)
    peak_step = int(np.argmax(curve))
    peak = curve[peak_step]
    return {
        "sharpness_peak_step": peak_step,
        "sharpness_final_over_peak": float(curve[-1] / peak) if peak > 0 else float("nan"),
    }


# ------------------------------------------------------------------------------------------------
# Over a data set
# ------------------------------------------------------------------------------------------------


@dataclass
class AttackSettings:
    attack: PGD = field(default_factory=PGD)
    batch_size: int = 256
    scaling: Scaling = Scaling()
    weight_norm: str = "squared"
    takeoff: float = 0.1  # tau
    targeted: int | str | None = None  # a class, "least-likely", or None
    seed: int = 0
    keep_adv: bool = False  # hold the final adversarials (for --save-adv)
    precision: str = "fp32"  # forward/backward under autocast; closed forms stay float64

    def __post_init__(self) -> None:
        if not 0 < self.takeoff <= 1:
            raise UsageError(f"--takeoff must be in (0, 1], got {self.takeoff}")
        if isinstance(self.targeted, str) and self.targeted != "least-likely":
            raise UsageError(f"--targeted takes a class number or least-likely, got {self.targeted!r}")


@dataclass
class AttackOutcome:
    summary: dict
    adv: tuple[Tensor, Tensor, Tensor] | None = None  # (x, y, index) on the CPU when keep_adv


class _Accumulator:
    """Per-step sums (O(T)) and per-sample scalars (O(N)) for the summary."""

    def __init__(self, steps: int):
        shape = steps + 1
        self.sums = {k: np.zeros(shape) for k in ("loss", "loss_sq", "sharp", "sharp_sq", "correct", "confidence", "dist_l2")}
        self.per_sample: dict[str, list[np.ndarray]] = {
            k: [] for k in ("clean_correct", "adv_correct", "ever_correct", "loss_increase", "valley", "width",
                            "censored", "lower_bound", "takeoff_step", "clean_sharpness", "adv_sharpness", "hit")
        }
        self.n = 0  # samples in the statistics (finite ones)
        self.total = 0  # samples attacked
        self.nonfinite = 0  # samples whose logits or gradients went NaN/Inf: flagged, left out of the statistics

    def add(self, **cols: Tensor) -> None:
        for k, v in cols.items():
            self.per_sample[k].append(v.detach().cpu().numpy())

    def column(self, k: str) -> np.ndarray:
        parts = self.per_sample[k]
        return np.concatenate(parts) if parts else np.zeros(0)


def resolve_targets(targeted, y: Tensor, clean_logits: Tensor | None) -> Tensor | None:
    """Target classes per sample: ``None`` (untargeted), one class for all, or the least likely one."""
    if targeted is None:
        return None
    if targeted == "least-likely":
        return least_likely(clean_logits)
    return torch.full_like(y, int(targeted))


def run_attack(
    loaded: LoadedModel,
    data: datamod.DataSource,
    settings: AttackSettings,
    *,
    device: torch.device,
    on_steps: Callable[[list[dict]], None] | None = None,
    on_samples: Callable[[list[dict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
    store=None,
) -> AttackOutcome:
    """Attack every batch, stream trajectory/sample rows, return the summary (and adversarials).

    Random starts draw from a generator seeded by ``(seed, batch number)``, so a batch is attacked the
    same way whichever process runs it. Under torchrun (``dist``) each rank attacks its batches and
    rank 0 consumes them in the original order; the outcome is meaningful on rank 0 only. ``store``
    (a :class:`flatcli.resume.ResumeStore`, ``--resume``) supplies batches finished by an earlier run
    and receives each newly finished one before its rows go out.
    """
    attack = settings.attack
    k = loaded.num_classes
    if isinstance(settings.targeted, int) and not 0 <= settings.targeted < k:
        raise UsageError(f"--targeted {settings.targeted}: the model has classes 0..{k - 1}")
    acc = _Accumulator(attack.steps)
    advs: list[tuple[Tensor, Tensor, Tensor]] = []
    target_hits = 0
    # With a store every batch keeps its adversarials on disk (a resumed run may add --save-adv); they
    # are held in memory only for --save-adv.
    batch_settings = settings if store is None or settings.keep_adv else dataclasses.replace(settings, keep_adv=True)
    with eval_mode(loaded.model), HeadSplit(loaded.model, loaded.head, loaded.layer, settings.scaling) as split:
        for i, batch in enumerate(dist.rounds(data, settings.batch_size, device=device)):
            result = None
            if batch is not None:
                number = dist.batch_number(i)
                result = store.load(number, batch[2]) if store is not None else None
                if result is None:
                    generator = batch_generator(settings.seed, number)
                    result = _attack_batch(split, loaded, batch_settings, *batch, generator=generator, verify=i == 0)
            for j, r in enumerate(dist.gather(result)):
                if store is not None:
                    store.save(i * dist.world + j, r)  # finished: persisted before its rows go out
                target_hits += _consume(r, acc, on_steps, on_samples)
                if settings.keep_adv:
                    advs.append((r["x_adv"], r["y"], r["index"]))
                if progress is not None:
                    progress(len(r["y"]))
    if not dist.is_main:
        return AttackOutcome(summary={})
    summary = _summary(acc, settings, loaded, target_hits)
    adv = None
    if settings.keep_adv:
        adv = tuple(torch.cat(parts) for parts in zip(*advs))  # type: ignore[assignment]
    return AttackOutcome(summary=summary, adv=adv)


def _attack_batch(split: HeadSplit, loaded: LoadedModel, settings: AttackSettings, x: Tensor, y: Tensor,
                  index: Tensor, *, generator: torch.Generator, verify: bool) -> dict:
    """Attack one batch with recording; everything the summary and the rows need, on the CPU."""
    attack = settings.attack
    T, B = attack.steps, len(y)
    weight, bias = settings.scaling.weight(loaded.head), settings.scaling.bias(loaded.head)
    if verify:
        split.verify(x[:2])  # structural check: BN is in eval mode, samples are independent
    clean_phi = None
    clean_logits = None
    with autocast(x.device, settings.precision):
        if attack.random_start or settings.targeted == "least-likely":
            with torch.no_grad():
                clean_logits, clean_phi = split(x)
        target = resolve_targets(settings.targeted, y, clean_logits)
        res = attack.run(split, x, y, target=target, record=True, generator=generator)
    # One closed-form call for all (T+1) * B iterates: the numbers `flatrob sharpness` gives on x_t.
    m = head_measures(res.phi.flatten(0, 1), weight, bias, y.repeat(T + 1), weight_norm=settings.weight_norm)
    m = {key: v.view(T + 1, B) for key, v in m.items()}
    if clean_phi is None:
        clean = {key: v[0] for key, v in m.items()}
    else:
        clean = head_measures(clean_phi, weight, bias, y, weight_norm=settings.weight_norm)
    correct = m["pred"] == y[None, :].to(m["pred"].device)
    finite = finite_samples(m, clean, res.dist_l2, res.dist_linf)
    x_adv = None
    if settings.keep_adv:  # a flagged sample keeps its clean input, so the saved file stays loadable
        x_adv = torch.where(finite.to(x.device).view(-1, *([1] * (x.dim() - 1))), res.x_adv, x)
    to = takeoff(m["loss"], res.dist_l2.double().to(m["loss"].device), settings.takeoff)
    peak_step, peak = sharpness_peaks(m["relative_sharpness"])
    out = {
        "m": {key: m[key] for key in ("loss", "relative_sharpness", "trace_h", "confidence", "p_true", "pred")},
        "clean": {key: clean[key] for key in ("pred", "loss", "relative_sharpness")},
        "correct": correct,
        "takeoff": to,
        "peak_step": peak_step,
        "peak": peak,
        "valley": valley_mask(m["relative_sharpness"]),
        "dist_l2": res.dist_l2,
        "dist_linf": res.dist_linf,
        "restart": res.restart,
        "target": target,
        "y": y,
        "index": index,
        "x_adv": x_adv,
        "finite": finite,
    }
    return _to_cpu(out)


#: Per-step measures :func:`finite_samples` checks by default (those ``flatrob attack`` records).
STEP_MEASURES = ("loss", "relative_sharpness", "trace_h", "confidence", "p_true")
#: Clean-input measures :func:`finite_samples` checks by default.
CLEAN_MEASURES = ("loss", "relative_sharpness")


def finite_samples(m: dict, clean: dict, *distances: Tensor, step_keys=STEP_MEASURES, clean_keys=CLEAN_MEASURES) -> Tensor:
    """(B,) bool: every recorded measure of the sample, at every step and at the clean input, is finite.

    ``m[key]`` for ``key`` in ``step_keys``: per-step measures (T+1, B); ``clean[key]`` for ``key`` in
    ``clean_keys``: clean-input measures (B,); ``distances``: per-step distances (T+1, B). NaN/Inf in the
    logits or in the gradient (which makes the next iterate NaN) shows up here; such samples are flagged
    in the rows and counted in the summary instead of poisoning its means (``flatrob attack`` and
    ``flatrob sweep-scale``).
    """
    finite = torch.ones_like(m[step_keys[0]][0], dtype=torch.bool)
    for key in step_keys:
        finite &= torch.isfinite(m[key]).all(0)
    for key in clean_keys:
        finite &= torch.isfinite(clean[key]).to(finite.device)
    for d in distances:
        finite &= torch.isfinite(d).all(0).to(finite.device)
    return finite


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, Takeoff):
        return Takeoff(**{f: _to_cpu(getattr(value, f)) for f in value.__dataclass_fields__})
    return value


def _consume(r: dict, acc: "_Accumulator", on_steps, on_samples) -> int:
    """Add one batch's results to the summary sums and emit its rows; returns its target hits."""
    m, clean, correct, to, y = r["m"], r["clean"], r["correct"], r["takeoff"], r["y"]
    sharp, loss = m["relative_sharpness"], m["loss"]
    clean_correct = clean["pred"] == y
    ok = r["finite"]  # flagged (non-finite) samples are left out of every sum and column
    s = acc.sums
    s["loss"] += loss[:, ok].sum(1).numpy()
    s["loss_sq"] += (loss * loss)[:, ok].sum(1).numpy()
    s["sharp"] += sharp[:, ok].sum(1).numpy()
    s["sharp_sq"] += (sharp * sharp)[:, ok].sum(1).numpy()
    s["correct"] += correct[:, ok].sum(1).numpy()
    s["confidence"] += m["confidence"][:, ok].sum(1).numpy()
    s["dist_l2"] += r["dist_l2"].double()[:, ok].sum(1).numpy()
    acc.add(
        clean_correct=clean_correct[ok],
        adv_correct=correct[-1][ok],
        ever_correct=(correct.all(0) & clean_correct)[ok],
        loss_increase=(loss[-1] - clean["loss"])[ok],
        valley=r["valley"][ok],
        width=to.width[ok],
        censored=to.censored[ok],
        lower_bound=to.lower_bound[ok],
        takeoff_step=to.step[ok],
        clean_sharpness=clean["relative_sharpness"][ok],
        adv_sharpness=sharp[-1][ok],
    )
    acc.n += int(ok.sum())
    acc.total += len(y)
    acc.nonfinite += int((~ok).sum())
    if on_steps is not None:
        on_steps(_step_rows(m, correct, r["dist_l2"], r["dist_linf"], r["index"]))
    if on_samples is not None:
        on_samples(
            _sample_rows(
                index=r["index"], y=y, target=r["target"], restart=r["restart"], clean=clean, m=m, peak=r["peak"],
                peak_step=r["peak_step"], valley=r["valley"], to=to, dist_linf=r["dist_linf"][-1], nonfinite=~ok,
            )
        )
    target = r["target"]
    return 0 if target is None else int(((m["pred"][-1] == target) & ok).sum())


def _step_rows(m: dict, correct: Tensor, dist_l2: Tensor, dist_linf: Tensor, index: Tensor) -> list[dict]:
    """One row per sample and step, ordered by sample then step."""
    T1, B = correct.shape
    cols = {
        "index": index.cpu().repeat_interleave(T1).tolist(),
        "step": list(range(T1)) * B,
        "loss": m["loss"],
        "relative_sharpness": m["relative_sharpness"],
        "trace_h": m["trace_h"],
        "confidence": m["confidence"],
        "p_true": m["p_true"],
        "pred": m["pred"],
        "correct": correct,
        "dist_l2": dist_l2,
        "dist_linf": dist_linf,
    }
    for key in STEP_KEYS[2:]:
        cols[key] = cols[key].T.reshape(-1).cpu().tolist()
    return [dict(zip(STEP_KEYS, vals)) for vals in zip(*(cols[key] for key in STEP_KEYS))]


def _sample_rows(*, index, y, target, restart, clean, m, peak, peak_step, valley, to, dist_linf, nonfinite) -> list[dict]:
    B = len(y)
    nan = [None] * B
    cols = {
        "index": index,
        "label": y,
        "target": target if target is not None else nan,
        "restart": restart,
        "clean_pred": clean["pred"],
        "adv_pred": m["pred"][-1],
        "clean_loss": clean["loss"],
        "adv_loss": m["loss"][-1],
        "loss_increase": m["loss"][-1] - clean["loss"],
        "clean_sharpness": clean["relative_sharpness"],
        "adv_sharpness": m["relative_sharpness"][-1],
        "peak_sharpness": peak,
        "peak_step": peak_step,
        "valley": valley,
        "takeoff_step": torch.where(to.censored, torch.zeros_like(to.step), to.step),
        "basin_width": to.width,
        "censored": to.censored,
        "final_dist_l2": to.lower_bound,
        "final_dist_linf": dist_linf,
        "nonfinite": nonfinite,
    }
    lists = {key: (v.cpu().tolist() if isinstance(v, Tensor) else v) for key, v in cols.items()}
    censored = lists["censored"]
    lists["takeoff_step"] = [None if c else s for s, c in zip(lists["takeoff_step"], censored)]
    lists["basin_width"] = [None if c else w for w, c in zip(lists["basin_width"], censored)]
    return [dict(zip(SAMPLE_KEYS, vals)) for vals in zip(*(lists[key] for key in SAMPLE_KEYS))]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _summary(acc: _Accumulator, settings: AttackSettings, loaded: LoadedModel, target_hits: int) -> dict:
    n = acc.n
    s = acc.sums
    with np.errstate(invalid="ignore", divide="ignore"):  # every sample non-finite: NaN (null) means
        mean_loss = s["loss"] / n
        mean_sharp = s["sharp"] / n
        std_loss = np.sqrt(np.maximum(s["loss_sq"] / n - mean_loss**2, 0.0))
        std_sharp = np.sqrt(np.maximum(s["sharp_sq"] / n - mean_sharp**2, 0.0))
    censored = acc.column("censored").astype(bool)
    width = acc.column("width")
    steps = acc.column("takeoff_step")
    lower = acc.column("lower_bound")
    clean_correct = acc.column("clean_correct").astype(bool)
    adv_correct = acc.column("adv_correct").astype(bool)
    summary = {
        "n": acc.total,
        "nonfinite": acc.nonfinite,
        "steps": settings.attack.steps,
        "clean_accuracy": _mean(clean_correct),
        "robust_accuracy": _mean(adv_correct),
        "ever_fooled_accuracy": _mean(acc.column("ever_correct").astype(bool)),
        "success_rate": float((clean_correct & ~adv_correct).sum() / max(clean_correct.sum(), 1)),
        "mean_loss_by_step": mean_loss.tolist(),
        "std_loss_by_step": std_loss.tolist(),
        "mean_sharpness_by_step": mean_sharp.tolist(),
        "std_sharpness_by_step": std_sharp.tolist(),
        "accuracy_by_step": (s["correct"] / max(n, 1) if n else s["correct"] * np.nan).tolist(),
        "mean_confidence_by_step": (s["confidence"] / max(n, 1) if n else s["confidence"] * np.nan).tolist(),
        "mean_dist_l2_by_step": (s["dist_l2"] / max(n, 1) if n else s["dist_l2"] * np.nan).tolist(),
        **valley_of_mean(mean_sharp),
        "valley_fraction": _mean(acc.column("valley").astype(bool)),
        "loss_final_is_max": bool(mean_loss[-1] >= mean_loss.max()),
        "loss_increase": quantiles(acc.column("loss_increase")),
        "clean_sharpness": describe(acc.column("clean_sharpness")),
        "adv_sharpness": describe(acc.column("adv_sharpness")),
        "takeoff": {
            "tau": settings.takeoff,
            "measured": int((~censored).sum()),
            "censored": int(censored.sum()),
            "width": quantiles(width[~censored]),
            "step": describe(steps[~censored]),
            "censored_final_dist_l2": describe(lower[censored]),
        },
    }
    if settings.targeted is not None:
        summary["target_success_rate"] = target_hits / n if n else float("nan")
    return summary
