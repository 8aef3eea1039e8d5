"""``flatrob detect``: label-free scores of clean and adversarial inputs, a detector
fitted and cross-validated on them (paper appendix D.4), and a saved detector applied to new inputs.

The fitting itself lives in :mod:`flatcli.core.detectors` (pure numpy + scikit-learn); this module feeds it
from a model and a data set:

* :func:`score_inputs` runs the model once per batch and keeps, per input, the label-free measures of
  :func:`flatcli.core.curvature.head_measures`: the :data:`SCORES` (``relative_sharpness``, ``trace_h``,
  ``confidence``, ``relative_flatness_full``) and the three factors of sharpness used by the
  ``components`` detector (:data:`flatcli.core.detectors.COMPONENT_NAMES`: ``sum_j p_j(1-p_j)``,
  ``||phi||^2``, ``||W phi||^2``). No label is read: the detector works at deployment time.
* :func:`attack_and_score` crafts one adversarial per clean input with :class:`flatcli.core.pgd.PGD`
  (the generator seeded and the batches visited exactly as ``flatrob attack`` does, so the
  adversarials are those ``flatrob attack --save-adv`` writes with the same options) and scores both.
* :func:`fit_detection` balances the two classes, cross-validates, fits the final detector, and
  returns the summary, the per-input rows and the detector; :func:`fit` is the whole ``detect`` run
  (scores, fit, provenance in the detector's ``meta``, ``--save``, ``--save-adv``, ``--plot``).
* :func:`apply` streams ``index, score, flagged`` rows for new inputs after :func:`check_detector`
  has checked the detector belongs to this model.

The *score* of an input, as rows and plots show it, is the value the detector thresholds: for a
stump the chosen measure (flagged when above / below the threshold), for ``components`` the
logistic-regression logit (flagged when above 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from flatcli.core import detectors as core
from flatcli.core.curvature import WEIGHT_NORMS, head_measures
from flatcli.core.pgd import PGD, PRESETS, batch_generator
from flatcli.core.statistics import describe
from flatcli.errors import DetectorError, UsageError
from flatcli.inputs.adversarial_file import attack_metadata, save_adversarials
from flatcli.inputs.data import DataSource
from flatcli.inputs.detector_file import save_detector
from flatcli.models.head import HeadSplit
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runtime.loop import RunContext, each_batch, resumed_note, versions

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
    in :data:`SCORES` and :data:`flatcli.core.detectors.COMPONENT_NAMES` (float64).
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


def score_inputs(ctx: RunContext, *, weight_norm: str = "squared") -> ScoreSet | None:
    """Score every input of ``ctx.data`` (one forward pass per batch; labels are never read).

    Under torchrun rank 0 receives every batch in order (other ranks get ``None``).
    """
    parts = list(each_score(ctx, weight_norm=weight_norm))
    return ScoreSet.concat(parts) if ctx.dist.is_main else None


def each_score(ctx: RunContext, *, weight_norm: str = "squared"):
    """The :class:`ScoreSet` of every batch of ``ctx.data`` as soon as it is ready (memory bounded by the batch)."""
    loaded = ctx.loaded
    head = loaded.head
    with HeadSplit(loaded.model, head, loaded.layer) as split:

        def compute(b) -> ScoreSet:
            with torch.no_grad():
                phi = split.features(b.x, verify=b.first)
            return batch_scores(phi, head.weight, head.bias, b.index, weight_norm)

        yield from each_batch(ctx, compute)


def attack_and_score(ctx: RunContext, attack: PGD, *, weight_norm: str = "squared", keep_adv: bool = False,
                     store=None) -> tuple[ScoreSet, ScoreSet, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Craft one adversarial per input of ``ctx.data`` and score the clean and the adversarial inputs.

    The attack uses the labels (it maximises the cross-entropy); the scores do not. Random starts
    come from :func:`flatcli.core.pgd.batch_generator` per batch, as in ``flatrob attack``, so
    ``flatrob attack --save-adv`` with the same options and seed writes the very same adversarials.
    Returns ``(clean, adversarial, adv)`` where ``adv`` is ``(x, y, index)`` on the CPU when
    ``keep_adv`` (for ``--save-adv``), else ``None``. ``store`` (``--resume``) supplies batches an
    earlier run finished and receives every new one.
    """
    loaded = ctx.loaded
    head = loaded.head
    clean_parts: list[ScoreSet] = []
    adv_parts: list[ScoreSet] = []
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with HeadSplit(loaded.model, head, loaded.layer) as split:

        def compute(b) -> tuple:
            if b.first:
                split.verify(b.x[:2])  # BN in eval mode, samples independent, head is the last linear map
            # Recording keeps the features of x_0 .. x_T from the attack's own forward passes: the
            # clean features are those of x_0 (unless the attack starts at a random point).
            res = attack.run(split, b.x, b.y, generator=batch_generator(ctx.seed, b.number), record=True)
            phi_adv = res.phi[-1]
            if attack.random_start:
                with torch.no_grad():
                    phi_clean = split.features(b.x)
            else:
                phi_clean = res.phi[0]
            return (
                batch_scores(phi_clean, head.weight, head.bias, b.index, weight_norm),
                batch_scores(phi_adv, head.weight, head.bias, b.index, weight_norm),
                (res.x_adv.detach().cpu(), b.y.cpu(), b.index.cpu()) if keep_adv or store is not None else None,
            )

        for clean_scores, adv_scores, adv_batch in each_batch(ctx, compute, store=store, resumable=True):
            clean_parts.append(clean_scores)
            adv_parts.append(adv_scores)
            if keep_adv:
                kept.append(adv_batch)
    adv = tuple(torch.cat(p) for p in zip(*kept)) if keep_adv and kept else None
    return ScoreSet.concat(clean_parts), ScoreSet.concat(adv_parts), adv  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


