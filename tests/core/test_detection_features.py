"""Detection features (flatcli.core.detection_features) and the adaptive objective (flatcli.core.adaptive).

Oracles: the probe steps written out with autograd on the model itself; the Mahalanobis model and
scores against scikit-learn's EmpiricalCovariance and a direct numpy computation; the gradient through
the probes against central finite differences of a float64 network; the torch decision against the
numpy one of the fitted detectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import EmpiricalCovariance

from flatcli.core import detectors as core
from flatcli.core.adaptive import AdaptiveLoss, decision
from flatcli.core.classifier import Classifier
from flatcli.core.detection_features import (
    Probe,
    detection_features,
    mahalanobis_scores,
    mahalanobis_tensors,
    probe_path,
)
from flatcli.errors import UsageError
from flatcli.inputs.data import load_data
from flatcli.models.builtins.small import MLP
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model

from tests.conftest import EXAMPLE


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


@pytest.fixture(scope="module")
def batch():
    ds = load_data("digits", "test", limit=40)
    return ds.x.clone(), ds.y.clone()


def _gaussian_model(rng, n=300, k=4, m=6):
    y = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    phi = rng.normal(size=(n, m)) @ rng.normal(size=(m, m)) + 3 * rng.normal(size=(k, m))[y]
    return phi, y, k


# ---------------------------------------------------------------------------- probes


def test_probe_points_are_sign_steps_on_the_predicted_class_loss(loaded, batch):
    x, _ = batch
    probe = Probe(steps=3, size=0.05)
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        path = probe_path(split, x, probe)
    with torch.no_grad():
        pred = loaded.model(x).double().argmax(1)
    assert torch.equal(path.pred, pred)
    cur = x.clone()
    for t in range(1, 4):  # the oracle: autograd on the model, linf sign step, clamp to the box
        cur.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(loaded.model(cur), pred, reduction="sum"), cur)
        cur = (cur.detach() + 0.05 * g.sign()).clamp(0, 1)
        assert torch.equal(path.points[t], cur)
    assert len(path.phi) == len(path.logits) == 4
    assert (path.points[3] - x).abs().max() <= 3 * 0.05 + 1e-7


def test_probe_settings_refuse_bad_values():
    for steps in (0, 4, 1.5, True):
        with pytest.raises(UsageError, match="probe_steps"):
            Probe(steps=steps)
    for size in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="probe_size"):
            Probe(size=size)
    assert Probe().config() == {"norm": "linf", "steps": 3, "size": 0.03}


def test_gradient_through_the_probes_matches_finite_differences():
    torch.manual_seed(0)
    net = MLP(3, 6, [8]).double()
    model = Classifier(net, [0.0], [1.0]).double().eval()
    x = (0.3 + 0.4 * torch.rand(5, 1, 2, 3, dtype=torch.float64)).requires_grad_(True)  # no clamp reached
    probe = Probe(steps=2, size=0.01)
    with HeadSplit(model, net.fc, "fc") as split:
        def f(inp, keep):
            cols, _ = detection_features(split, inp, probe=probe, differentiable=keep)
            return (cols["loss@2"] + cols["relative_sharpness@1"]).sum()

        (grad,) = torch.autograd.grad(f(x, True), x)
        v = torch.randn_like(x)
        h = 1e-6
        with torch.enable_grad():
            fd = (f((x + h * v).detach(), False) - f((x - h * v).detach(), False)) / (2 * h)
    assert float((grad * v).sum()) == pytest.approx(float(fd), rel=1e-5)


# ---------------------------------------------------------------------------- Mahalanobis


def test_streamed_mahalanobis_model_equals_sklearn_and_its_scores_a_direct_numpy_computation():
    rng = np.random.default_rng(3)
    phi, y, k = _gaussian_model(rng)
    counts, sums = np.zeros(k, np.int64), np.zeros((k, phi.shape[1]))
    chunks = np.array_split(np.arange(len(y)), 7)
    for c in chunks:
        n_c, s_c = core.class_sums(phi[c], y[c], k)
        counts, sums = counts + n_c, sums + s_c
    means = core.class_means(counts, sums)
    scatter = sum(core.centred_scatter(phi[c], y[c], means) for c in chunks)
    model = core.mahalanobis_model(counts, sums, scatter)

    direct_means = np.stack([phi[y == c].mean(0) for c in range(k)])
    centred = phi - direct_means[y]
    ref = EmpiricalCovariance(assume_centered=True).fit(centred)
    assert np.allclose(model.means, direct_means, rtol=1e-12, atol=1e-12)
    assert np.allclose(model.precision, ref.precision_, rtol=1e-9, atol=1e-12)
    assert model.counts.tolist() == np.bincount(y).tolist()

    queries = rng.normal(size=(25, phi.shape[1])) * 3
    inv = np.linalg.inv(centred.T @ centred / len(y))
    expected = [min(float((q - direct_means[c]) @ inv @ (q - direct_means[c])) for c in range(k)) for q in queries]
    got = mahalanobis_scores(torch.tensor(queries), *mahalanobis_tensors(model, "cpu")).numpy()
    assert np.allclose(got, expected, rtol=1e-9)
    # sklearn's own distance to the nearest class mean agrees too
    sk = np.min([ref.mahalanobis(queries - direct_means[c]) for c in range(k)], axis=0)
    assert np.allclose(got, sk, rtol=1e-9)


def test_mahalanobis_scores_do_not_depend_on_the_batch():
    rng = np.random.default_rng(4)
    phi, y, k = _gaussian_model(rng, n=200, m=24)
    model = core.mahalanobis_model(*core.class_sums(phi, y, k),
                                   core.centred_scatter(phi, y, np.stack([phi[y == c].mean(0) for c in range(k)])))
    tensors = mahalanobis_tensors(model, "cpu")
    q = torch.tensor(rng.normal(size=(101, 24)))
    whole = mahalanobis_scores(q, *tensors)
    parts = torch.cat([mahalanobis_scores(q[i:i + 7], *tensors) for i in range(0, 101, 7)])
    assert torch.equal(whole, parts)


def test_a_class_without_fit_data_is_refused():
    with pytest.raises(UsageError, match="no input of class 2"):
        core.class_means(np.array([3, 4, 0]), np.ones((3, 2)))


# ---------------------------------------------------------------------------- the adaptive objective


@pytest.mark.parametrize("method", core.METHODS)
def test_torch_decision_equals_the_fitted_detector(loaded, batch, method):
    x, y = batch
    rng = np.random.default_rng(0)
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        fit = load_data("digits", "train", limit=300)
        with torch.no_grad():
            phi = split.features(fit.x).double().numpy()
        yy = fit.y.numpy()
        maha = core.mahalanobis_model(*core.class_sums(phi, yy, 10),
                                      core.centred_scatter(phi, yy, core.class_means(*core.class_sums(phi, yy, 10))))
        probe = Probe(steps=2, size=0.04)
        cols, _ = detection_features(split, x, probe=probe, mahalanobis=mahalanobis_tensors(maha, "cpu"))
        labels = rng.permutation(np.r_[np.zeros(20), np.ones(20)]).astype(int)
        cls = core.METHODS[method]
        columns = cls.columns_for(cls.scores[0], probe.config())
        X = np.stack([cols[c].numpy() for c in columns], axis=1)
        det = core.fit(X, labels, method=method, mahalanobis=maha if cls.needs_mahalanobis else None,
                       probe=probe.config() if cls.needs_probe else None)
        want = det.decision(X)
        assert np.allclose(decision(det, cols).numpy(), want, rtol=1e-10, atol=1e-10)
        # the adaptive loss sees the same decisions, with their graph from the input
        loss = AdaptiveLoss(split, [det, det], torch.tensor([0, 1] * 20), y, weight=2.0, scale=4.0)
        xg = x.clone().requires_grad_(True)
        d = loss.decisions(xg)
        assert np.allclose(d.detach().numpy(), want, rtol=1e-9, atol=1e-9)
        (g,) = torch.autograd.grad(d.sum(), xg)
        assert g.abs().sum() > 0


def test_adaptive_objective_is_the_cross_entropy_until_the_model_is_fooled(loaded, batch):
    x, y = batch
    det = core.Stump(score="confidence", threshold=0.5, direction="below")
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        loss = AdaptiveLoss(split, [det], torch.zeros(len(y), dtype=torch.long), y, weight=2.0, scale=0.25)
        xg = x.clone().requires_grad_(True)
        logits, phi = split(xg)
        obj = loss(xg, logits, phi)
        ce = F.cross_entropy(logits, y, reduction="none").double()
        d = loss.decisions(xg, first=(logits, phi))
        fooled = logits.argmax(1) != y
        assert fooled.any() and (~fooled).any()
        assert torch.allclose(obj[~fooled], ce[~fooled])
        assert torch.allclose(obj[fooled], ce[fooled] - 2.0 * d[fooled] / 0.25)
        # the first iterate that fools the model with a clean-side decision is kept
        evading = fooled & (d < 0)
        picked = loss.adversarial(torch.zeros_like(x))
        assert torch.equal(picked[evading], x[evading]) and (picked[~evading] == 0).all()
