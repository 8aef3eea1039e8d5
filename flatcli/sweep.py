"""``flatrob sweep-scale`` as a library call: flatten the network by scaling its head (paper §6.1, D.3).

Scaling the head by ``s`` (``W -> sW``, ``b -> sb`` unless the bias is kept) changes nothing before the
head, so the features ``phi`` of any input are the same at every scale and only
``logits = s W phi (+ s) b`` change. Two parts, both streamed per batch:

1. Fixed trajectories (§6.1, Fig. 2). PGD (default PGD-l2, 25 steps, eps 0.025, alpha 0.001) runs once
   on the *unscaled* model with ``record=True``: the features of every iterate ``x_0 .. x_T`` come from
   the attack's own forward passes. Every scale is then evaluated from those cached features with the
   closed forms of :func:`flatcli.sharpness.head_measures` (float64): loss along the trajectory, loss
   increase ``l(x_T) - l(x_clean)``, take-off step and basin width (:func:`flatcli.trajectory.takeoff`),
   clean accuracy and clean relative sharpness. No forward pass of the feature extractor per scale.
2. Per-scale attack (D.3, Fig. 13). For each scale, PGD (default PGD-linf, 10 steps, eps 8/255,
   alpha 2/255) attacks the *scaled* model; robust accuracy is measured at that scale. The s=1
   adversarials are evaluated at every scale (transfer) from their cached features. With the bias
   scaled, scaling cannot change a prediction, so transfer accuracy is the same at every scale,
   while robust accuracy rises with ``s``: the float32 softmax saturates, the input gradient
   vanishes, and a first-order attack stalls (gradient masking).

Only per-sample scalars (one per sample and scale) and a few example trajectories (for the figures)
are kept; rows go out per batch through ``on_rows``.

NaN/Inf (in the logits or gradients of either attack) is caught per sample and scale with
:func:`flatcli.trajectory.finite_samples`, as ``flatrob attack`` does: a sample is ``nonfinite`` at scale
``s`` when its fixed-trajectory losses or clean measures at ``s``, its distances, its adversarial of the
attack at ``s`` or the s=1 adversarial it is transferred from are not finite. It is flagged in its row,
counted in that scale's record (``nonfinite``; the summary's ``nonfinite`` counts samples flagged at any
scale) and left out of that scale's means, medians and rates (and of the Spearman correlation when
flagged at s=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from flatcli import data as datamod
from flatcli.attacks import PGD, batch_generator, eval_mode
from flatcli.distributed import SINGLE, Dist
from flatcli.errors import UsageError
from flatcli.head import HeadSplit, Scaling
from flatcli.model import LoadedModel
from flatcli.precision import PRECISIONS, autocast
from flatcli.sharpness import WEIGHT_NORMS, cross_entropy, head_measures
from flatcli.trajectory import Takeoff, finite_samples, takeoff

#: The paper's §6.1 scales (Fig. 2).
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0)

#: Keys of each record of ``summary["scales"]`` (pinned by a contract test).
SCALE_KEYS = (
    "scale", "clean_accuracy", "sharpness_mean", "loss_increase_mean", "loss_increase_median",
    "basin_width_median", "censored", "nonfinite", "robust_accuracy", "transfer_accuracy",
)
#: Keys of the per-sample rows (one per sample and scale), in order.
SAMPLE_KEYS = (
    "index", "label", "scale", "clean_pred", "clean_loss", "clean_sharpness", "adv_loss", "loss_increase",
    "takeoff_step", "basin_width", "censored", "final_dist_l2", "robust_pred", "transfer_pred",
    "nonfinite",
)


def default_trajectory() -> PGD:
    return PGD.from_options("basin")


def default_attack() -> PGD:
    return PGD.from_options("uncanny")


@dataclass
class SweepSettings:
    """What to sweep. ``trajectory``: the fixed-trajectory attack (on the unscaled model); ``attack``:
    the per-scale attack, or ``None`` to skip part 2. ``examples``: how many trajectories (the first
    ones of the data) keep their whole per-step loss at every scale, for the figures."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    trajectory: PGD = field(default_factory=default_trajectory)
    attack: PGD | None = field(default_factory=default_attack)
    scale_bias: bool = True
    weight_norm: str = "squared"
    takeoff: float = 0.1  # tau
    batch_size: int = 256
    seed: int = 0
    examples: int = 32
    precision: str = "fp32"  # the network's forward/backward under autocast; closed forms stay float64

    def __post_init__(self) -> None:
        self.scales = check_scales(self.scales)
        if not 0 < self.takeoff <= 1:
            raise UsageError(f"--takeoff must be in (0, 1], got {self.takeoff}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise UsageError(f"--weight-norm must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.examples < 0:
            raise UsageError(f"examples must be 0 or more, got {self.examples}")

    def scaling(self, scale: float) -> Scaling:
        return Scaling(float(scale), self.scale_bias)


def check_scales(scales) -> tuple[float, ...]:
    """The scales as floats: at least one, each finite and positive, no repeats."""
    values = tuple(float(s) for s in scales)
    if not values:
        raise UsageError("--scales needs at least one scale, e.g. --scales 0.25,0.5,1,2.5,5,10,50")
    for s in values:
        if not (math.isfinite(s) and s > 0):
            raise UsageError(f"--scales: every scale must be a finite number > 0, got {s:g}")
    seen = set()
    for s in values:
        if s in seen:
            raise UsageError(f"--scales lists {s:g} twice; give each scale once")
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
            raise UsageError(f"--scales takes comma-separated numbers such as 0.25,1,10; got {p!r} in {text!r}") from None
    return check_scales(values)


# ------------------------------------------------------------------------------------------------
# Pure pieces: one scale from cached features; Spearman correlation
# ------------------------------------------------------------------------------------------------


@dataclass
class ScaleBatch:
    """One scale on one batch, all from cached features (per-sample tensors, float64 where real).

    ``loss`` (T+1, B) is the loss at ``x_0 .. x_T`` of the fixed trajectory; ``clean`` the
    :func:`head_measures` at the clean inputs; ``loss_increase = loss[T] - clean loss``.
    """

    clean: dict[str, Tensor]
    loss: Tensor
    loss_increase: Tensor
    takeoff: Takeoff


def evaluate_scale(
    phi: Tensor,
    clean_phi: Tensor | None,
    y: Tensor,
    dist_l2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    weight_norm: str = "squared",
    tau: float = 0.1,
) -> ScaleBatch:
    """One head ``(weight, bias)`` (already scaled) on cached trajectory features; see :func:`evaluate_scales`."""
    return evaluate_scales(phi, clean_phi, y, dist_l2, [(weight, bias)], weight_norm=weight_norm, tau=tau)[0]


def evaluate_scales(
    phi: Tensor,
    clean_phi: Tensor | None,
    y: Tensor,
    dist_l2: Tensor,
    heads: list[tuple[Tensor, Tensor | None]],
    *,
    weight_norm: str = "squared",
    tau: float = 0.1,
) -> list[ScaleBatch]:
    """Every head ``(weight, bias)`` of ``heads`` (already scaled) on the same cached trajectory features.

    ``phi`` (T+1, B, m): features of ``x_0 .. x_T``; ``clean_phi`` (B, m): features of the clean inputs,
    or ``None`` when ``x_0`` is the clean input (no random start); ``dist_l2`` (T+1, B):
    ``||x_t - x_clean||_2``. The losses of all iterates at all scales are formed in one batch of float64
    operations (logits ``phi W_s^T + b_s``, cross-entropy as :func:`flatcli.sharpness.cross_entropy`), so
    the cost hardly grows with the number of scales; the clean measures (sharpness, prediction) are
    :func:`flatcli.sharpness.head_measures` -- the numbers ``flatrob attack``/``sharpness`` report.
    """
    T1, B = phi.shape[0], phi.shape[1]
    S = len(heads)
    flat = phi.flatten(0, 1).detach().double()  # (T1*B, m)
    weights = torch.stack([w.detach().double() for w, _ in heads])  # (S, k, m)
    logits = torch.matmul(flat, weights.transpose(1, 2))  # (S, T1*B, k)
    if any(b is not None for _, b in heads):
        biases = torch.stack([b.detach().double() if b is not None else torch.zeros_like(weights[0, :, 0]) for _, b in heads])
        logits = logits + biases[:, None, :]
    y = y.to(logits.device)
    loss = cross_entropy(logits.flatten(0, 1), y.repeat(S * T1)).view(S, T1, B)
    # take-off on all scales at once: columns (T+1, S*B)
    to = takeoff(loss.permute(1, 0, 2).reshape(T1, S * B), dist_l2.to(loss.device, torch.float64).repeat(1, S), tau)
    out = []
    for i, (w, b) in enumerate(heads):
        clean = head_measures(phi[0] if clean_phi is None else clean_phi, w, b, y, weight_norm=weight_norm)
        if clean_phi is None:
            clean["loss"] = loss[i, 0]  # the same numbers the increase is taken from, to the last bit
        cols = slice(i * B, (i + 1) * B)
        part = Takeoff(step=to.step[cols], width=to.width[cols], censored=to.censored[cols], lower_bound=to.lower_bound[cols])
        out.append(ScaleBatch(clean=clean, loss=loss[i], loss_increase=loss[i, -1] - clean["loss"], takeoff=part))
    return out


def rankdata(values) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the average of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0  # mean of ranks ends-counts+1 .. ends
    return average[inverse.reshape(-1)]


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties).

    NaN when fewer than 3 pairs or when either side is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman needs two 1-d sequences of the same length")
    if a.size < 3:
        return float("nan")
    ra = rankdata(a) - (a.size + 1) / 2.0
    rb = rankdata(b) - (b.size + 1) / 2.0
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


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
_ATTACK_COLUMNS = ("robust_pred", "robust_correct", "transfer_pred", "transfer_correct", "attack_finite")
#: Measures of an adversarial's head output checked for NaN/Inf (NaN features or overflowing logits show here).
_ADV_MEASURES = ("relative_sharpness", "confidence")


