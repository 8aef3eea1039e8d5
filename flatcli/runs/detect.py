"""``flatrob detect``: detectors of adversarial inputs fitted and cross-validated on label-free features of clean and
adversarial inputs (paper appendix D.4, with the standard baselines beside it), and a saved detector applied.

The estimators live in :mod:`flatcli.core.detectors` (pure numpy + scikit-learn), the features in
:mod:`flatcli.core.detection_features`, the scoring passes in :mod:`flatcli.runs.detect_scores` and the
adaptive attack in :mod:`flatcli.runs.detect_adaptive`; this module puts them together:

* :class:`DetectSettings`: the method (``stump``, ``components``, ``mahalanobis``, ``profile``,
  ``ensemble``, or ``all`` of them on the same folds), its options, the attack and the adaptive check;
* :func:`fit_detection` balances the two classes, cross-validates every method asked for, fits the
  final detector (for ``all``: the best one, by mean CV accuracy), and returns the summary, the
  per-input rows and the detector; :func:`fit` is the whole ``detect`` run (the Mahalanobis fit on
  ``--fit-data``, the scores, the fit, the adaptive check, provenance in the detector's ``meta``,
  ``--save``, ``--save-adv``, ``--plot``);
* :func:`apply` streams ``index, score, flagged`` rows for new inputs after :func:`check_detector`
  has checked the detector belongs to this model.

The *score* of an input, as rows and plots show it, is the value the detector thresholds: for a
stump (and ``mahalanobis``) the chosen measure (flagged when above / below the threshold), for the
logistic methods (``components``, ``profile``, ``ensemble``) the logit (flagged when above 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flatcli.core import detectors as core
from flatcli.core.curvature import WEIGHT_NORMS
from flatcli.core.detection_features import SCORES, Probe
from flatcli.core.attack_losses import check_loss
from flatcli.core.attacks import PRESETS, Attack
from flatcli.core.statistics import describe
from flatcli.errors import DetectorError, OptionError, UsageError
from flatcli.options import AttackOptions, WeightNormOptions
from flatcli.options.calls import chosen_of
from flatcli.options.detect import ALL, DetectOptions
from flatcli.inputs.adversarial_file import attack_metadata, save_adversarials
from flatcli.inputs.data import DataSource
from flatcli.inputs.detector_file import save_detector
from flatcli.runs.detect_scores import Features, ScoreSet, attack_and_score, each_score, fit_mahalanobis, score_inputs
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runs.sanity import accuracy_of, checked
from flatcli.runtime.loop import RunContext, resumed_note, versions

__all__ = ["SCORES", "DetectSettings", "DetectOutcome", "ScoreSet", "fit_detection", "fit", "apply", "check_detector",
           "score_inputs"]

#: Per-input rows of a fit: ``adversarial`` is the true class, ``used`` whether the input was in the
#: balanced set, ``fold`` its held-out fold, ``oof_decision`` the decision value of the detector that
#: did not see it, ``flagged`` the final detector's verdict.
FIT_ROW_KEYS = ("index", "adversarial", "used", "fold", "score", "oof_decision", "flagged")
APPLY_ROW_KEYS = ("index", "score", "flagged")

_CONVENTIONS_BEFORE = {
    "labels": "0 = clean input, 1 = adversarial input; scores are label-free (the attack alone uses labels)",
    "balance": "the larger class is subsampled to the smaller one with numpy default_rng(seed)",
    "folds": "StratifiedKFold(folds, shuffle=True, random_state=seed); accuracy per held-out fold, std with ddof=0",
}
_CONVENTIONS_AFTER = {
    "all": "every method on the same balanced inputs and folds; the best mean CV accuracy (then AUC) is kept",
    "score_column": "the value the detector thresholds: the score (stump, mahalanobis) or the logit (the others)",
    "auc": "ROC-AUC of the pooled out-of-fold decisions; tpr_at_5fpr the best TPR at an FPR <= 0.05 on that curve",
    "prediction_changed": "share of adversarials whose prediction differs from their clean input's",
    "evaded": "share of adversarials that change the prediction and are not flagged (out of fold)",
    "adaptive": "PGD (the attack's settings) from every clean input used on CE(f(x), y), minus weight * d(x) / "
    "std(out-of-fold d) once the prediction is wrong, d the decision of the input's fold detector; the first "
    "iterate that is misclassified with d < 0, else the final one, scored by that detector",
}


def conventions() -> dict[str, str]:
    """The conventions of a fit, with each registered method's own (:data:`flatcli.core.detectors.METHODS`), the
    options they name worded as flags."""
    methods = {m: cls.conventions_worded(lambda name: "--" + name.replace("_", "-")) for m, cls in core.METHODS.items()}
    return {**_CONVENTIONS_BEFORE, **methods, **_CONVENTIONS_AFTER}


#: The attack that crafts the adversarials unless options say otherwise (§6.2: PGD-linf, 10 steps, 8/255, 2/255).
DEFAULT_PRESET = "uncanny"
#: ``--adaptive-weight``: the weight of the detector's (normalised) decision in the adaptive objective.
DEFAULT_ADAPTIVE_WEIGHT = 3.0
#: The largest --adaptive-weight (the penalty is a logistic score: beyond this the attack ignores the loss).
MAX_ADAPTIVE_WEIGHT = 1e6


@dataclass
class DetectSettings:
    """How a detector is fitted: the method, its score, the folds, which adversarials count, the profile's
    probes, the adaptive check; and the attack that crafts the adversarials (``None`` when they are read
    from a file). Ranges and conflicts are checked here."""

    method: str = "stump"
    score: str | None = None  # one of the method's scores (the stump's: SCORES, default relative_sharpness)
    folds: int = 5
    only_successful: bool = False
    weight_norm: str = "squared"
    attack: Attack | None = None
    preset: str | None = None  # the preset the attack's unset options came from
    probe: Probe | None = None  # profile, ensemble, all (default Probe())
    adaptive: bool = False
    adaptive_weight: float = DEFAULT_ADAPTIVE_WEIGHT
    language: bool = False  # a causal language model's prompts (the stump on one of core.PROMPT_SCORES)

    def __post_init__(self) -> None:
        if self.method not in core.method_names() + (ALL,):
            raise OptionError("method", f"unknown {{}} {self.method!r}; choose one of "
                              f"{', '.join(core.method_names() + (ALL,))}")
        if self.language:
            self._check_language()
        scores = core.METHODS[self.method].scores if self.method != ALL else (None,)
        if self.method == "stump":  # the scores of this kind of input only
            scores = tuple(s for s in scores if (s in core.PROMPT_SCORES) == self.language)
        if len(scores) > 1:
            self.score = self.score or scores[0]
            if self.score not in scores:
                raise OptionError("score", f"unknown {{}} {self.score!r}; choose one of {', '.join(scores)}")
        elif self.score not in (None, scores[0]):
            what = core.METHODS[self.method].summary if self.method != ALL else "every method's own score"
            raise OptionError(("score", "method", "score", "method"),
                              f"{{}} {self.score} conflicts with {{}} {self.method} ({what}); drop {{}} or use {{}} stump")
        else:
            self.score = scores[0]
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise OptionError("folds", f"{{}} must be an integer >= 2, got {self.folds!r}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise OptionError("weight_norm", f"{{}} must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.uses_probe:
            self.probe = self.probe or Probe()
        elif self.probe is not None:
            probing = ", ".join(m for m, cls in core.METHODS.items() if cls.needs_probe)
            raise OptionError(("probe_steps", "probe_size", "method"),
                              f"{{}}/{{}} set the probes of the curvature profile, which {{}} {self.method} "
                              f"does not use; drop them or use method {probing} or all")
        if self.adaptive and self.attack is None:
            raise OptionError(("adaptive", "adversarial"), "{} crafts adversarials against the fitted detector; it "
                              "needs the attack options, not {}")
        w = self.adaptive_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or not 0 < w <= MAX_ADAPTIVE_WEIGHT:
            raise OptionError("adaptive_weight", f"{{}} must be a finite number > 0 and at most "
                              f"{MAX_ADAPTIVE_WEIGHT:g}, got {w!r}")

    def _check_language(self) -> None:
        """Refuse what needs an image classifier: other methods than the stump, the adaptive PGD attack."""
        if self.method != "stump":
            raise OptionError(("method", "method"), f"{{}} {self.method} reads features of an image classifier (the "
                              "softmax factors, probes, class means); a language model's prompts are fitted by {} "
                              "stump")
        if self.adaptive:
            raise OptionError("adaptive", "{} runs PGD on images against the detector; it does not apply to a "
                              "language model's prompts: drop it")

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods cross-validated: the one asked for, or all of them."""
        return core.method_names() if self.method == ALL else (self.method,)

    @property
    def uses_probe(self) -> bool:
        return any(core.METHODS[m].needs_probe for m in self.methods)

    @property
    def uses_mahalanobis(self) -> bool:
        """Whether the class statistics of ``--fit-data`` are needed."""
        return any(core.METHODS[m].needs_mahalanobis for m in self.methods)

    def features(self, mahalanobis: core.MahalanobisModel | None = None) -> Features:
        """What the scoring passes compute for these methods."""
        return Features(self.weight_norm, self.probe if self.uses_probe else None, mahalanobis)

    @classmethod
    def from_options(cls, *, crafted: bool = True, **options) -> "DetectSettings":
        """The settings of keyword options, as the API takes them (``method="stump", folds=3, ...``)."""
        return cls.from_groups(chosen_of(options, AttackOptions, WeightNormOptions, DetectOptions), crafted=crafted)

    @classmethod
    def from_groups(cls, chosen, *, crafted: bool = True, language: bool = False) -> "DetectSettings":
        """The settings of one call's option groups (:mod:`flatcli.options`); ``crafted`` is false when the
        adversarials come from a file (no attack), ``language`` when GCG crafts them for a language model's prompts
        (:mod:`flatcli.runs.lm_detect`; no image attack either)."""
        options = chosen.detection
        attack = preset = None
        if crafted and not language:
            preset = chosen.attack.preset or DEFAULT_PRESET
            attack = chosen.attack.make(preset)
            if options.adaptive and attack.kind != "pgd":
                raise OptionError(("adaptive", "attack"), f"{{}} runs PGD on its own objective; drop {{}} {attack.kind}")
        if options.adaptive_weight is not None and not options.adaptive:
            raise OptionError(("adaptive_weight", "adaptive"), "{} weighs the detector in the adaptive attack; add {} "
                              "or drop it")
        probe = None
        if options.probe_steps is not None or options.probe_size is not None:
            default = Probe()
            probe = Probe(default.steps if options.probe_steps is None else options.probe_steps,
                          default.size if options.probe_size is None else options.probe_size)
        return cls(method=options.method or "stump", score=options.score,
                   folds=5 if options.folds is None else options.folds, only_successful=options.only_successful,
                   weight_norm=chosen.head.norm, attack=attack, preset=preset, probe=probe, adaptive=options.adaptive,
                   adaptive_weight=DEFAULT_ADAPTIVE_WEIGHT if options.adaptive_weight is None else
                   options.adaptive_weight, language=language)

    def config(self) -> dict:
        crafted = self.attack is not None
        return {
            "mode": "fit",
            "method": self.method,
            "score": self.score,
            "folds": self.folds,
            "only_successful": self.only_successful,
            "weight_norm": self.weight_norm,
            "probe": self.probe.config() if self.probe is not None else None,
            "adaptive": self.adaptive,
            "adaptive_weight": self.adaptive_weight if self.adaptive else None,
            "preset": self.preset if crafted else None,
            "preset_values": PRESETS[self.preset] if crafted else None,
            "attack": self.attack.config() if crafted else None,
        }


