"""The options added with the layer methods, the detectors and the other attacks have ranges too (docs/guarantees.md,
"Limits"): each out-of-range value is bad input, refused before any work; --fit-data is an input no output
may replace."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import EXAMPLE, assert_one_error, invoke

BIG = str(10**9)

CASES = {
    "--fisher-samples 10^9": (["sharpness", EXAMPLE, "--limit", "4", "--layers", "conv3", "--layer-method",
                               "fisher-mc", "--fisher-samples", BIG], "--fisher-samples needs 2 to 10,000"),
    "--probe-size 1e308": (["detect", EXAMPLE, "--limit", "4", "--method", "profile", "--probe-size", "1e308"],
                           "--probe-size must be"),
    "--adaptive-weight 1e308": (["detect", EXAMPLE, "--limit", "4", "--adaptive", "--adaptive-weight", "1e308"],
                                "--adaptive-weight must be"),
    "apgd --steps 10^9": (["attack", EXAMPLE, "--limit", "4", "--attack", "apgd", "--steps", BIG], "--steps must be"),
    "apgd --eps 1e308": (["attack", EXAMPLE, "--limit", "4", "--attack", "apgd", "--eps", "1e308"], "--eps must be"),
    "square --queries 10^9": (["attack", EXAMPLE, "--limit", "4", "--attack", "square", "--queries", BIG],
                              "--queries must be a whole number from 1 to 100,000"),
    "square --restarts 10^9": (["attack", EXAMPLE, "--limit", "4", "--attack", "square", "--restarts", BIG],
                               "--restarts must be"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_option_is_bad_input(case, tmp_path):
    args, words = CASES[case]
    res = invoke(*args, "-o", tmp_path / "out.json")
    assert_one_error(res, words)
    assert list(tmp_path.iterdir()) == []


def test_an_output_may_not_replace_the_fit_data(tmp_path):
    data = tmp_path / "fit.safetensors"
    save_file({"x": torch.rand(20, 1, 8, 8), "y": torch.arange(20) % 10}, str(data))
    before = data.read_bytes()
    res = invoke("detect", EXAMPLE, "--limit", "8", "--method", "mahalanobis", "--fit-data", f"tensors:{data}",
                 "--save", data)
    assert_one_error(res, "the --fit-data file")
    assert data.read_bytes() == before