def run_sweep(
    loaded: LoadedModel,
    data: datamod.DataSource,
    settings: SweepSettings,
    *,
    device: torch.device,
    on_rows: Callable[[list[dict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
    store=None,
) -> SweepOutcome:
    """Both parts of the sweep over ``data``, batch by batch; rows (one per sample and scale) go to
    ``on_rows`` as each batch is done. The s=1 quantities behind ``spearman_width_sharpness`` and the
    s=1 adversarials behind ``transfer_accuracy`` are computed even when 1 is not among the scales.

    Random starts draw from a generator seeded by ``(seed, batch number)``, as in ``flatrob attack``,
    so a batch is attacked the same way whichever process runs it. Under torchrun (``dist``) each rank
    sweeps its batches and rank 0 consumes them in the original order; the outcome is meaningful on
    rank 0 only (``None`` elsewhere). ``store`` (:class:`flatcli.resume.ResumeStore`, ``--resume``)
    supplies batches an earlier run finished and receives every new one.
    """
    scales = settings.scales
    # Internal scales: the requested ones, plus s=1 when absent (Spearman at s=1; transfer source).
    evaluated = scales if 1.0 in scales else scales + (1.0,)
    head = loaded.head
    heads = [(settings.scaling(s).weight(head).detach(), _bias(settings.scaling(s), head)) for s in evaluated]
    parts: list[dict] = []
    examples = _Examples(settings.examples)
    with eval_mode(loaded.model), HeadSplit(loaded.model, head, loaded.layer) as split:
        for i, batch in enumerate(dist.rounds(data, settings.batch_size, device=device)):
            result = None
            if batch is not None:
                number = dist.batch_number(i)
                result = store.load(number, batch[2]) if store is not None else None
                if result is None:
                    result = _sweep_batch(split, settings, evaluated, heads, *batch, number=number, verify=i == 0)
            for j, r in enumerate(dist.gather(result)):
                if "nonfinite" not in r:  # a batch saved by a version that did not flag NaN/Inf
                    r["nonfinite"] = torch.zeros_like(r["censored"], dtype=torch.bool)
                if store is not None:
                    store.save(i * dist.world + j, r)
                parts.append({k: r[k] for k in r if k not in ("loss_by_step", "dist_l2")})  # O(S) scalars per sample
                examples.add(r["loss_by_step"], r["dist_l2"], r["index"])
                if on_rows is not None:
                    on_rows(_rows(r, evaluated, scales, settings.attack is not None))
                if progress is not None:
                    progress(len(r["y"]))
    if not dist.is_main:
        return None  # type: ignore[return-value]
    if not parts:
        raise UsageError("the data set is empty; nothing to sweep (check --limit)")
    arrays = {k: np.concatenate([p[k].numpy() for p in parts], axis=-1) for k in parts[0]}
    one = evaluated.index(1.0)
    summary = _summary(arrays, evaluated, scales, one, settings)
    keep = [evaluated.index(s) for s in scales]
    samples = {k: (v[keep] if v.ndim == 2 else v) for k, v in arrays.items()}
    reference = {k: arrays[k][one] for k in ("clean_sharpness", "width", "censored", "final_dist_l2", "nonfinite")}
    return SweepOutcome(summary=summary, scales=scales, samples=samples, reference=reference,
                        examples=examples.result(keep))


def _bias(scaling: Scaling, head) -> Tensor | None:
    b = scaling.bias(head)
    return None if b is None else b.detach()


def _sweep_batch(split: HeadSplit, settings: SweepSettings, evaluated, heads, x: Tensor, y: Tensor, index: Tensor,
                 *, number: int, verify: bool) -> dict:
    """Both parts on one batch; per-sample columns (S, B) and the loss curves (S, T+1, B), on the CPU."""
    traj, atk = settings.trajectory, settings.attack
    if verify:
        split.verify(x[:2])  # BN in eval mode, samples independent, head is the last linear map
    clean_phi = None
    with autocast(x.device, settings.precision):
        if traj.random_start:
            with torch.no_grad():
                clean_phi = split.features(x).detach().double()
        res = traj.run(split, x, y, record=True, generator=batch_generator(settings.seed, number))
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
        out.update(_attack_batch(split, atk, x, y, evaluated, heads, settings, number))
        out["nonfinite"] = out["nonfinite"] | ~out.pop("attack_finite")
    out.update(loss_by_step=torch.stack(losses), dist_l2=dist_l2.cpu(), y=y.cpu(), index=index.cpu())
    return out


def _attack_batch(split: HeadSplit, atk: PGD, x, y, evaluated, heads, settings: SweepSettings, number: int) -> dict:
    """Part 2 on one batch: PGD on each scaled model (seeded as ``flatrob attack --scale s`` seeds
    this batch), then every scale on its own adversarials and on the s=1 ones."""
    adv_phi: list[Tensor] = []
    with autocast(x.device, settings.precision):
        for s in evaluated:
            scaled = split.with_scaling(settings.scaling(s))
            res = atk.run(scaled, x, y, generator=batch_generator(settings.seed, number))
            with torch.no_grad():
                adv_phi.append(split.features(res.x_adv).detach().double())
    one = evaluated.index(1.0)
    cols: dict[str, list[Tensor]] = {k: [] for k in _ATTACK_COLUMNS}
    for i, (w, b) in enumerate(heads):
        robust_m = head_measures(adv_phi[i], w, b)
        transfer_m = head_measures(adv_phi[one], w, b)
        robust, transfer = robust_m["pred"], transfer_m["pred"]
        # the adversarials as one-step trajectories: finite features and head output at this scale
        finite = finite_samples({k: robust_m[k][None] for k in _ADV_MEASURES}, {}, step_keys=_ADV_MEASURES, clean_keys=())
        finite &= finite_samples({k: transfer_m[k][None] for k in _ADV_MEASURES}, {}, step_keys=_ADV_MEASURES, clean_keys=())
        for k, v in (("robust_pred", robust), ("robust_correct", robust == y.to(robust.device)),
                     ("transfer_pred", transfer), ("transfer_correct", transfer == y.to(transfer.device)),
                     ("attack_finite", finite)):
            cols[k].append(v.cpu())
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
                "nonfinite": bool(cols["nonfinite"][i][j]),
            })
    return rows


def censored_median(width: np.ndarray, censored: np.ndarray) -> float | None:
    """Median basin width with censored samples counted as wider than every measured one (their width
    is at least the final distance, which no measured width reaches); ``None`` when the median falls
    on a censored sample, i.e. it is not measured."""
    if width.size == 0:
        return None
    value = float(np.median(np.where(censored, np.inf, width)))
    return value if math.isfinite(value) else None


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
        records.append({
            "scale": s,
            "clean_accuracy": _mean(arrays["clean_correct"][i][ok]),
            "sharpness_mean": _mean(arrays["clean_sharpness"][i][ok]),
            "loss_increase_mean": _mean(increase),
            "loss_increase_median": float(np.median(increase)) if increase.size else None,
            "basin_width_median": censored_median(arrays["width"][i][ok], censored),
            "censored": int(censored.sum()),
            "nonfinite": int((~ok).sum()),
            "robust_accuracy": _mean(arrays["robust_correct"][i][ok]) if attacked else None,
            "transfer_accuracy": _mean(arrays["transfer_correct"][i][ok]) if attacked else None,
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