@dataclass
class MethodFit:
    """One method cross-validated on the balanced inputs: its columns, features ``X``, CV result and summary;
    ``evaded``: the share of the used adversarials that changed the prediction and were not flagged out of fold."""

    method: str
    columns: tuple[str, ...]
    X: np.ndarray
    cv: core.CVResult
    summary: dict
    evaded: float


@dataclass
class DetectOutcome:
    """Result of :func:`fit_detection`.

    ``summary``: the JSON summary (see :func:`fit_detection`); ``rows``: one dict per scored input with
    :data:`FIT_ROW_KEYS`, clean inputs first; ``detector``: the chosen method fitted on the whole
    balanced set; ``cv``: its cross-validation; ``baseline``: the cross-validation of the
    baseline stump when the summary has one; ``clean_score`` / ``adv_score``: the thresholded value of
    the used inputs (for plots); ``fits``: every method's :class:`MethodFit`; ``clean_used``: positions
    in the clean :class:`ScoreSet` of the clean inputs in the balanced set, in order (their folds are
    ``cv.fold_index[labels == 0]``).
    """

    summary: dict
    rows: list[dict]
    detector: core.Detector
    cv: core.CVResult
    clean_score: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    adv_score: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    fits: dict[str, MethodFit] = field(repr=False, default_factory=dict)
    clean_used: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    baseline: core.CVResult | None = field(repr=False, default=None)


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


