"""The scoring passes of ``flatrob detect``: per-input label-free features of clean, adversarial and fit data.

* :class:`Features` says what a pass computes: always the stump scores and the components at the
  input; the curvature profile with a :class:`~flatcli.core.detection_features.Probe`; the
  Mahalanobis score with a :class:`~flatcli.core.detectors.MahalanobisModel`
  (:func:`flatcli.core.detection_features.detection_features`). No label is read.
* :func:`each_score` / :func:`score_inputs` score every input of a data set, one batch at a time;
  :func:`attack_and_score` crafts one adversarial per input with the attack (:mod:`flatcli.core.attacks`; the
  generator seeded and the batches visited exactly as ``flatrob attack`` does, so the adversarials are
  those ``flatrob attack --save-adv`` writes with the same options) and scores both.
* :func:`fit_mahalanobis` fits the class means and shared covariance on clean labelled data in two
  streamed passes (class sums, then the scatter of the class-centred features).

Every pass runs in :func:`flatcli.runtime.loop.each_batch`; what is kept is a :class:`ScoreSet` of
per-input numbers (and, for the Mahalanobis fit, sums of fixed size): memory is bounded by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flatcli.core import detectors as core
from flatcli.core.detection_features import Probe, detection_features, mahalanobis_tensors
from flatcli.core.attacks import Attack, batch_generator
from flatcli.models.head import HeadSplit
from flatcli.runtime.loop import RunContext, each_batch


@dataclass
class ScoreSet:
    """Per-input label-free features of one set of inputs (all numpy, same length).

    ``index``: source indices; ``pred``: the model's prediction; ``values[name]`` (float64) for every
    column the pass computed (:func:`flatcli.core.detection_features.detection_features`).
    """

    index: np.ndarray
    pred: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.index)

    def features(self, columns: tuple[str, ...]) -> np.ndarray:
        """What a detector takes: ``(n, len(columns))``, one column per name of its ``columns()``."""
        return np.stack([self.values[c] for c in columns], axis=1)

    def take(self, keep: np.ndarray) -> "ScoreSet":
        return ScoreSet(self.index[keep], self.pred[keep], {k: v[keep] for k, v in self.values.items()})

    @classmethod
    def concat(cls, parts: list["ScoreSet"]) -> "ScoreSet":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), {})
        return cls(
            np.concatenate([p.index for p in parts]),
            np.concatenate([p.pred for p in parts]),
            {k: np.concatenate([p.values[k] for p in parts]) for k in parts[0].values},
        )


@dataclass
class Features:
    """What a scoring pass computes besides the scores and components: the profile (``probe``) and the
    Mahalanobis score (``mahalanobis``); ``weight_norm`` is the relative-sharpness convention."""

    weight_norm: str = "squared"
    probe: Probe | None = None
    mahalanobis: core.MahalanobisModel | None = None

    @classmethod
    def of(cls, det: core.Detector) -> "Features":
        """What applying ``det`` needs."""
        probe = Probe.from_config(det.probe) if det.probe is not None else None
        return cls(det.meta.get("weight_norm", "squared"), probe, det.mahalanobis)

    def identity(self) -> dict:
        """The resume-identity entries (only those that are set, so stump/components stores keep theirs)."""
        out = {}
        if self.probe is not None:
            out["probe"] = self.probe.config()
        if self.mahalanobis is not None:
            import hashlib

            digest = hashlib.sha256(self.mahalanobis.means.tobytes() + self.mahalanobis.precision.tobytes())
            out["mahalanobis_sha256"] = digest.hexdigest()
        return out


class Scorer:
    """Scores batches under one :class:`Features` (the Mahalanobis tensors made once, on the run's device)."""

    def __init__(self, split: HeadSplit, features: Features, device):
        self.split = split
        self.features = features
        self.maha = mahalanobis_tensors(features.mahalanobis, device) if features.mahalanobis is not None else None

    def __call__(self, x: torch.Tensor, index: torch.Tensor, first=None) -> ScoreSet:
        """``first``: ``(logits, phi)`` of ``x`` from a pass already made (used when no probe is needed)."""
        f = self.features
        if f.probe is not None or first is None:
            cols, pred = detection_features(self.split, x, weight_norm=f.weight_norm, probe=f.probe,
                                            mahalanobis=self.maha)
        else:
            cols, pred = _from_phi(self.split, x, first, f, self.maha)
        return ScoreSet(
            index=index.detach().cpu().numpy().astype(np.int64),
            pred=pred.cpu().numpy().astype(np.int64),
            values={k: v.detach().cpu().numpy().astype(np.float64) for k, v in cols.items()},
        )


def _from_phi(split, x, first, f: Features, maha):
    """The features at ``x`` from a forward pass already made (no probe): nothing is recomputed."""
    logits, phi = first
    with torch.no_grad():
        return detection_features(split, x, weight_norm=f.weight_norm, mahalanobis=maha,
                                  first=(logits.detach(), phi.detach()))


def score_inputs(ctx: RunContext, features: Features | None = None, *, everywhere: bool = False) -> ScoreSet | None:
    """Score every input of ``ctx.data``; rank 0 (every rank with ``everywhere``) receives every batch in order."""
    parts = list(each_score(ctx, features, everywhere=everywhere))
    return ScoreSet.concat(parts) if ctx.dist.is_main or everywhere else None


def each_score(ctx: RunContext, features: Features | None = None, *, everywhere: bool = False):
    """The :class:`ScoreSet` of every batch of ``ctx.data`` as soon as it is ready (memory bounded by the batch)."""
    features = features or Features()
    loaded = ctx.loaded
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        scorer = Scorer(split, features, ctx.device)

        def compute(b) -> ScoreSet:
            if b.first:
                split.verify(b.x[:2])
            return scorer(b.x, b.index)

        yield from each_batch(ctx, compute, everywhere=everywhere)


def attack_and_score(ctx: RunContext, attack: Attack, features: Features | None = None, *, keep_adv: bool = False,
                     store=None, everywhere: bool = False
                     ) -> tuple[ScoreSet, ScoreSet, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Craft one adversarial per input of ``ctx.data`` and score the clean and the adversarial inputs.

    The attack uses the labels (it maximises the cross-entropy); the scores do not. Random starts
    come from :func:`flatcli.core.attacks.batch_generator` per batch, as in ``flatrob attack``, so
    ``flatrob attack --save-adv`` with the same options and seed writes the very same adversarials.
    Without a probe the features come from the attack's own recorded forward passes. Returns
    ``(clean, adversarial, adv)`` where ``adv`` is ``(x, y, index)`` on the CPU when ``keep_adv`` (for
    ``--save-adv``), else ``None``. ``store`` (``--resume``) supplies batches an earlier run finished
    and receives every new one; ``everywhere``: every rank receives every batch (and returns the sets).
    """
    features = features or Features()
    loaded = ctx.loaded
    clean_parts: list[ScoreSet] = []
    adv_parts: list[ScoreSet] = []
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        scorer = Scorer(split, features, ctx.device)

        def compute(b) -> tuple:
            if b.first:
                split.verify(b.x[:2])  # BN in eval mode, samples independent, head is the last linear map
            # Recording keeps the features of x_0 .. x_T from the attack's own forward passes: the
            # clean features are those of x_0 (unless the attack starts at a random point).
            res = attack.run(split, b.x, b.y, generator=batch_generator(ctx.seed, b.number), record=True)
            clean_first = None if attack.random_start else (res.logits_by_step[0], res.phi[0])
            return (
                scorer(b.x, b.index, first=clean_first),
                scorer(res.x_adv, b.index, first=(res.logits, res.phi[-1])),
                (res.x_adv.detach().cpu(), b.y.cpu(), b.index.cpu()) if keep_adv or store is not None else None,
            )

        for clean_scores, adv_scores, adv_batch in each_batch(ctx, compute, store=store, resumable=True,
                                                               everywhere=everywhere):
            clean_parts.append(clean_scores)
            adv_parts.append(adv_scores)
            if keep_adv:
                kept.append(adv_batch)
    adv = tuple(torch.cat(p) for p in zip(*kept)) if keep_adv and kept else None
    return ScoreSet.concat(clean_parts), ScoreSet.concat(adv_parts), adv  # type: ignore[return-value]


def fit_mahalanobis(ctx: RunContext) -> core.MahalanobisModel:
    """Class means and shared covariance of the head's input on ``ctx.data`` (clean, labelled), streamed.

    Two passes (:func:`flatcli.core.detectors.class_sums`, then
    :func:`~flatcli.core.detectors.centred_scatter` around the means of the first), each batch reduced to
    sums of fixed size (k x m, m x m); every rank receives them, so every rank holds the same model.
    """
    loaded = ctx.loaded
    k = loaded.num_classes
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:

        def phi_of(b) -> np.ndarray:
            if b.first:
                split.verify(b.x[:2])
            with torch.no_grad():
                return split.features(b.x).double().cpu().numpy()

        counts, sums = np.zeros(k, np.int64), np.zeros((k, loaded.head.in_features))
        for c, s in each_batch(ctx, lambda b: core.class_sums(phi_of(b), b.y.cpu().numpy(), k), everywhere=True):
            counts, sums = counts + c, sums + s
        means = core.class_means(counts, sums)
        scatter = np.zeros((means.shape[1], means.shape[1]))
        for s in each_batch(ctx, lambda b: core.centred_scatter(phi_of(b), b.y.cpu().numpy(), means), everywhere=True):
            scatter = scatter + s
    return core.mahalanobis_model(counts, sums, scatter)