CONVENTIONS = {
    "labels": "0 = clean input, 1 = adversarial input; scores are label-free (the attack alone uses labels)",
    "balance": "the larger class is subsampled to the smaller one with numpy default_rng(seed)",
    "folds": "StratifiedKFold(folds, shuffle=True, random_state=seed); accuracy per held-out fold, std with ddof=0",
    "stump": "exact threshold search maximising balanced accuracy; flags score > threshold (above) or < (below)",
    "components": "logistic regression (class_weight=balanced) on standardised logs of sum_j p_j(1-p_j), "
    "||phi||^2, ||W phi||^2; flags logit > 0",
    "score_column": "the value the detector thresholds: the score (stump) or the logit (components)",
    "auc": "ROC-AUC of the pooled out-of-fold decisions; tpr_at_5fpr the best TPR at an FPR <= 0.05 on that curve",
    "prediction_changed": "share of adversarials whose prediction differs from their clean input's",
}

#: The attack that crafts the adversarials unless options say otherwise (§6.2: PGD-linf, 10 steps, 8/255, 2/255).
DEFAULT_PRESET = "uncanny"


@dataclass
class DetectSettings:
    """How a detector is fitted: the method, its score, the folds, which adversarials count; and the
    attack that crafts them (``None`` when they are read from a file). Ranges are checked here."""

    method: str = "stump"
    score: str | None = None  # stump: one of SCORES (default relative_sharpness); components: None
    folds: int = 5
    only_successful: bool = False
    weight_norm: str = "squared"
    attack: PGD | None = None
    preset: str | None = None  # the preset the attack's unset options came from

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
        if self.weight_norm not in WEIGHT_NORMS:
            raise UsageError(f"--weight-norm must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")

    @classmethod
    def from_options(cls, *, crafted: bool = True, preset: str | None = None, norm=None, eps=None, alpha=None,
                     steps=None, random_start: bool = False, restarts: int = 1, method: str | None = None,
                     folds: int | None = None, weight_norm: str | None = None, **settings) -> "DetectSettings":
        """The command's options; ``crafted`` is false when the adversarials come from a file (no attack)."""
        attack = None
        if crafted:
            preset = preset or DEFAULT_PRESET
            attack = PGD.from_options(preset, norm=norm, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                                      restarts=restarts)
        return cls(method=method or "stump", folds=5 if folds is None else folds,
                   weight_norm=weight_norm or "squared", attack=attack, preset=preset if crafted else None, **settings)

    def config(self) -> dict:
        crafted = self.attack is not None
        return {
            "mode": "fit",
            "method": self.method,
            "score": self.score,
            "folds": self.folds,
            "only_successful": self.only_successful,
            "weight_norm": self.weight_norm,
            "preset": self.preset if crafted else None,
            "preset_values": PRESETS[self.preset] if crafted else None,
            "attack": self.attack.config() if crafted else None,
        }


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


