"""The Mahalanobis model of Lee et al. (2018): class means and one shared covariance of the head's input, streamed.

The score of a feature vector is ``min_c (phi - mu_c)^T Sigma^+ (phi - mu_c)`` (computed in torch by
:func:`flatcli.core.detection_features.mahalanobis_scores`). The model is fitted from sums that a pass over
the data accumulates batch by batch: :func:`class_sums` (first pass), :func:`centred_scatter` around the
:func:`class_means` (second pass), then :func:`mahalanobis_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flatcli.errors import OptionError


@dataclass
class MahalanobisModel:
    """Class means ``means`` (k, m) and the precision ``precision`` (m, m), the pseudo-inverse of the
    shared covariance of the class-centred features; ``counts`` (k,) fit inputs per class.

    Reading one from an untrusted file is :func:`flatcli.inputs.detector_file.mahalanobis_from_json`.
    """

    means: np.ndarray
    precision: np.ndarray
    counts: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def to_json(self) -> dict:
        return {"class_means": self.means.tolist(), "precision": self.precision.tolist(),
                "counts": [int(c) for c in self.counts]}

    def summary(self) -> dict:
        """What a run's summary says of the model."""
        return {"classes": self.num_classes, "features": self.dim, "n_fit": int(self.counts.sum()),
                "covariance": "maximum likelihood of the class-centred features, pseudo-inverse"}


def class_sums(phi: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (k,), sums (k, m))`` of the features per class: the first pass of :func:`mahalanobis_model`."""
    phi = np.asarray(phi, dtype=np.float64)
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1.0
    return onehot.sum(0).astype(np.int64), onehot.T @ phi


def centred_scatter(phi: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``sum_i (phi_i - mu_{y_i}) (phi_i - mu_{y_i})^T`` (m, m): the second pass of :func:`mahalanobis_model`."""
    d = np.asarray(phi, dtype=np.float64) - means[labels]
    return d.T @ d


def class_means(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """``mu_c = sums_c / counts_c`` (k, m); :class:`~flatcli.errors.OptionError` (``fit_data``) when a class has no input."""
    counts = np.asarray(counts, dtype=np.int64)
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise OptionError(
            "fit_data",
            f"the fit data hold no input of class {int(missing[0])} ({len(missing)} class(es) missing); the "
            "Mahalanobis detector needs every class: pass more {}",
        )
    return np.asarray(sums, dtype=np.float64) / counts[:, None]


def mahalanobis_model(counts: np.ndarray, sums: np.ndarray, scatter: np.ndarray) -> MahalanobisModel:
    """The model from streamed statistics: ``mu_c = sums_c / counts_c``; the shared covariance is the
    maximum-likelihood one of the class-centred features, ``Sigma = scatter / n`` (what
    ``sklearn.covariance.EmpiricalCovariance(assume_centered=True)`` fits on ``phi_i - mu_{y_i}``, as
    Lee et al. do), and the precision its pseudo-inverse ``scipy.linalg.pinvh(Sigma)`` (as scikit-learn
    computes ``precision_``). :class:`~flatcli.errors.OptionError` when a class has no input.
    """
    from scipy.linalg import pinvh

    counts = np.asarray(counts, dtype=np.int64)
    means = class_means(counts, sums)
    covariance = np.asarray(scatter, dtype=np.float64) / int(counts.sum())
    covariance = 0.5 * (covariance + covariance.T)
    return MahalanobisModel(means, pinvh(covariance, check_finite=False), counts)
