"""``flatrob detect`` as library calls: label-free scores of clean and adversarial inputs, a detector
fitted and cross-validated on them (paper appendix D.4), and a saved detector applied to new inputs.

The fitting itself lives in :mod:`flatcli.detect` (pure numpy + scikit-learn); this module feeds it
from a model and a data set:

* :func:`score_inputs` runs the model once per batch and keeps, per input, the label-free measures of
  :func:`flatcli.sharpness.head_measures`: the :data:`SCORES` (``relative_sharpness``, ``trace_h``,
  ``confidence``, ``relative_flatness_full``) and the three factors of sharpness used by the
  ``components`` detector (:data:`flatcli.detect.COMPONENT_NAMES`: ``sum_j p_j(1-p_j)``,
  ``||phi||^2``, ``||W phi||^2``). No label is read: the detector works at deployment time.
* :func:`attack_and_score` crafts one adversarial per clean input with :class:`flatcli.attacks.PGD`
  (the generator seeded and the batches visited exactly as ``flatrob attack`` does, so the
  adversarials are those ``flatrob attack --save-adv`` writes with the same options) and scores both.
* :func:`fit_detection` balances the two classes, cross-validates, fits the final detector, and
  returns the summary, the per-input rows and the detector (with provenance in ``meta``).
* :func:`apply_detection` streams ``index, score, flagged`` rows for new inputs after
  :func:`check_detector` has checked the detector belongs to this checkpoint.

The *score* of an input, as rows and plots show it, is the value the detector thresholds: for a
stump the chosen measure (flagged when above / below the threshold), for ``components`` the
logistic-regression logit (flagged when above 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from flatcli import data as datamod
from flatcli import detect as core
from flatcli.attacks import PGD, batch_generator, eval_mode
from flatcli.distributed import SINGLE, Dist
from flatcli.errors import DetectorError, UsageError
from flatcli.head import HeadSplit, Scaling
from flatcli.model import LoadedModel
from flatcli.sharpness import head_measures
from flatcli.stats import describe

__all__ = [
    "SCORES",
    "FIT_ROW_KEYS",
    "APPLY_ROW_KEYS",
    "ScoreSet",
    "DetectSettings",
    "DetectOutcome",
    "score_inputs",
    "attack_and_score",
    "fit_detection",
    "check_detector",
    "apply_detection",
]

#: Label-free measures a stump can threshold (``--score``); the first is the default.
SCORES = ("relative_sharpness", "trace_h", "confidence", "relative_flatness_full")
#: Per-input rows of a fit: ``adversarial`` is the true class, ``used`` whether the input was in the
#: balanced set, ``fold`` its held-out fold, ``oof_decision`` the decision value of the detector that
#: did not see it, ``flagged`` the final detector's verdict.
FIT_ROW_KEYS = ("index", "adversarial", "used", "fold", "score", "oof_decision", "flagged")
APPLY_ROW_KEYS = ("index", "score", "flagged")

_MEASURED = SCORES + core.COMPONENT_NAMES


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@dataclass
class ScoreSet:
    """Per-input label-free measures of one set of inputs (all numpy, same length).

    ``index``: source indices; ``pred``: the model's prediction; ``values[name]`` for every name
    in :data:`SCORES` and :data:`flatcli.detect.COMPONENT_NAMES` (float64).
    """

    index: np.ndarray
    pred: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.index)

    def features(self, method: str, score: str) -> np.ndarray:
        """What the detector takes: ``(n,)`` the score for a stump, ``(n, 3)`` the components."""
        if method == "components":
            return np.stack([self.values[c] for c in core.COMPONENT_NAMES], axis=1)
        return self.values[score]

    def take(self, keep: np.ndarray) -> "ScoreSet":
        return ScoreSet(self.index[keep], self.pred[keep], {k: v[keep] for k, v in self.values.items()})

    @classmethod
    def concat(cls, parts: list["ScoreSet"]) -> "ScoreSet":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), {k: np.zeros(0) for k in _MEASURED})
        return cls(
            np.concatenate([p.index for p in parts]),
            np.concatenate([p.pred for p in parts]),
            {k: np.concatenate([p.values[k] for p in parts]) for k in _MEASURED},
        )


def batch_scores(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, index: torch.Tensor,
                 weight_norm: str) -> ScoreSet:
    """The label-free measures of one batch of features ``phi`` (B, m) under head ``W, b``."""
    m = head_measures(phi, weight, bias, None, weight_norm=weight_norm)
    phi64 = phi.detach().double()
    values = {k: m[k] for k in SCORES}
    values["p_var_sum"] = m["prob_term"]
    values["phi_norm_sq"] = (phi64 * phi64).sum(-1)
    values["w_phi_norm_sq"] = m["logit_norm_sq"]
    return ScoreSet(
        index=index.detach().cpu().numpy().astype(np.int64),
        pred=m["pred"].cpu().numpy().astype(np.int64),
        values={k: v.cpu().numpy().astype(np.float64) for k, v in values.items()},
    )


def score_inputs(
    loaded: LoadedModel,
    data: datamod.DataSource,
    *,
    batch_size: int = 256,
    weight_norm: str = "squared",
    device: torch.device | str = "cpu",
    on_batch: Callable[[ScoreSet], None] | None = None,
    keep: bool = True,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
) -> ScoreSet | None:
    """Score every input of ``data`` (one forward pass per batch; labels are never read).

    ``on_batch`` receives each batch's :class:`ScoreSet` as soon as it is ready; with ``keep=False``
    nothing is accumulated (memory bounded by the batch) and ``None`` is returned. Under torchrun
    (``dist``) rank 0 receives every batch in order; other ranks get nothing.
    """
    head = loaded.head
    parts: list[ScoreSet] = []
    with eval_mode(loaded.model), HeadSplit(loaded.model, head, loaded.layer) as split:
        for i, batch in enumerate(dist.rounds(data, batch_size, device=device)):
            result = None
            if batch is not None:
                x, _y, index = batch
                with torch.no_grad():
                    phi = split.features(x, verify=i == 0)
                result = batch_scores(phi, head.weight, head.bias, index, weight_norm)
            for s in dist.gather(result):
                if on_batch is not None:
                    on_batch(s)
                if keep:
                    parts.append(s)
                if progress is not None:
                    progress(len(s.index))
    return ScoreSet.concat(parts) if keep else None


def attack_and_score(
    loaded: LoadedModel,
    data: datamod.DataSource,
    attack: PGD,
    *,
    batch_size: int = 256,
    weight_norm: str = "squared",
    seed: int = 0,
    device: torch.device | str = "cpu",
    keep_adv: bool = False,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
    store=None,
) -> tuple[ScoreSet, ScoreSet, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Craft one adversarial per input of ``data`` and score the clean and the adversarial inputs.

    The attack uses the labels (it maximises the cross-entropy); the scores do not. Random starts
    come from :func:`flatcli.attacks.batch_generator` per batch, as in
    :func:`flatcli.trajectory.run_attack`, so ``flatrob attack --save-adv`` with the same options and
    seed writes the very same adversarials. Returns ``(clean, adversarial, adv)`` where ``adv`` is
    ``(x, y, index)`` on the CPU when ``keep_adv`` (for ``--save-adv``), else ``None``. ``store``
    (:class:`flatcli.resume.ResumeStore`, ``--resume``) supplies batches an earlier run finished and
    receives every new one.
    """
    head = loaded.head
    clean_parts: list[ScoreSet] = []
    adv_parts: list[ScoreSet] = []
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with eval_mode(loaded.model), HeadSplit(loaded.model, head, loaded.layer, Scaling()) as split:
        for i, batch in enumerate(dist.rounds(data, batch_size, device=device)):
            result = None
            if batch is not None and store is not None:
                result = store.load(dist.batch_number(i), batch[2])
            if batch is not None and result is None:
                x, y, index = batch
                if i == 0:
                    split.verify(x[:2])  # BN in eval mode, samples independent, head is the last linear map
                # Recording keeps the features of x_0 .. x_T from the attack's own forward passes: the
                # clean features are those of x_0 (unless the attack starts at a random point).
                res = attack.run(split, x, y, generator=batch_generator(seed, dist.batch_number(i)), record=True)
                phi_adv = res.phi[-1]
                if attack.random_start:
                    with torch.no_grad():
                        phi_clean = split.features(x)
                else:
                    phi_clean = res.phi[0]
                result = (
                    batch_scores(phi_clean, head.weight, head.bias, index, weight_norm),
                    batch_scores(phi_adv, head.weight, head.bias, index, weight_norm),
                    (res.x_adv.detach().cpu(), y.cpu(), index.cpu()) if keep_adv or store is not None else None,
                )
            for j, (clean_scores, adv_scores, adv_batch) in enumerate(dist.gather(result)):
                if store is not None:
                    store.save(i * dist.world + j, (clean_scores, adv_scores, adv_batch))
                clean_parts.append(clean_scores)
                adv_parts.append(adv_scores)
                if keep_adv:
                    kept.append(adv_batch)
                if progress is not None:
                    progress(len(clean_scores.index))
    if not dist.is_main:
        return ScoreSet.concat([]), ScoreSet.concat([]), None
    adv = tuple(torch.cat(p) for p in zip(*kept)) if keep_adv and kept else None
    return ScoreSet.concat(clean_parts), ScoreSet.concat(adv_parts), adv  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