def score_of(method: str, settings: DetectSettings) -> str:
    """The score ``method`` reads under ``settings``: the one asked for, or the method's default (``all``)."""
    cls = core.METHODS[method]
    return cls.check_score(settings.score if settings.method == method else None)


def probe_of(method: str, settings: DetectSettings) -> dict | None:
    """The probe settings ``method`` needs under ``settings`` (``None`` when it needs none)."""
    return settings.probe.config() if core.METHODS[method].needs_probe else None


def fit_detection(clean: ScoreSet, adv: ScoreSet, settings: DetectSettings, seed: int = 0,
                  mahalanobis: core.MahalanobisModel | None = None, baseline: str | None = None) -> DetectOutcome:
    """Balance, cross-validate and fit detectors of adversarial (1) vs clean (0) inputs.

    With ``only_successful`` only the adversarials that changed the prediction are kept. The larger
    class is then subsampled to the smaller one (:func:`flatcli.core.detectors.balance`, seeded) and
    :func:`flatcli.core.detectors.cross_validate` runs every method of ``settings.methods`` on what is
    left, on the same folds. ``mahalanobis`` is the model the ``mahalanobis`` column was scored with.
    ``baseline`` names the score of a baseline stump reported whatever the method (a language model's
    perplexity filter); by default the stump on relative sharpness is the baseline of every other method.

    Summary keys: ``method, score, folds, fold_accuracies, accuracy_mean, accuracy_std, auc,
    tpr_at_5fpr, threshold, direction, n_clean, n_adversarial`` (the counts that were cross-validated),
    ``n_clean_scored, n_adversarial_scored, n_successful, prediction_changed`` (how many / what share of
    the adversarials changed the prediction of their clean input, matched by source index; ``None`` when
    some clean input is not among ``clean``), ``train_accuracy``, ``score_clean``/``score_adversarial``
    (statistics of the thresholded value); for every method but the stump ``baseline`` (the default stump
    on the same folds: ``method, score, accuracy_mean, accuracy_std, auc, fold_accuracies, tpr_at_5fpr``)
    and its parameters (``components``; ``logistic`` and ``probe``; ``mahalanobis``). For ``all`` they
    are those of the best method, plus ``best`` (its name) and ``methods`` (per method ``fold_accuracies,
    accuracy_mean, accuracy_std, auc, tpr_at_5fpr, evaded``).
    """
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
            what, stronger = (("no suffix made greedy decoding reproduce its target", "--steps, --search-width")
                              if settings.language else ("no adversarial changed the prediction", "--eps, --steps"))
            raise UsageError(f"--only-successful: {what}; use a stronger attack ({stronger}) or drop --only-successful")
        adv_used = adv.take(changed)
    y_all = np.concatenate([np.zeros(len(clean), np.int64), np.ones(len(adv_used), np.int64)])
    row_ids, y = core.balance(np.arange(len(y_all)), y_all, seed)
    counts = {
        "n_clean": int((y == 0).sum()),
        "n_adversarial": int((y == 1).sum()),
        "n_clean_scored": len(clean),
        "n_adversarial_scored": len(adv),
        "n_successful": n_successful if matched else None,
        "prediction_changed": n_successful / len(adv) if matched else None,
    }
    changed_used = np.concatenate([np.zeros(len(clean), bool), changed[changed] if settings.only_successful
                                   else changed])[row_ids]

    fits: dict[str, MethodFit] = {}
    for method in settings.methods:
        score, probe = score_of(method, settings), probe_of(method, settings)
        columns = core.METHODS[method].columns_for(score, probe)
        X = np.concatenate([clean.features(columns), adv_used.features(columns)])[row_ids]
        cv = core.cross_validate(
            X, y, folds=settings.folds, method=method, seed=seed, score=score,
            mahalanobis=mahalanobis if core.METHODS[method].needs_mahalanobis else None, probe=probe,
        )
        evaded = float(np.mean(changed_used[y == 1] & (cv.oof_decision[y == 1] <= 0)))
        fits[method] = MethodFit(method, columns, X, cv, _method_summary(method, cv, X, y, settings, counts), evaded)
    best = max(settings.methods, key=lambda m: (fits[m].cv.accuracy_mean, fits[m].cv.auc,
                                                -settings.methods.index(m)))
    chosen = fits[best]
    summary = chosen.summary
    base = None
    if best != "stump" or baseline is not None:
        base_score = baseline or SCORES[0]
        stump = fits.get("stump")
        base = stump.cv if stump is not None and stump.cv.detector.score == base_score else core.cross_validate(
            np.concatenate([clean.values[base_score], adv_used.values[base_score]])[row_ids], y,
            folds=settings.folds, method="stump", seed=seed, score=base_score)
        summary["baseline"] = {
            "method": "stump",
            "score": base_score,
            "accuracy_mean": base.accuracy_mean,
            "accuracy_std": base.accuracy_std,
            "auc": base.auc,
            "fold_accuracies": base.fold_accuracies,
            "tpr_at_5fpr": base.tpr_at_5fpr,
        }
    if settings.method == ALL:
        summary["best"] = best
        summary["methods"] = {m: {**{k: f.summary[k] for k in ("fold_accuracies", "accuracy_mean", "accuracy_std",
                                                                "auc", "tpr_at_5fpr")}, "evaded": f.evaded}
                              for m, f in fits.items()}

    det, cv, X = chosen.cv.detector, chosen.cv, chosen.X
    value_used = det.thresholded(X)
    # Per-input rows: every clean input, every adversarial (used or not), clean first.
    Xc, Xa = clean.features(chosen.columns), adv.features(chosen.columns)
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
    rows = _rows(clean.index, False, fold[: len(clean)], det.thresholded(Xc), oof[: len(clean)], det.predict(Xc))
    rows += _rows(adv.index, True, fold_adv, det.thresholded(Xa), oof_adv, det.predict(Xa))

    det.meta["score_clean"] = summary["score_clean"]
    det.meta["score_adversarial"] = summary["score_adversarial"]
    return DetectOutcome(
        summary=summary, rows=rows, detector=det, cv=cv,
        clean_score=value_used[y == 0], adv_score=value_used[y == 1], labels=y, fits=fits,
        clean_used=row_ids[y == 0], baseline=base,
    )


