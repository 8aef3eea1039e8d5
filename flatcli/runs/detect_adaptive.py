"""The adaptive check of ``flatrob detect --adaptive``: the clean inputs attacked together with the detector of their fold.

For every method cross-validated, each clean input of the balanced set (held out in fold ``k``) is
attacked by PGD with the run's attack settings on the objective of :mod:`flatcli.core.adaptive`,
``CE(f(x), y) - weight * d_k(x) / scale``, against ``d_k``, the detector fitted without fold ``k``:
neither the input nor anything crafted from it was seen by the detector that judges it, as in the
cross-validation itself. ``scale`` is the standard deviation of the method's out-of-fold decisions.
The adaptive adversarial is then scored as :func:`flatcli.runs.detect.apply` scores inputs and decided
by ``d_k``.

The result mirrors the fit summary, with the clean inputs of fold ``k`` (their out-of-fold decisions)
against the adaptive adversarials crafted from them: ``fold_accuracies, accuracy_mean, accuracy_std,
auc, tpr_at_5fpr``; and ``detected`` (share of adaptive adversarials flagged), ``prediction_changed``
(share that changed the model's prediction), ``evaded`` (share that changed the prediction *and* were
not flagged: the attack's real success), ``evaded_standard`` (the same share for the non-adaptive
adversarials of the fit), ``n``, ``weight``, ``scale``. One pass over the data in
:func:`flatcli.runtime.loop.each_batch`; only per-input numbers are kept.
"""

from __future__ import annotations

import numpy as np
import torch

from flatcli.core import detectors as core
from flatcli.core.adaptive import AdaptiveLoss
from flatcli.core.detection_features import Probe
from flatcli.core.attacks import batch_generator
from flatcli.models.head import HeadSplit
from flatcli.runs.detect_scores import Features, Scorer, ScoreSet
from flatcli.runtime.loop import RunContext, each_batch


def adaptive_check(ctx: RunContext, settings, outcome, clean: ScoreSet) -> dict[str, dict]:
    """The adaptive summary of every method in ``outcome.fits`` (see the module docstring), keyed by method.

    ``settings`` is the run's :class:`~flatcli.runs.detect.DetectSettings`, ``outcome`` the
    :class:`~flatcli.runs.detect.DetectOutcome` of :func:`~flatcli.runs.detect.fit_detection` on
    ``clean`` (every rank must hold it). Under torchrun rank 0 receives the results (others get ``{}``).
    """
    folds_clean = outcome.cv.fold_index[outcome.labels == 0]  # the same folds for every method
    fold_of = {int(clean.index[p]): int(k) for p, k in zip(outcome.clean_used, folds_clean)}
    pred_of = {int(clean.index[p]): int(clean.pred[p]) for p in outcome.clean_used}
    fits = outcome.fits
    scales = {m: float(np.std(f.cv.oof_decision)) or 1.0 for m, f in fits.items()}
    loaded = ctx.loaded
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        scorers = {}
        for m, f in fits.items():
            det = f.cv.detector
            probe = Probe.from_config(det.probe) if det.probe is not None else None
            scorers[m] = Scorer(split, Features(settings.weight_norm, probe, det.mahalanobis), ctx.device)

        def compute(b) -> dict:
            keep = [j for j, i in enumerate(b.index.tolist()) if i in fold_of]
            out = {}
            for m, f in fits.items():
                if not keep:
                    out[m] = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
                    continue
                rows = torch.as_tensor(keep, device=b.x.device)
                x, y, index = b.x[rows], b.y[rows], b.index[rows]
                which = np.array([fold_of[i] for i in index.tolist()], dtype=np.int64)
                dets = f.cv.fold_detectors
                loss = AdaptiveLoss(split, dets, torch.as_tensor(which, device=x.device), y,
                                    weight=settings.adaptive_weight, scale=scales[m], weight_norm=settings.weight_norm)
                res = settings.attack.run(split, x, y, generator=batch_generator(ctx.seed, b.number), loss=loss)
                s = scorers[m](loss.adversarial(res.x_adv), index)
                X = s.features(f.columns)
                decision = np.zeros(len(s))
                for k in np.unique(which):
                    decision[which == k] = dets[k].decision(X[which == k])
                out[m] = (s.index, which, decision, s.pred)
            return out

        parts = list(each_batch(ctx, compute))
    if not ctx.dist.is_main:
        return {}
    checks = {}
    for m, f in fits.items():
        index, fold, decision, pred = (np.concatenate(a) for a in zip(*(p[m] for p in parts)))
        y = outcome.labels
        clean_decision = f.cv.oof_decision[y == 0]
        labels = np.r_[np.zeros(len(clean_decision), np.int64), np.ones(len(decision), np.int64)]
        held_out = held_out_summary(labels, np.r_[clean_decision, decision], np.r_[folds_clean, fold])
        changed = pred != np.array([pred_of[i] for i in index.tolist()], dtype=np.int64)
        flagged = decision > 0
        checks[m] = {
            **held_out,
            "n": int(len(decision)),
            "detected": float(np.mean(flagged)),
            "prediction_changed": float(np.mean(changed)),
            "evaded": float(np.mean(changed & ~flagged)),
            "evaded_standard": f.evaded,
            "weight": settings.adaptive_weight,
            "scale": scales[m],
        }
    return checks


def held_out_summary(labels: np.ndarray, decision: np.ndarray, fold: np.ndarray) -> dict:
    """``fold_accuracies`` (accuracy of ``decision > 0`` per fold, in fold order), their mean and
    population std, and the pooled ``auc`` and ``tpr_at_5fpr`` (:func:`flatcli.core.detectors.roc_summary`)."""
    accuracies = [float(np.mean((decision[fold == k] > 0) == (labels[fold == k] == 1))) for k in np.unique(fold)]
    auc, tpr = core.roc_summary(labels, decision)
    return {"fold_accuracies": accuracies, "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies)), "auc": auc, "tpr_at_5fpr": tpr}