def fit_detection(clean: ScoreSet, adv: ScoreSet, settings: DetectSettings, seed: int = 0) -> DetectOutcome:
    """Balance, cross-validate and fit a detector of adversarial (1) vs clean (0) inputs.

    With ``only_successful`` only the adversarials that changed the prediction are kept. The larger
    class is then subsampled to the smaller one (:func:`flatcli.core.detectors.balance`, seeded) and
    :func:`flatcli.core.detectors.cross_validate` runs on what is left. Summary keys: ``method, score, folds,
    fold_accuracies, accuracy_mean, accuracy_std, auc, tpr_at_5fpr, threshold, direction, n_clean,
    n_adversarial`` (the counts that were cross-validated), ``n_clean_scored, n_adversarial_scored,
    n_successful, prediction_changed`` (how many / what share of the adversarials changed the prediction of
    their clean input, matched by source index; ``None`` when some clean input is not among ``clean``),
    ``train_accuracy``, ``score_clean``/``score_adversarial`` (statistics of the thresholded value),
    and, for ``components``, ``components`` (coefficients) and ``baseline`` (the default stump on the
    same folds).
    """
    method, score = settings.method, settings.score
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
        out.append(dict(zip(FIT_ROW_KEYS, (i, adversarial, used, f if used else None, v, o if used else None, g))))
    return out


# --------------------------------------------------------------------------------------------
# Applying a saved detector
# --------------------------------------------------------------------------------------------