def _method_summary(method: str, cv: core.CVResult, X: np.ndarray, y: np.ndarray, settings: DetectSettings,
                    counts: dict) -> dict:
    """The fit summary of one method (the keys of :func:`fit_detection`, the baseline and ``best`` aside)."""
    det = cv.detector
    value = det.thresholded(X)
    threshold, direction = det.operating_point()
    return {
        "method": method,
        "score": det.score,
        "folds": settings.folds,
        "fold_accuracies": cv.fold_accuracies,
        "accuracy_mean": cv.accuracy_mean,
        "accuracy_std": cv.accuracy_std,
        "auc": cv.auc,
        "tpr_at_5fpr": cv.tpr_at_5fpr,
        "threshold": threshold,
        "direction": direction,
        **counts,
        "train_accuracy": float(np.mean(det.predict(X) == (y == 1))),
        "score_clean": describe(value[y == 0]),
        "score_adversarial": describe(value[y == 1]),
        **det.parameters(),
    }


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
    recorded hash counts as a mismatch. A Mahalanobis model must fit the head (classes, feature
    dimension) even with ``force``.
    """
    if det.score in core.PROMPT_SCORES:
        raise DetectorError(f"the detector thresholds {det.score} of a language model's prompts; apply it to that "
                            "language model with --data prompts:FILE")
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
    if det.score not in det.scores:
        raise DetectorError(f"the detector thresholds an unknown score {det.score!r}; re-create it")
    maha = det.mahalanobis
    if maha is not None and (maha.num_classes, maha.dim) != (loaded.num_classes, loaded.head.in_features):
        raise DetectorError(
            f"the detector's Mahalanobis model has {maha.num_classes} classes of {maha.dim} features, but layer "
            f"{loaded.layer!r} maps {loaded.head.in_features} features to {loaded.num_classes} classes; re-create it"
        )
    return notes


def fit(ctx: RunContext, settings: DetectSettings, *, adversarial: DataSource | None = None,
        adversarial_path: str | None = None, fit_data: DataSource | None = None, save: str | None = None,
        save_adv: str | None = None, plot: str | None = None, on_rows: OnRows | None = None,
        keep_samples: bool = False) -> Result:
    """The ``detect`` run: fit the Mahalanobis model on ``fit_data`` (clean, labelled; needed by
    ``mahalanobis``, ``ensemble``, ``all``), score clean inputs and adversarials (crafted by
    ``settings.attack``, or the ``adversarial`` data read from ``adversarial_path``), cross-validate and
    fit; with ``settings.adaptive`` attack the fitted detectors adaptively
    (:func:`flatcli.runs.detect_adaptive.adaptive_check`); write ``save`` (the detector, with provenance
    in its ``meta``), ``save_adv`` and ``plot``. The detector is in ``artifacts["detector"]``. Under
    torchrun rank 0 fits and writes (with ``adaptive`` every rank fits, then attacks its share).
    """
    from flatcli.runs.detect_adaptive import adaptive_check

    if (adversarial is None) == (settings.attack is None):
        raise UsageError("detect needs either an attack or a file of adversarials, not both")
    if settings.attack is not None:
        check_loss(settings.attack.loss, ctx.loaded.num_classes)
    if settings.uses_mahalanobis != (fit_data is not None):
        raise UsageError("the Mahalanobis model needs fit data (--fit-data), and only mahalanobis, ensemble and all "
                         "use it")
    adv_meta = attack_metadata(adversarial) if adversarial is not None else None
    notes = []
    made_on = (adv_meta or {}).get("checkpoint_sha256")
    if made_on and made_on != ctx.loaded.fingerprint.get("checkpoint_sha256"):
        notes.append(f"note: the adversarials in {adversarial_path} were crafted on another checkpoint "
                     f"(sha256 {made_on[:12]}...): a transfer attack")
    config = {**ctx.describe(), **settings.config(), "fit_data": fit_data.name if fit_data is not None else None,
              "adversarial": adversarial_path, "adversarial_metadata": adv_meta, "save": save, "save_adv": save_adv,
              "plot": plot, "conventions": conventions()}
    scored = len(ctx.data) * (1 + settings.adaptive) + (len(adversarial) if adversarial is not None else 0)
    ctx.expect(scored + (2 * len(fit_data) if fit_data is not None else 0))
    mahalanobis = fit_mahalanobis(ctx.with_data(fit_data)) if fit_data is not None else None
    features = settings.features(mahalanobis)
    everywhere = settings.adaptive  # every rank fits the detectors it then attacks
    store = None
    if adversarial is None:
        store = ctx.store("detect", {"weight_norm": settings.weight_norm, **settings.attack.config(),
                                     **features.identity()},
                          {"ScoreSet": ScoreSet}, index_of=lambda r: r[0].index)
        clean, adv, adv_tensors = attack_and_score(ctx, settings.attack, features, keep_adv=save_adv is not None,
                                                   store=store, everywhere=everywhere)
        notes += resumed_note(store, ctx.resume)
    else:
        clean = score_inputs(ctx, features)
        adv = score_inputs(ctx.with_data(adversarial), features)
        adv_tensors = None
    if not (ctx.dist.is_main or everywhere):
        return Result("detect", config, {})
    outcome = fit_detection(clean, adv, settings, seed=ctx.seed, mahalanobis=mahalanobis)
    if settings.adaptive:
        checks = adaptive_check(ctx, settings, outcome, clean)
        if not ctx.dist.is_main:
            return Result("detect", config, {})
        if settings.method == ALL:
            for m, check in checks.items():
                outcome.summary["methods"][m]["adaptive"] = check
        outcome.summary["adaptive"] = checks[outcome.detector.method]
        outcome.detector.meta["adaptive"] = outcome.summary["adaptive"]
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
        "fit_data": config["fit_data"],
        "attack": config["attack"],
        "adversarial": adversarial_path,
        "only_successful": settings.only_successful,
        "selected_from": list(settings.methods),
    })
    det.meta["versions"] = {**det.meta.get("versions", {}), **versions()}
    if save_adv is not None and adv_tensors is not None:
        x_adv, y_adv, index = adv_tensors
        save_adversarials(save_adv, x_adv, y_adv, index, **loaded.fingerprint, data=ctx.data.name, seed=ctx.seed,
                          targeted=None, scale=1.0, scale_bias=True, **settings.attack.config())
    if plot is not None:
        from flatcli.outputs.figures.detect import detect_figure

        what = (settings.attack.describe() if settings.attack is not None
                else f"adversarials from {adversarial_path}")
        detect_figure(outcome, plot, title=f"{loaded.name} ({ctx.data.name}): {what}")
    if save is not None:
        save_detector(save, det)
    return checked(Result("detect", config, outcome.summary, rows.kept, artifacts={"detector": det, "outcome": outcome},
                          notes=notes), ctx, accuracy_of(ctx, clean.index, clean.pred))


def apply(ctx: RunContext, det: core.Detector, *, detector_path: str | None = None, force: bool = False,
          on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Flag every input of ``ctx.data`` with a saved detector; rows ``index, score, flagged`` go to
    ``on_rows`` per batch. Summary: ``n, n_flagged, flagged_share, method, score, threshold, direction``,
    ``score_stats`` (statistics of the thresholded value) and ``checkpoint_match``. Memory is bounded by
    the batch (features are computed per batch, only the per-input values are kept). The detector's
    weight norm, probes and Mahalanobis model are used.
    """
    notes = check_detector(det, ctx.loaded, force=force)
    features = Features.of(det)
    (key, have), = ctx.loaded.fingerprint.items()
    config = {
        **ctx.describe(),
        "mode": "apply",
        "detector": detector_path,
        "detector_checkpoint_sha256": det.meta.get("checkpoint_sha256"),
        "force": force,
        "method": det.method,
        "score": det.score,
        "weight_norm": features.weight_norm,
        "probe": det.probe,
        "conventions": {k: conventions()[k] for k in ("stump", det.method, "score_column")},
    }
    ctx.expect(len(ctx.data))
    rows = Rows(on_rows, keep_samples)
    values: list[np.ndarray] = []
    flagged_total = 0
    columns = det.columns()
    for s in each_score(ctx, features):
        X = s.features(columns)
        with np.errstate(all="ignore"):  # a tampered detector overflows: refused below, not warned about
            value, decision = det.thresholded(X), det.decision(X)
        bad = ~(np.isfinite(value) & np.isfinite(decision))
        if bad.any():
            raise DetectorError(
                f"the detector {detector_path or '(in memory)'} gives non-finite scores on {int(bad.sum())} input(s) "
                f"(first: index {int(s.index[bad][0])}); its coefficients are out of range: re-fit it with "
                "`flatrob detect ... --save FILE`"
            )
        flagged = decision > 0
        flagged_total += int(flagged.sum())
        values.append(value)
        rows([dict(zip(APPLY_ROW_KEYS, vals)) for vals in zip(s.index.tolist(), value.tolist(), flagged.tolist())])
    if not ctx.dist.is_main:
        return Result("detect", config, {})
    summary = applied_summary(det, np.concatenate(values) if values else np.zeros(0), flagged_total,
                              det.meta.get(key) == have)
    return Result("detect", config, summary, rows.kept, notes=notes)


def applied_summary(det: core.Detector, values: np.ndarray, n_flagged: int, match: bool) -> dict:
    """The summary of a saved detector applied: ``n, n_flagged, flagged_share, method, score, threshold,
    direction``, ``score_stats`` (statistics of the thresholded ``values``) and ``checkpoint_match``."""
    n = len(values)
    threshold, direction = det.operating_point()
    return {
        "n": n,
        "n_flagged": n_flagged,
        "flagged_share": n_flagged / n if n else float("nan"),
        "method": det.method,
        "score": det.score,
        "threshold": threshold,
        "direction": direction,
        "score_stats": describe(values),
        "checkpoint_match": match,
    }
