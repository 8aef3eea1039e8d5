"""``flatrob detect``'s pass (flatcli.runs.detect): label-free scores, refusals, row bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatcli.inputs import data as datamod
from flatcli.core.detectors import COMPONENT_NAMES, Detector
from flatcli.runs.detect import SCORES, DetectSettings, ScoreSet, check_detector, fit_detection, score_inputs
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
    # oracle: the factors multiply back to the scores (DESIGN.md §2)
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
    with pytest.raises(UsageError, match="--folds"):
        DetectSettings(folds=1)
    with pytest.raises(UsageError, match="--score"):
        DetectSettings(score="loss")  # needs a label: not offered
    assert DetectSettings(method="components").score == "components"


def test_check_detector_refuses_other_checkpoint_and_layer(loaded):
    det = Detector("stump", "relative_sharpness", threshold=1.0, direction="above",
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