def check_detector(det: core.Detector, loaded, *, force: bool = False) -> list[str]:
    """Refuse a detector fitted on another model or layer (unless ``force``).

    The model is identified by its checkpoint's sha256 (or, for an in-memory network, by the hash of
    its weights). Returns the notes to show when ``force`` let a mismatch through. A detector with no
    recorded hash counts as a mismatch.
    """
    notes: list[str] = []
    (key, have), = loaded.fingerprint.items()
    want = det.meta.get(key)
    if want != have:
        kind = "checkpoint" if key == "checkpoint_sha256" else "weights"
        what = (
            f"was fitted on {kind} {det.meta.get('checkpoint', '?')} (sha256 {str(want)[:12]}...), not on "
            f"{loaded.name} (sha256 {have[:12]}...)"
            if want
            else f"records no {kind} sha256"
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


def fit(ctx: RunContext, settings: DetectSettings, *, adversarial: DataSource | None = None,
        adversarial_path: str | None = None, save: str | None = None, save_adv: str | None = None,
        plot: str | None = None, on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """The ``detect`` run: score clean inputs and adversarials (crafted by ``settings.attack``, or the
    ``adversarial`` data read from ``adversarial_path``), cross-validate and fit; write ``save``
    (the detector, with provenance in its ``meta``), ``save_adv`` and ``plot``. The detector is in
    ``artifacts["detector"]``. Under torchrun rank 0 fits and writes.
    """
    if (adversarial is None) == (settings.attack is None):
        raise UsageError("detect needs either an attack or a file of adversarials, not both")
    adv_meta = attack_metadata(adversarial) if adversarial is not None else None
    notes = []
    made_on = (adv_meta or {}).get("checkpoint_sha256")
    if made_on and made_on != ctx.loaded.fingerprint.get("checkpoint_sha256"):
        notes.append(f"note: the adversarials in {adversarial_path} were crafted on another checkpoint "
                     f"(sha256 {made_on[:12]}...): a transfer attack")
    config = {**ctx.describe(), **settings.config(), "adversarial": adversarial_path, "adversarial_metadata": adv_meta,
              "save": save, "save_adv": save_adv, "plot": plot, "conventions": CONVENTIONS}
    store = None
    if adversarial is None:
        ctx.expect(len(ctx.data))
        store = ctx.store("detect", {"weight_norm": settings.weight_norm, **settings.attack.config()}, {"ScoreSet": ScoreSet},
                          index_of=lambda r: r[0].index)
        clean, adv, adv_tensors = attack_and_score(ctx, settings.attack, weight_norm=settings.weight_norm,
                                                   keep_adv=save_adv is not None, store=store)
        notes += resumed_note(store, ctx.resume)
    else:
        ctx.expect(len(ctx.data) + len(adversarial))
        clean = score_inputs(ctx, weight_norm=settings.weight_norm)
        adv = score_inputs(ctx.with_data(adversarial), weight_norm=settings.weight_norm)
        adv_tensors = None
    if not ctx.dist.is_main:
        return Result("detect", config, {})
    outcome = fit_detection(clean, adv, settings, seed=ctx.seed)
    rows = Rows(on_rows, keep_samples)
    rows(outcome.rows)
    det = outcome.detector
    loaded = ctx.loaded
    det.meta.update({
        "checkpoint": loaded.name,
        **loaded.fingerprint,
        "arch": loaded.spec.arch,
        "layer": loaded.layer,
        "weight_norm": settings.weight_norm,
        "data": ctx.data.name,
        "split": ctx.split,
        "limit": ctx.limit,
        "attack": config["attack"],
        "adversarial": adversarial_path,
        "only_successful": settings.only_successful,
    })
    det.meta["versions"] = {**det.meta.get("versions", {}), **versions()}
    if save_adv is not None and adv_tensors is not None:
        x_adv, y_adv, index = adv_tensors
        save_adversarials(save_adv, x_adv, y_adv, index, **loaded.fingerprint, data=ctx.data.name, seed=ctx.seed,
                          targeted=None, scale=1.0, scale_bias=True, **settings.attack.config())
    if plot is not None:
        from flatcli.outputs.figures.detect import detect_figure

        pgd = settings.attack
        what = (f"PGD-{pgd.norm} eps {pgd.eps:g}, alpha {pgd.alpha:g}, {pgd.steps} steps" if pgd is not None
                else f"adversarials from {adversarial_path}")
        detect_figure(outcome, plot, title=f"{loaded.name} ({ctx.data.name}): {what}")
    if save is not None:
        save_detector(save, det)
    return Result("detect", config, outcome.summary, rows.kept, artifacts={"detector": det, "outcome": outcome},
                  notes=notes)


def apply(ctx: RunContext, det: core.Detector, *, detector_path: str | None = None, force: bool = False,
          on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Flag every input of ``ctx.data`` with a saved detector; rows ``index, score, flagged`` go to
    ``on_rows`` per batch. Summary: ``n, n_flagged, flagged_share, method, score, threshold, direction``,
    ``score_stats`` (statistics of the thresholded value) and ``checkpoint_match``. Memory is bounded by
    the batch. The detector's weight norm is used.
    """
    notes = check_detector(det, ctx.loaded, force=force)
    weight_norm = det.meta.get("weight_norm", "squared")
    (key, have), = ctx.loaded.fingerprint.items()
    config = {
        **ctx.describe(),
        "mode": "apply",
        "detector": detector_path,
        "detector_checkpoint_sha256": det.meta.get("checkpoint_sha256"),
        "force": force,
        "method": det.method,
        "score": det.score,
        "weight_norm": weight_norm,
        "conventions": {k: CONVENTIONS[k] for k in ("stump", "components", "score_column")},
    }
    ctx.expect(len(ctx.data))
    rows = Rows(on_rows, keep_samples)
    values: list[np.ndarray] = []
    n = flagged_total = 0
    for s in each_score(ctx, weight_norm=weight_norm):
        X = s.features(det.method, det.score)
        with np.errstate(all="ignore"):  # a tampered detector overflows: refused below, not warned about
            value, decision = thresholded(det, X), det.decision(X)
        bad = ~(np.isfinite(value) & np.isfinite(decision))
        if bad.any():
            raise DetectorError(
                f"the detector {detector_path or '(in memory)'} gives non-finite scores on {int(bad.sum())} input(s) "
                f"(first: index {int(s.index[bad][0])}); its coefficients are out of range: re-fit it with "
                "`flatrob detect ... --save FILE`"
            )
        flagged = decision > 0
        n += len(s)
        flagged_total += int(flagged.sum())
        values.append(value)
        rows([dict(zip(APPLY_ROW_KEYS, vals)) for vals in zip(s.index.tolist(), value.tolist(), flagged.tolist())])
    if not ctx.dist.is_main:
        return Result("detect", config, {})
    summary = {
        "n": n,
        "n_flagged": flagged_total,
        "flagged_share": flagged_total / n if n else float("nan"),
        "method": det.method,
        "score": det.score,
        "threshold": det.threshold if det.method == "stump" else 0.0,
        "direction": det.direction if det.method == "stump" else "above",
        "score_stats": describe(np.concatenate(values) if values else np.zeros(0)),
        "checkpoint_match": det.meta.get(key) == have,
    }
    return Result("detect", config, summary, rows.kept, notes=notes)
