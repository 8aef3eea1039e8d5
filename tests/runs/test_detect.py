"""``flatrob detect``'s pass (flatcli.runs.detect): label-free scores, refusals, row bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatcli.inputs import data as datamod
from flatcli.core import detectors as core
from flatcli.core.detection_features import Probe, probe_path
from flatcli.core.detectors import COMPONENT_NAMES, PROFILE_MEASURES, MahalanobisStump, Stump
from flatcli.models.head import HeadSplit
from flatcli.runs.detect import SCORES, DetectSettings, ScoreSet, check_detector, fit_detection, score_inputs
from flatcli.runs.detect_scores import Features, fit_mahalanobis
from flatcli.runs.sharpness import SharpnessSettings, sharpness
from flatcli.errors import DetectorError, UsageError
from flatcli.models.loading import load_model
from tests.conftest import EXAMPLE, run_context


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


def test_scores_are_label_free_and_match_the_closed_form(loaded):
    ds = datamod.load_data("digits", "test", 40)
    shuffled = datamod.DataSource(name="shuffled", input_shape=ds.input_shape, num_classes=10, x=ds.x,
                                  y=torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(1)),
                                  index=ds.index)
    a = score_inputs(run_context(loaded, ds, batch_size=16))
    b = score_inputs(run_context(loaded, shuffled, batch_size=16))
    for k in SCORES + COMPONENT_NAMES:
        assert np.array_equal(a.values[k], b.values[k]), k
    with torch.no_grad():
        logits = loaded.model(ds.x)
    # oracle: the factors multiply back to the scores (the formulas of docs/commands/sharpness.md)
    W = loaded.head.weight.detach().double()
    v = a.values
    assert np.allclose(v["trace_h"], v["p_var_sum"] * v["phi_norm_sq"], rtol=1e-12)
    assert np.allclose(v["relative_sharpness"], float((W * W).sum()) * v["trace_h"], rtol=1e-12)
    assert np.allclose(v["relative_flatness_full"], v["p_var_sum"] * v["w_phi_norm_sq"], rtol=1e-12)
    assert np.array_equal(a.pred, logits.argmax(-1).numpy())
    assert np.allclose(v["confidence"], torch.softmax(logits.double(), -1).max(-1).values.numpy(), rtol=1e-6)


def _scoreset(index, pred, rng):
    n = len(index)
    values = {k: rng.uniform(0.1, 1.0, n) for k in SCORES + COMPONENT_NAMES}
    return ScoreSet(np.asarray(index), np.asarray(pred), values)


def test_rows_cover_every_input_and_only_successful_maps_back():
    rng = np.random.default_rng(0)
    clean = _scoreset(range(10, 40), [1] * 30, rng)
    adv = _scoreset(range(10, 40), [1] * 10 + [2] * 20, rng)
    adv.values["relative_sharpness"] += 5.0
    out = fit_detection(clean, adv, DetectSettings(folds=3, only_successful=True))
    s = out.summary
    assert s["n_successful"] == 20 and s["n_adversarial"] == 20 == s["n_clean"]
    assert s["accuracy_mean"] == 1.0 and s["direction"] == "above"
    adv_rows = [r for r in out.rows if r["adversarial"]]
    assert [r["used"] for r in adv_rows] == [False] * 10 + [True] * 20
    assert len(out.rows) == 60


def test_only_successful_needs_the_clean_inputs():
    rng = np.random.default_rng(0)
    clean = _scoreset(range(0, 10), [1] * 10, rng)
    adv = _scoreset(range(5, 15), [2] * 10, rng)
    with pytest.raises(UsageError, match="not in the clean data"):
        fit_detection(clean, adv, DetectSettings(folds=2, only_successful=True))


def test_settings_refuse_conflicts():
    with pytest.raises(UsageError, match="conflicts"):
        DetectSettings(method="components", score="trace_h")
    with pytest.raises(UsageError, match="folds="):
        DetectSettings(folds=1)
    with pytest.raises(UsageError, match="score="):
        DetectSettings(score="loss")  # needs a label: not offered
    assert DetectSettings(method="components").score == "components"


def test_check_detector_refuses_other_checkpoint_and_layer(loaded):
    det = Stump(score="relative_sharpness", threshold=1.0, direction="above",
                   meta={"checkpoint_sha256": loaded.checkpoint.sha256, "layer": "fc"})
    assert check_detector(det, loaded) == []
    det.meta["layer"] = "features.3"
    with pytest.raises(DetectorError, match="layer"):
        check_detector(det, loaded)
    assert any("layer" in n for n in check_detector(det, loaded, force=True))
    det.meta = {}
    with pytest.raises(DetectorError, match="records no checkpoint"):
        check_detector(det, loaded)


def test_prediction_changed_is_none_when_clean_inputs_are_missing():
    rng = np.random.default_rng(1)
    clean = _scoreset(range(0, 10), [1] * 10, rng)
    adv = _scoreset(range(5, 15), [2] * 10, rng)
    s = fit_detection(clean, adv, DetectSettings(folds=2)).summary
    assert s["n_successful"] is None and s["prediction_changed"] is None
    adv = _scoreset(range(0, 10), [1] * 4 + [2] * 6, rng)
    s = fit_detection(clean, adv, DetectSettings(folds=2)).summary
    assert s["n_successful"] == 6 and s["prediction_changed"] == 0.6


# ------------------------------------------------------------------------------------------------
# The curvature profile, the Mahalanobis model, memory
# ------------------------------------------------------------------------------------------------


def test_profile_features_equal_sharpness_on_the_probed_points(loaded):
    ds = datamod.load_data("digits", "test", 30)
    probe = Probe(steps=3, size=0.04)
    scored = score_inputs(run_context(loaded, ds, batch_size=16), Features(probe=probe))
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        path = probe_path(split, ds.x, probe)
    assert np.array_equal(scored.pred, path.pred.numpy())
    for t, point in enumerate(path.points):
        # the probed point, labelled with the class predicted at the input, measured by `flatrob sharpness`
        at = datamod.DataSource(name=f"probe{t}", input_shape=ds.input_shape, num_classes=10, x=point,
                                y=path.pred, index=ds.index)
        rows = sharpness(run_context(loaded, at, batch_size=16), SharpnessSettings(), keep_samples=True).samples
        assert [r["index"] for r in rows] == scored.index.tolist()
        for name in PROFILE_MEASURES:
            want = np.array([r[name] for r in rows])
            assert np.allclose(scored.values[f"{name}@{t}"], want, rtol=1e-6, atol=1e-12), (name, t)
    assert np.array_equal(scored.values["relative_sharpness@0"], scored.values["relative_sharpness"])


def test_streamed_mahalanobis_fit_equals_the_fit_on_every_feature_at_once(loaded):
    ds = datamod.load_data("digits", "train", 500)
    model = fit_mahalanobis(run_context(loaded, ds, batch_size=64))
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split, torch.no_grad():
        phi = split.features(ds.x).double().numpy()
    y = ds.y.numpy()
    means = np.stack([phi[y == c].mean(0) for c in range(10)])
    cov = (phi - means[y]).T @ (phi - means[y]) / len(y)
    assert np.allclose(model.means, means, rtol=1e-10, atol=1e-12)
    assert np.allclose(model.precision, np.linalg.pinv(cov, hermitian=True), rtol=1e-6, atol=1e-8)
    assert model.counts.sum() == 500


def test_fit_and_scoring_keep_per_input_numbers_only():
    """Memory is bounded by the batch: features are reduced per batch to a few per-input columns, and the
    Mahalanobis fit to sums of fixed size. With 512 features, keeping them would cost 4 KB per input."""
    import tracemalloc

    from flatcli.models.loading import from_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10))
    wide = from_module(net, layer="5", device=torch.device("cpu"))
    digits = datamod.load_data("digits", "train")

    def peaks(n: int) -> tuple[int, int]:
        rows = torch.arange(n) % len(digits)
        ds = datamod.DataSource(name=f"n{n}", input_shape=(1, 8, 8), num_classes=10, x=digits.x[rows],
                                y=digits.y[rows])
        tracemalloc.start()
        model = fit_mahalanobis(run_context(wide, ds, batch_size=50))
        fit_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        scored = score_inputs(run_context(wide, ds, batch_size=50), Features(probe=Probe(steps=1), mahalanobis=model))
        score_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(v.shape == (n,) for v in scored.values.values())
        return fit_peak, score_peak

    peaks(100)  # warm-up: first-call caches
    (fit_a, score_a), (fit_b, score_b) = peaks(400), peaks(1200)
    # bytes per input (the batching's own bookkeeping, and the columns, index and pred of the scores)
    assert (fit_b - fit_a) / 800 < 1000, (fit_a, fit_b)
    assert (score_b - score_a) / 800 < 1000, (score_a, score_b)


def test_new_settings_refuse_conflicts():
    with pytest.raises(UsageError, match="probe_steps=/probe_size="):
        DetectSettings(method="components", probe=Probe())
    with pytest.raises(UsageError, match="conflicts with method= mahalanobis"):
        DetectSettings(method="mahalanobis", score="confidence")
    with pytest.raises(UsageError, match="adaptive="):
        DetectSettings(method="profile", adaptive=True)  # no attack: adversarials read from a file
    with pytest.raises(UsageError, match="adaptive_weight="):
        DetectSettings.from_options(method="stump", adaptive_weight=2.0)
    with pytest.raises(UsageError, match="adaptive_weight= must be"):
        DetectSettings.from_options(method="stump", adaptive=True, adaptive_weight=0.0)
    s = DetectSettings.from_options(method="all", probe_size=0.05)
    assert s.methods == core.method_names() and s.probe == Probe(3, 0.05) and s.uses_mahalanobis
    assert DetectSettings(method="profile").probe == Probe() and not DetectSettings(method="profile").uses_mahalanobis


def test_check_detector_refuses_a_mahalanobis_model_of_another_shape(loaded):
    maha = core.MahalanobisModel(np.zeros((10, 16)), np.eye(16), np.ones(10, np.int64))
    det = MahalanobisStump(score="mahalanobis", threshold=1.0, direction="above", mahalanobis=maha,
                   meta={"checkpoint_sha256": loaded.checkpoint.sha256, "layer": "fc"})
    with pytest.raises(DetectorError, match="16 features"):
        check_detector(det, loaded, force=True)
