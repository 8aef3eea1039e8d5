"""The detector estimators of `flatrob detect` (flatcli.core.detectors): pure numpy + sklearn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import balanced_accuracy_score
from sklearn.tree import DecisionTreeClassifier

from flatcli.core import detectors as core
from flatcli.core.detectors import (
    DETECTOR_KIND,
    SCHEMA_VERSION,
    Stump,
    balance,
    cross_validate,
    fit,
)
from flatcli.inputs.detector_file import detector_from_json, load_detector, save_detector
from flatcli.errors import DetectorError, UsageError


def _labels(n0: int, n1: int) -> np.ndarray:
    return np.r_[np.zeros(n0, dtype=int), np.ones(n1, dtype=int)]


def _separable(rng, n=200, adv_higher=True):
    clean = rng.uniform(0.0, 1.0, n)
    adv = rng.uniform(2.0, 3.0, n)
    if not adv_higher:
        clean, adv = adv, clean
    return np.r_[clean, adv], _labels(n, n)


def _components_data(rng, n=600):
    """Only log(col1) - log(col0) separates the classes; each column alone is mostly noise."""
    y = _labels(n, n)
    common = rng.normal(0.0, 3.0, 2 * n)
    log_a = common + rng.normal(0.0, 0.3, 2 * n)
    log_b = common + 1.0 * y + rng.normal(0.0, 0.3, 2 * n)
    log_c = rng.normal(0.0, 1.0, 2 * n)
    return np.exp(np.c_[log_a, log_b, log_c]), y


# ---------------------------------------------------------------------------- stump


@pytest.mark.parametrize("adv_higher, direction", [(True, "above"), (False, "below")])
def test_separable_scores_are_detected_perfectly_in_both_directions(adv_higher, direction):
    X, y = _separable(np.random.default_rng(1), adv_higher=adv_higher)
    res = cross_validate(X, y, folds=5, seed=0)
    assert res.fold_accuracies == [1.0] * 5
    assert res.accuracy_mean == 1.0 and res.accuracy_std == 0.0
    assert res.auc == 1.0 and res.tpr_at_5fpr == 1.0
    det = res.detector
    assert det.method == "stump" and det.direction == direction
    lo = X[y == (0 if adv_higher else 1)].max()
    hi = X[y == (1 if adv_higher else 0)].min()
    assert det.threshold == pytest.approx((lo + hi) / 2)  # midpoint of the separating gap
    assert np.array_equal(det.predict(X), y == 1)
    assert det.meta["train_accuracy"] == 1.0 and det.meta["cv"]["folds"] == 5


def test_direction_semantics_are_strict_inequalities():
    above = Stump(score="s", threshold=1.0, direction="above")
    below = Stump(score="s", threshold=1.0, direction="below")
    x = np.array([0.5, 1.0, 1.5])
    assert above.predict(x).tolist() == [False, False, True]
    assert below.predict(x).tolist() == [True, False, False]
    assert np.allclose(above.decision(x), [-0.5, 0.0, 0.5])
    assert np.allclose(below.decision(x), [0.5, 0.0, -0.5])


def test_identical_distributions_give_chance_level():
    rng = np.random.default_rng(7)
    n = 2000
    X = rng.normal(size=n)
    y = _labels(n // 2, n // 2)
    res = cross_validate(X, y, folds=5, seed=3)
    assert abs(res.auc - 0.5) < 0.07
    assert abs(res.accuracy_mean - 0.5) < 0.06
    assert res.tpr_at_5fpr < 0.15


def test_seed_fixes_folds_and_numbers():
    rng = np.random.default_rng(2)
    X = np.r_[rng.normal(0, 1, 150), rng.normal(1, 1, 150)]
    y = _labels(150, 150)
    a = cross_validate(X, y, seed=5)
    b = cross_validate(X, y, seed=5)
    c = cross_validate(X, y, seed=6)
    assert np.array_equal(a.fold_index, b.fold_index)
    assert np.array_equal(a.oof_decision, b.oof_decision)
    assert (a.fold_accuracies, a.auc, a.tpr_at_5fpr) == (b.fold_accuracies, b.auc, b.tpr_at_5fpr)
    assert a.detector.to_json() == b.detector.to_json()
    assert not np.array_equal(a.fold_index, c.fold_index)
    # stratified: each fold holds the same share of each class
    for k in range(5):
        assert np.sum((a.fold_index == k) & (y == 1)) == 30


def test_exact_stump_beats_sklearn_depth_one_tree_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(10, 300))
        X = np.round(rng.normal(size=n) * rng.uniform(0.1, 5), int(rng.integers(0, 3)))  # ties
        y = rng.permutation(_labels(n // 2, n // 2 + n % 2))
        det = fit(X, y)
        tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X[:, None], y)
        ours = balanced_accuracy_score(y, det.predict(X))
        theirs = balanced_accuracy_score(y, tree.predict(X[:, None]))
        assert ours >= theirs - 1e-12
        assert det.meta["train_balanced_accuracy"] == pytest.approx(ours)
        if n % 2 == 0:  # balanced classes: plain accuracy too
            assert np.mean(det.predict(X) == y) >= tree.score(X[:, None], y) - 1e-12


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.integers(2, 40),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
    ),
    st.data(),
)
def test_stump_is_optimal_among_all_thresholds(x, data):
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=len(x), max_size=len(x))))
    y[0], y[-1] = 0, 1
    det = fit(x, y)
    ours = balanced_accuracy_score(y, det.predict(x))
    # brute force: every threshold at a data value, plus below/above everything, both directions
    best = 0.5
    for t in np.unique(x):
        for flags in (x > t, x >= t, x < t, x <= t):
            best = max(best, balanced_accuracy_score(y, flags))
    assert ours == pytest.approx(best, abs=1e-12)
    tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x[:, None], y)
    assert ours >= balanced_accuracy_score(y, tree.predict(x[:, None])) - 1e-12


def test_stump_tie_break_is_deterministic_and_constant_scores_flag_nothing():
    x = np.array([0.0, 1.0, 2.0, 10.0])
    y = np.array([0, 1, 0, 1])  # t=0.5 and t=6 tie at 0.75; the wider gap (2..10) wins
    a, b = fit(x, y), fit(x[::-1], y[::-1])
    assert (a.threshold, a.direction) == (b.threshold, b.direction) == (6.0, "above")
    const = fit(np.ones(6), _labels(3, 3))
    assert not const.predict(np.ones(6)).any()


def test_adjacent_floats_are_split_exactly():
    a = 1.0
    b = np.nextafter(a, 2.0)
    for x, y, direction in [([a, b], [0, 1], "above"), ([a, b], [1, 0], "below")]:
        det = fit(np.array(x), np.array(y))
        assert det.direction == direction
        assert det.predict(np.array(x)).tolist() == [bool(v) for v in y]


# ---------------------------------------------------------------------------- components


def test_components_beat_any_single_column_stump():
    X, y = _components_data(np.random.default_rng(4))
    comp = cross_validate(X, y, method="components", seed=0)
    stumps = [cross_validate(X[:, j], y, seed=0).accuracy_mean for j in range(3)]
    assert comp.accuracy_mean > max(stumps) + 0.2
    assert comp.accuracy_mean > 0.85 and comp.auc > 0.9
    coef = comp.detector.coef
    assert coef[0] < 0 < coef[1] and abs(coef[2]) < 0.3 * abs(coef[1])
    assert comp.detector.score == "components"


def test_components_handle_zeros_with_a_log_floor():
    X, y = _components_data(np.random.default_rng(5), n=50)
    X[:3, 0] = 0.0
    det = fit(X, y, method="components")
    assert np.isfinite(det.decision(X)).all()


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize("method", ["stump", "components"])
def test_save_load_reproduces_predictions_exactly(tmp_path, method):
    rng = np.random.default_rng(9)
    if method == "stump":
        X = np.r_[rng.lognormal(0, 1, 300), rng.lognormal(0.7, 1, 300)]
        y = _labels(300, 300)
    else:
        X, y = _components_data(rng, n=300)
    det = fit(X, y, method=method, seed=1)
    det.meta.update(layer="fc", weight_norm="squared", sha256="ab" * 32, arr=np.arange(3))
    path = tmp_path / "det.json"
    save_detector(path, det)
    doc = json.loads(path.read_text())
    assert doc["kind"] == DETECTOR_KIND and doc["schema_version"] == SCHEMA_VERSION
    loaded = load_detector(path)
    assert np.array_equal(loaded.decision(X), det.decision(X))
    assert np.array_equal(loaded.predict(X), det.predict(X))
    assert loaded.meta["layer"] == "fc" and loaded.meta["arr"] == [0, 1, 2]
    assert loaded.to_json() == doc
    assert [p.name for p in tmp_path.iterdir()] == ["det.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "content",
    [
        "not json at all {",
        "[1, 2, 3]",
        '{"kind": "something-else", "schema_version": 1}',
        '{"schema_version": 1, "method": "stump", "score": "s", "threshold": 1.0, '
        '"direction": "above"}',
        '{"kind": "flatrob-detector", "schema_version": 99, "method": "stump", "score": "s", '
        '"threshold": 1.0, "direction": "above"}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "forest", "score": "s"}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "stump", "score": "s", '
        '"threshold": "1.0", "direction": "above"}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "stump", "score": "s", '
        '"threshold": 1.0, "direction": "sideways"}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "components", "score": "c", '
        '"coef": [1, 2], "intercept": 0, "mean": [0, 0, 0], "scale": [1, 1, 1]}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "components", "score": "c", '
        '"coef": [1, 2, 3], "intercept": 0, "mean": [0, 0, 0], "scale": [1, 0, 1]}',
        '{"kind": "flatrob-detector", "schema_version": 1, "method": "stump", "score": "s", '
        '"threshold": NaN, "direction": "above"}',
    ],
)
def test_load_rejects_garbage(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DetectorError):
        load_detector(path)


def test_load_missing_or_binary_file(tmp_path):
    with pytest.raises(DetectorError, match="does not exist"):
        load_detector(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DetectorError):
        load_detector(tmp_path / "bin.json")


def test_save_to_missing_directory_is_a_usage_error(tmp_path):
    det = fit(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(UsageError):
        save_detector(tmp_path / "no" / "such" / "dir.json", det)


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_usage_errors():
    X = np.arange(20, dtype=float)
    y = _labels(10, 10)
    with pytest.raises(UsageError, match="folds"):
        cross_validate(X, y, folds=1)
    with pytest.raises(UsageError, match="per class"):
        cross_validate(X[:13], y[:13], folds=5)  # 10 clean, 3 adversarial
    with pytest.raises(UsageError, match="both classes"):
        cross_validate(X, np.zeros(20, dtype=int))
    with pytest.raises(UsageError, match="both classes"):
        fit(X, np.ones(20, dtype=int))
    Xn = X.copy()
    Xn[3] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        cross_validate(Xn, y)
    with pytest.raises(UsageError, match="NaN"):
        fit(Xn, y)
    with pytest.raises(UsageError, match="labels"):
        fit(X, np.r_[y[:-1], 2])
    with pytest.raises(UsageError, match="labels"):
        fit(X, y[:-1])
    with pytest.raises(UsageError, match="method"):
        fit(X, y, method="forest")
    with pytest.raises(UsageError, match="columns"):
        fit(X, y, method="components")
    with pytest.raises(UsageError, match=r"shape \(n,\)"):
        fit(np.c_[X, X], y)
    with pytest.raises(UsageError, match="seed"):
        cross_validate(X, y, seed=-1)
    det = fit(X, y)
    with pytest.raises(UsageError, match="NaN"):
        det.predict(np.array([1.0, np.inf]))


def test_balance_subsamples_the_larger_class_reproducibly():
    X = np.arange(100, dtype=float)
    y = _labels(70, 30)
    Xa, ya = balance(X, y, seed=0)
    Xb, yb = balance(X, y, seed=0)
    Xc, _ = balance(X, y, seed=1)
    assert np.sum(ya == 0) == np.sum(ya == 1) == 30
    assert np.array_equal(Xa, Xb) and np.array_equal(ya, yb)
    assert not np.array_equal(Xa, Xc)
    assert set(Xa[ya == 1]) == set(range(70, 100))  # the smaller class is kept whole
    assert np.all(np.diff(Xa) > 0)  # original order preserved
    X2 = np.c_[X, X]
    X2b, y2b = balance(X2, y, seed=0)
    assert X2b.shape == (60, 2) and np.array_equal(X2b[:, 0], Xa)


# ---------------------------------------------------------------------------- mahalanobis, profile, ensemble


def _maha_model(rng, k=3, m=4):
    A = rng.normal(size=(m, m))
    return core.MahalanobisModel(rng.normal(size=(k, m)), A @ A.T, np.full(k, 10))


def _probe(steps=2):
    return {"norm": "linf", "steps": steps, "size": 0.03}


@pytest.mark.parametrize("method", ["mahalanobis", "profile", "ensemble"])
def test_new_methods_save_load_reproduce_predictions_exactly(tmp_path, method):
    rng = np.random.default_rng(11)
    maha = _maha_model(rng) if method in ("mahalanobis", "ensemble") else None
    probe = _probe() if method in ("profile", "ensemble") else None
    if method == "mahalanobis":
        X, y = np.r_[rng.lognormal(0, 1, 200), rng.lognormal(1, 1, 200)], _labels(200, 200)
    else:
        d = len(core.METHODS[method].columns_for(method, _probe()))
        y = _labels(200, 200)
        X = np.exp(rng.normal(size=(400, d)) + 0.5 * y[:, None] * rng.normal(size=d))
    det = fit(X, y, method=method, seed=2, mahalanobis=maha, probe=probe)
    assert det.columns() == ((core.MAHALANOBIS,) if method == "mahalanobis" else core.METHODS[method].columns_for(
        method, _probe()))
    path = tmp_path / "det.json"
    save_detector(path, det)
    back = load_detector(path)
    assert np.array_equal(back.decision(X), det.decision(X))
    assert back.to_json() == json.loads(path.read_text())
    if maha is not None:
        assert np.array_equal(back.mahalanobis.means, maha.means) and np.array_equal(back.mahalanobis.precision,
                                                                                        maha.precision)
    assert back.probe == probe
    # row by row equals all at once, to the bit (no batch-size dependence)
    assert np.array_equal(np.concatenate([det.decision(X[i:i + 7]) for i in range(0, 400, 7)]), det.decision(X))


def test_new_methods_need_what_their_features_come_from():
    X, y = np.arange(20.0), _labels(10, 10)
    with pytest.raises(UsageError, match="Mahalanobis model"):
        fit(X, y, method="mahalanobis")
    with pytest.raises(UsageError, match="probe"):
        fit(np.ones((20, 12)), y, method="profile")
    with pytest.raises(UsageError, match="probe"):
        fit(X, y, method="stump", probe=_probe())
    with pytest.raises(UsageError, match="12 columns"):
        fit(np.ones((20, 3)), y, method="profile", probe=_probe())


def _doc(method, **changes):
    rng = np.random.default_rng(0)
    maha = _maha_model(rng) if method in ("mahalanobis", "ensemble") else None
    probe = _probe() if method in ("profile", "ensemble") else None
    n = 1 if method == "mahalanobis" else len(core.METHODS[method].columns_for(method, _probe()))
    X = np.exp(rng.normal(size=(40, n)))[:, 0] if n == 1 else np.exp(rng.normal(size=(40, n)))
    doc = fit(X, _labels(20, 20), method=method, mahalanobis=maha, probe=probe).to_json()
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            doc[outer][inner] = value
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize("method, changes, fragment", [
    ("mahalanobis", {"mahalanobis": None}, "mahalanobis"),
    ("mahalanobis", {"mahalanobis.precision": [[1.0, 0.0], [0.0, 1.0]]}, "precision"),
    ("mahalanobis", {"mahalanobis.class_means": [[1.0, float("nan"), 0.0, 0.0]] * 3}, "finite"),
    ("mahalanobis", {"mahalanobis.counts": [1, 2]}, "counts"),
    ("mahalanobis", {"score": "relative_sharpness"}, "scores"),
    ("profile", {"probe.steps": 4}, "steps"),
    ("profile", {"probe.size": -1.0}, "size"),
    ("profile", {"probe.norm": "l2"}, "linf"),
    ("profile", {"features": ["loss@0"]}, "columns"),
    ("ensemble", {"coef": [1.0, 2.0]}, "coef"),
    ("ensemble", {"mahalanobis": {"class_means": [[1.0]], "precision": [[1.0]], "counts": [3]}}, "at least 2"),
])
def test_load_rejects_malformed_new_detectors(method, changes, fragment):
    with pytest.raises(DetectorError, match=fragment):
        detector_from_json(_doc(method, **changes))
