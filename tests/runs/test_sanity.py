"""A clean accuracy at chance says the model is read wrong: one note and ``summary.sanity``, or exit 2 when strict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flatcli.errors import DataError
from flatcli.inputs.data import load_data
from flatcli.inputs.data.tensors import from_tensors
from flatcli.models.loading import load_model
from flatcli.runs.bound import BoundSettings, bound
from flatcli.runs.sanity import accuracy_of, sanity
from flatcli.runs.sharpness import SharpnessSettings, sharpness
from tests.conftest import EXAMPLE, run_context


@pytest.fixture(scope="module")
def example():
    return load_model(EXAMPLE)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", split="test", limit=120)


def _shifted(data):
    """The same images with every label moved to the next class: a label order other than the model's."""
    return from_tensors(data.x, (data.y + 1) % 10, name="digits, labels shifted")


def test_threshold_is_chance_plus_a_tenth_of_the_rest():
    assert sanity(0.19, 10)["at_chance"] and not sanity(0.191, 10)["at_chance"]
    assert sanity(0.55, 2)["threshold"] == pytest.approx(0.55) and sanity(0.1, 100)["threshold"] == pytest.approx(0.109)


def test_a_model_read_right_gets_no_sanity_note(example, digits):
    result = sharpness(run_context(example, digits), SharpnessSettings())
    assert result.summary["accuracy"] > 0.9 and "sanity" not in result.summary and result.notes == []


@pytest.mark.parametrize("run", ["sharpness", "bound"])
def test_chance_accuracy_is_one_note_and_summary_sanity(example, digits, run):
    ctx = run_context(example, _shifted(digits))
    result = (sharpness(ctx, SharpnessSettings()) if run == "sharpness"
              else bound(ctx, BoundSettings(epsilons=(0.1,))))
    check = result.summary["sanity"]
    assert check["at_chance"] and check["accuracy"] < 0.05 and check["chance"] == pytest.approx(0.1)
    lines = [n for n in result.notes if "chance" in n]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert all(word in lines[0] for word in ("normalisation", "architecture", "preprocessing", "label order"))


def test_strict_turns_the_note_into_an_error(example, digits):
    ctx = dataclasses.replace(run_context(example, _shifted(digits)), strict=True)
    with pytest.raises(DataError, match=r"clean accuracy 0\.0\d\d .* at or below chance .*strict"):
        sharpness(ctx, SharpnessSettings())
    strict_ok = dataclasses.replace(run_context(example, digits), strict=True)
    assert "sanity" not in sharpness(strict_ok, SharpnessSettings()).summary


def test_accuracy_of_matches_labels_by_source_index(example, digits):
    ctx = run_context(example, digits)
    index = digits.index.numpy()[::-1]
    labels = digits.y.numpy()[::-1]
    assert accuracy_of(ctx, index, labels) == 1.0
    assert accuracy_of(ctx, index, (labels + 1) % 10) == 0.0
    assert np.isnan(accuracy_of(ctx, index[:0], labels[:0]))