@dataclass
class DetectSettings:
    method: str = "stump"
    score: str | None = None  # stump: one of SCORES (default relative_sharpness); components: None
    folds: int = 5
    seed: int = 0
    only_successful: bool = False

    def __post_init__(self) -> None:
        if self.method not in core.METHODS:
            raise UsageError(f"unknown --method {self.method!r}; choose one of {', '.join(core.METHODS)}")
        if self.method == "components":
            if self.score not in (None, "components"):
                raise UsageError(
                    f"--score {self.score} conflicts with --method components, which uses the three factors of "
                    "sharpness (sum_j p_j(1-p_j), ||phi||^2, ||W phi||^2); drop --score or use --method stump"
                )
            self.score = "components"
        else:
            self.score = self.score or SCORES[0]
            if self.score not in SCORES:
                raise UsageError(f"unknown --score {self.score!r}; choose one of {', '.join(SCORES)}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise UsageError(f"--folds must be an integer >= 2, got {self.folds!r}")


@dataclass
class DetectOutcome:
    """Result of :func:`fit_detection`.

    ``summary``: the JSON summary (the keys of the issue and more, see :func:`fit_detection`);
    ``rows``: one dict per scored input with :data:`FIT_ROW_KEYS`, clean inputs first;
    ``detector``: fitted on the whole balanced set; ``cv``: the cross-validation result;
    ``clean_score`` / ``adv_score``: the thresholded value of the used inputs (for plots).
    """

    summary: dict
    rows: list[dict]
    detector: core.Detector
    cv: core.CVResult
    clean_score: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    adv_score: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def successful(clean: ScoreSet, adv: ScoreSet) -> np.ndarray:
    """Adversarials whose prediction differs from that of their clean input (matched by source index).

    :class:`UsageError` when an adversarial's clean input is not among ``clean``.
    """
    position = {int(i): k for k, i in enumerate(clean.index)}
    missing = [int(i) for i in adv.index if int(i) not in position]
    if missing:
        raise UsageError(
            f"--only-successful compares each adversarial with its clean input, but {len(missing)} adversarial "
            f"index(es) (e.g. {missing[0]}) are not in the clean data; pass the --data/--split/--limit the "
            "adversarials were made from, or drop --only-successful"
        )
    clean_pred = clean.pred[[position[int(i)] for i in adv.index]]
    return adv.pred != clean_pred


def thresholded(det: core.Detector, X: np.ndarray) -> np.ndarray:
    """The value the detector compares with its threshold: the score (stump) or the logit (components)."""
    if det.method == "stump":
        return np.asarray(X, dtype=np.float64)
    return det.decision(X)


def fit_detection(clean: ScoreSet, adv: ScoreSet, settings: DetectSettings) -> DetectOutcome:
    """Balance, cross-validate and fit a detector of adversarial (1) vs clean (0) inputs.

    With ``only_successful`` only the adversarials that changed the prediction are kept. The larger
    class is then subsampled to the smaller one (:func:`flatcli.detect.balance`, seeded) and
    :func:`flatcli.detect.cross_validate` runs on what is left. Summary keys: ``method, score, folds,
    fold_accuracies, accuracy_mean, accuracy_std, auc, tpr_at_5fpr, threshold, direction, n_clean,
    n_adversarial`` (the counts that were cross-validated), ``n_clean_scored, n_adversarial_scored,
    n_successful, prediction_changed`` (how many / what share of the adversarials changed the prediction of
    their clean input, matched by source index; ``None`` when some clean input is not among ``clean``),
    ``train_accuracy``, ``score_clean``/``score_adversarial`` (statistics of the thresholded value),
    and, for ``components``, ``components`` (coefficients) and ``baseline`` (the default stump on the
    same folds).
    """
    method, score, seed = settings.method, settings.score, settings.seed
    if len(clean) == 0 or len(adv) == 0:
        raise UsageError("no clean or no adversarial inputs to fit a detector on")
    if settings.only_successful:
        changed, matched = successful(clean, adv), True
    else:
        clean_pred, matched = _matched_clean_pred(clean, adv)
        changed = adv.pred != clean_pred
    n_successful = int(changed.sum())
    adv_used = adv
    if settings.only_successful:
        if n_successful == 0:
            raise UsageError(
                "--only-successful: no adversarial changed the prediction; use a stronger attack (--eps, --steps) "
                "or drop --only-successful"
            )
        adv_used = adv.take(changed)
    X_all = np.concatenate([clean.features(method, score), adv_used.features(method, score)])
    y_all = np.concatenate([np.zeros(len(clean), np.int64), np.ones(len(adv_used), np.int64)])
    rows_all = np.arange(len(y_all))
    row_ids, y = core.balance(rows_all, y_all, seed)
    X = X_all[row_ids]
    cv = core.cross_validate(X, y, folds=settings.folds, method=method, seed=seed, score=score)
    det = cv.detector
    pred_used = det.predict(X)
    value_used = thresholded(det, X)

    # Per-input rows: every clean input, every adversarial (used or not), clean first.
    value_clean = thresholded(det, clean.features(method, score))
    value_adv = thresholded(det, adv.features(method, score))
    flag_clean = det.predict(clean.features(method, score))
    flag_adv = det.predict(adv.features(method, score))
    fold = np.full(len(y_all), -1, np.int64)
    oof = np.full(len(y_all), np.nan)
    fold[row_ids] = cv.fold_index
    oof[row_ids] = cv.oof_decision
    # map back from the "all" row numbering (clean, then the adversarials kept) to every adversarial
    adv_pos = np.flatnonzero(changed) if settings.only_successful else np.arange(len(adv))
    fold_adv = np.full(len(adv), -1, np.int64)
    oof_adv = np.full(len(adv), np.nan)
    fold_adv[adv_pos] = fold[len(clean):]
    oof_adv[adv_pos] = oof[len(clean):]
    rows = _rows(clean.index, False, fold[: len(clean)], value_clean, oof[: len(clean)], flag_clean)
    rows += _rows(adv.index, True, fold_adv, value_adv, oof_adv, flag_adv)

    summary = {
        "method": method,
        "score": score,
        "folds": settings.folds,
        "fold_accuracies": cv.fold_accuracies,
        "accuracy_mean": cv.accuracy_mean,
        "accuracy_std": cv.accuracy_std,
        "auc": cv.auc,
        "tpr_at_5fpr": cv.tpr_at_5fpr,
        "threshold": det.threshold if method == "stump" else 0.0,
        "direction": det.direction if method == "stump" else "above",
        "n_clean": int((y == 0).sum()),
        "n_adversarial": int((y == 1).sum()),
        "n_clean_scored": len(clean),
        "n_adversarial_scored": len(adv),
        "n_successful": n_successful if matched else None,
        "prediction_changed": n_successful / len(adv) if matched else None,
        "train_accuracy": float(np.mean(pred_used == (y == 1))),
        "score_clean": describe(value_used[y == 0]),
        "score_adversarial": describe(value_used[y == 1]),
    }
    if method == "components":
        summary["components"] = {
            "features": list(core.COMPONENT_NAMES),
            "coef": dict(zip(core.COMPONENT_NAMES, det.coef)),
            "intercept": det.intercept,
            "log_mean": dict(zip(core.COMPONENT_NAMES, det.mean)),
            "log_scale": dict(zip(core.COMPONENT_NAMES, det.scale)),
        }
        Xs = np.concatenate([clean.values[SCORES[0]], adv_used.values[SCORES[0]]])[row_ids]
        base = core.cross_validate(Xs, y, folds=settings.folds, method="stump", seed=seed, score=SCORES[0])
        summary["baseline"] = {
            "method": "stump",
            "score": SCORES[0],
            "accuracy_mean": base.accuracy_mean,
            "accuracy_std": base.accuracy_std,
            "auc": base.auc,
        }
    det.meta["score_clean"] = summary["score_clean"]
    det.meta["score_adversarial"] = summary["score_adversarial"]
    return DetectOutcome(
        summary=summary, rows=rows, detector=det, cv=cv,
        clean_score=value_used[y == 0], adv_score=value_used[y == 1], labels=y,
    )


def _matched_clean_pred(clean: ScoreSet, adv: ScoreSet) -> tuple[np.ndarray, bool]:
    """Clean predictions matched to the adversarials by source index (the adversarial's own prediction
    where its clean input is absent), and whether every adversarial was matched."""
    position = {int(i): k for k, i in enumerate(clean.index)}
    found = [position.get(int(i)) for i in adv.index]
    pred = np.array([adv.pred[j] if k is None else clean.pred[k] for j, k in enumerate(found)], dtype=np.int64)
    return pred, all(k is not None for k in found)


def _rows(index, adversarial: bool, fold, value, oof, flagged) -> list[dict]:
    out = []
    for i, f, v, o, g in zip(index.tolist(), fold.tolist(), value.tolist(), oof.tolist(), flagged.tolist()):
        used = f >= 0
        out.append({
            "index": i,
            "adversarial": adversarial,
            "used": used,
            "fold": f if used else None,
            "score": v,
            "oof_decision": o if used else None,
            "flagged": g,
        })
    return out


# --------------------------------------------------------------------------------------------
# Applying a saved detector
# --------------------------------------------------------------------------------------------


def check_detector(det: core.Detector, loaded: LoadedModel, *, force: bool = False) -> list[str]:
    """Refuse a detector fitted on another checkpoint or layer (unless ``force``).

    Returns the notes to show when ``force`` let a mismatch through. A detector with no recorded
    checkpoint hash (fitted through the library) counts as a mismatch.
    """
    notes: list[str] = []
    want = det.meta.get("checkpoint_sha256")
    have = loaded.checkpoint.sha256
    if want != have:
        what = (
            f"was fitted on checkpoint {det.meta.get('checkpoint', '?')} (sha256 {str(want)[:12]}...), not on "
            f"{loaded.checkpoint.name} (sha256 {have[:12]}...)"
            if want
            else "records no checkpoint sha256"
        )
        if not force:
            raise DetectorError(
                f"the detector {what}; its threshold means nothing for another model. Fit one for this checkpoint "
                "with `flatrob detect ... --save FILE`, or pass --force to apply it anyway"
            )
        notes.append(f"note: --force: the detector {what}")
    layer = det.meta.get("layer")
    if layer is not None and layer != loaded.layer:
        if not force:
            raise DetectorError(
                f"the detector was fitted on layer {layer!r}, not {loaded.layer!r}; drop --layer or pass --force"
            )
        notes.append(f"note: --force: the detector was fitted on layer {layer!r}, applied to {loaded.layer!r}")
    if det.method == "stump" and det.score not in SCORES:
        raise DetectorError(f"the detector thresholds an unknown score {det.score!r}; re-create it")
    return notes


def apply_detection(
    det: core.Detector,
    loaded: LoadedModel,
    data: datamod.DataSource,
    *,
    batch_size: int = 256,
    weight_norm: str = "squared",
    device: torch.device | str = "cpu",
    on_rows: Callable[[list[dict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
) -> dict:
    """Flag every input of ``data``; rows ``index, score, flagged`` go to ``on_rows`` per batch.

    Returns the summary: ``n, n_flagged, flagged_share, method, score, threshold, direction`` and
    ``score_stats`` (statistics of the thresholded value). Memory is bounded by the batch.
    """
    values: list[np.ndarray] = []
    counts = {"n": 0, "flagged": 0}

    def take(s: ScoreSet) -> None:
        X = s.features(det.method, det.score)
        value = thresholded(det, X)
        flagged = det.predict(X)
        counts["n"] += len(s)
        counts["flagged"] += int(flagged.sum())
        values.append(value)
        if on_rows is not None:
            on_rows([
                {"index": i, "score": v, "flagged": f}
                for i, v, f in zip(s.index.tolist(), value.tolist(), flagged.tolist())
            ])

    score_inputs(loaded, data, batch_size=batch_size, weight_norm=weight_norm, device=device,
                 on_batch=take, keep=False, progress=progress, dist=dist)
    if not dist.is_main:
        return {}
    n = counts["n"]
    return {
        "n": n,
        "n_flagged": counts["flagged"],
        "flagged_share": counts["flagged"] / n if n else float("nan"),
        "method": det.method,
        "score": det.score,
        "threshold": det.threshold if det.method == "stump" else 0.0,
        "direction": det.direction if det.method == "stump" else "above",
        "score_stats": describe(np.concatenate(values) if values else np.zeros(0)),
    }


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def detect_figure(outcome: DetectOutcome, path, title: str = "") -> None:
    """Histograms of the thresholded value for clean and adversarial inputs with the threshold (left;
    log-scaled when every value is positive, as sharpness spans orders of magnitude), and the ROC
    curve of the out-of-fold decisions with the 5%-FPR operating point (right). Written atomically."""
    from flatcli.output import atomic_path
    from flatcli.plots import check_plot_path, require_matplotlib

    require_matplotlib()
    fmt = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    s = outcome.summary
    clean, adv = outcome.clean_score, outcome.adv_score
    both = np.concatenate([clean, adv])
    threshold = float(s["threshold"])
    log = bool(both.size) and bool((both > 0).all()) and threshold > 0
    fig, (ax, roc) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True, width_ratios=(1.6, 1))
    if log:
        lo, hi = np.log10(both.min()), np.log10(both.max())
        bins = np.logspace(lo, hi if hi > lo else lo + 1, 41)
        ax.set_xscale("log")
    else:
        bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 41)
    ax.hist(clean, bins=bins, color="tab:blue", alpha=0.55, label=f"clean (n={len(clean)})")
    ax.hist(adv, bins=bins, color="tab:red", alpha=0.55, label=f"adversarial (n={len(adv)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
               label=f"threshold {threshold:.3g} (flag {s['direction']})")
    label = s["score"] if s["method"] == "stump" else "logit of the components detector"
    ax.set_xlabel(label.replace("_", " "))
    ax.set_ylabel("inputs")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{s['method']}: CV accuracy {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}", fontsize=10)
    fpr, tpr, _ = roc_curve(outcome.labels, outcome.cv.oof_decision)
    roc.plot(fpr, tpr, color="tab:purple", label=f"out-of-fold ROC, AUC {s['auc']:.3f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.axvline(0.05, color="grey", linestyle="--", linewidth=0.8)
    roc.plot([0.05], [s["tpr_at_5fpr"]], "o", color="black", markersize=4,
             label=f"TPR {s['tpr_at_5fpr']:.2f} at 5% FPR")
    roc.set_xlabel("false positive rate (clean flagged)")
    roc.set_ylabel("true positive rate (adversarial flagged)")
    roc.set_xlim(0, 1)
    roc.set_ylim(0, 1.02)
    roc.legend(loc="lower right", fontsize=8)
    roc.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
