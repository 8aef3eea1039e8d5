"""The detector methods as classes over a registry (flatcli.core.detectors): what each states, a toy method
registered here and taken through the same paths as the built-in ones, and errors that name options."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

import flatcli.api as fr
from flatcli.core import detectors as core
from flatcli.core.detection_features import Probe
from flatcli.core.detectors import base
from flatcli.errors import DetectorError, OptionError
from flatcli.inputs.detector_file import detector_from_json, load_detector, save_detector
from flatcli.runs.detect import DetectSettings, conventions
from tests.conftest import EXAMPLE


@dataclass(kw_only=True)
class PairLogistic(core.LogisticDetector):
    """A toy method: the logistic regression on two columns every scoring pass computes."""

    method = "pair"
    summary = "logistic regression on the logs of relative sharpness and confidence"
    conventions = "logistic regression like components on the logs of relative_sharpness and confidence"
    scores = ("pair",)

    @classmethod
    def columns_for(cls, score, probe):
        return ("relative_sharpness", "confidence")


@pytest.fixture
def pair():
    core.register(PairLogistic)
    try:
        yield PairLogistic
    finally:
        del base._METHODS[PairLogistic.method]


def _labels(n0: int, n1: int) -> np.ndarray:
    return np.r_[np.zeros(n0, dtype=int), np.ones(n1, dtype=int)]


def test_each_method_states_its_columns_needs_scores_and_conventions():
    assert core.method_names() == ("stump", "components", "mahalanobis", "profile", "ensemble")
    needs = {m: (cls.needs_probe, cls.needs_mahalanobis) for m, cls in core.METHODS.items()}
    assert needs == {"stump": (False, False), "components": (False, False), "mahalanobis": (False, True),
                     "profile": (True, False), "ensemble": (True, True)}
    assert core.Stump.scores == core.SCORES + core.PROMPT_SCORES and core.Stump.scores[0] == "relative_sharpness"
    assert {m: cls.scores for m, cls in core.METHODS.items() if m != "stump"} == {
        "components": ("components",), "mahalanobis": ("mahalanobis",), "profile": ("profile",),
        "ensemble": ("ensemble",)}
    probe = {"norm": "linf", "steps": 2, "size": 0.03}
    assert core.Components.columns_for("components", None) == core.COMPONENT_NAMES
    assert core.Profile.columns_for("profile", probe) == core.profile_names(2)
    assert core.Ensemble.columns_for("ensemble", probe) == core.ensemble_names(2)
    assert core.MahalanobisStump.columns_for("mahalanobis", None) == (core.MAHALANOBIS,)
    for cls in core.METHODS.values():
        assert cls.summary and cls.conventions and "--" not in cls.conventions
        assert issubclass(cls, (core.ThresholdDetector, core.LogisticDetector))
    assert list(conventions())[3:8] == list(core.method_names())
    assert "labelled --fit-data (Lee" in conventions()["mahalanobis"] and "{fit_data}" in core.MahalanobisStump.conventions
    assert conventions()["profile"] == core.Profile.conventions  # x_{t-1} is no option


def test_register_refuses_a_method_that_states_too_little_or_a_taken_name():
    @dataclass(kw_only=True)
    class Nameless(core.ThresholdDetector):
        method = "nameless"
        scores = ("confidence",)

    with pytest.raises(ValueError, match="summary"):
        core.register(Nameless)

    @dataclass(kw_only=True)
    class Again(core.Stump):
        pass

    with pytest.raises(ValueError, match="already registered"):
        core.register(Again)
    with pytest.raises(ValueError, match="concrete"):
        core.register(core.Detector)
    assert core.method_names() == ("stump", "components", "mahalanobis", "profile", "ensemble")


def test_a_registered_method_is_fitted_cross_validated_saved_and_read_like_the_others(pair, tmp_path):
    rng = np.random.default_rng(3)
    y = _labels(150, 150)
    X = np.exp(rng.normal(size=(300, 2)) + 2.0 * y[:, None] * np.array([1.0, -1.0]))
    with pytest.raises(Exception, match="2 columns"):
        core.fit(X[:, 0], y, method="pair")
    cv = core.cross_validate(X, y, method="pair", folds=3, seed=1)
    det = cv.detector
    assert isinstance(det, PairLogistic) and det.score == "pair" and det.columns() == ("relative_sharpness", "confidence")
    assert cv.accuracy_mean > 0.85 and det.meta["log_floor"] == core.LOG_FLOOR
    assert det.operating_point() == (0.0, "above") and "logistic" in det.parameters()
    doc = det.to_json()
    assert doc["method"] == "pair" and doc["features"] == ["relative_sharpness", "confidence"]
    path = tmp_path / "pair.json"
    save_detector(path, det)
    back = load_detector(path)
    assert type(back) is PairLogistic and back.to_json() == json.loads(path.read_text())
    assert np.array_equal(back.decision(X), det.decision(X))
    doc["features"] = ["confidence", "relative_sharpness"]
    with pytest.raises(DetectorError, match="columns"):
        detector_from_json(doc)


def test_a_registered_method_runs_through_detect_fit_and_apply(pair, tmp_path):
    assert "pair" in DetectSettings(method="all").methods
    assert DetectSettings(method="pair").score == "pair" and not DetectSettings(method="pair").uses_probe
    path = tmp_path / "pair.json"
    fitted = fr.detect(EXAMPLE, limit=40, steps=3, eps=0.3, alpha=0.03, folds=2, method="pair", save=str(path),
                       samples=False)
    s = fitted.summary
    assert s["method"] == "pair" and s["score"] == "pair" and s["threshold"] == 0.0
    assert s["logistic"]["features"] == ["relative_sharpness", "confidence"]
    assert s["baseline"]["method"] == "stump"
    assert fitted.config["conventions"]["pair"] == PairLogistic.conventions
    applied = fr.detect(EXAMPLE, limit=40, detector=str(path))
    assert applied.summary["method"] == "pair" and applied.summary["n"] == 40
    # the applied decisions are the fitted detector's (same features, same numbers)
    det = fitted.artifacts["detector"]
    rows = [r for r in fitted.artifacts["outcome"].rows if not r["adversarial"]]
    assert [r["flagged"] for r in applied.samples] == [r["flagged"] for r in rows]
    assert [r["score"] for r in applied.samples] == [r["score"] for r in rows]
    assert type(load_detector(path)) is PairLogistic and det.method == "pair"


@pytest.mark.parametrize("content, fragment", [
    ('"threshold": "1.0", "direction": "above"', "finite number"),
    ('"threshold": 1.0, "direction": "sideways"', "sideways"),
    ('"threshold": 1.0, "direction": "above", "score": "loss"', "not 'loss'"),
])
def test_threshold_files_refuse_bad_parameters_and_unknown_scores(tmp_path, content, fragment):
    doc = json.loads('{"kind": "flatrob-detector", "schema_version": 1, "method": "stump", '
                     f'"score": "relative_sharpness", {content}}}')
    with pytest.raises(DetectorError, match=fragment):
        detector_from_json(doc)


def test_errors_name_the_option_not_a_flag():
    X, y = np.arange(20.0), _labels(10, 10)
    cases = [
        (lambda: core.fit(X, y, method="forest"), "method"),
        (lambda: core.fit(X, y, score="loss"), "score"),
        (lambda: core.fit(X, y, seed=-1), "seed"),
        (lambda: core.cross_validate(X, y, folds=1), "folds"),
        (lambda: core.cross_validate(X[:13], y[:13], folds=5), "folds"),
        (lambda: core.class_means(np.array([3, 0]), np.ones((2, 2))), "fit_data"),
        (lambda: Probe(steps=4), "probe_steps"),
        (lambda: Probe(size=0.0), "probe_size"),
    ]
    for call, option in cases:
        with pytest.raises(OptionError) as info:
            call()
        assert option in info.value.options
        assert f"{option}=" in str(info.value) and "--" not in str(info.value)
        flag = "--" + option.replace("_", "-")
        assert flag in info.value.worded(lambda name: "--" + name.replace("_", "-"))
    with pytest.raises(OptionError, match=r"method= '\{x\}' is not a detector method"):
        core.fit(X, y, method="{x}")
