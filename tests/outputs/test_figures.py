"""Figures: how they word their settings, and what they draw (read back from the matplotlib objects)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flatcli.outputs.figures import eps_text
from tests.conftest import EXAMPLE
from tests.outputs import figures_of


def test_radii_in_255ths_are_written_as_fractions():
    assert eps_text(8 / 255) == "8/255" and eps_text(2 / 255) == "2/255" and eps_text(1.0) == "1"
    assert eps_text(0.025) == "0.025" and eps_text(0.0313725) == "0.03137" and eps_text(0.0) == "0"


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A small PGD-linf run on the example with its Fig. 3 and its trajectory file: the figure's axes (caught
    before they are saved) and the per-step loss and sharpness of every sample, (steps, samples)."""
    pytest.importorskip("matplotlib")
    from flatcli import api
    from flatcli.outputs.figures import attack as figure

    out = tmp_path_factory.mktemp("fig3")
    with figures_of(figure) as caught:
        result = api.attack(EXAMPLE, "digits", limit=40, batch_size=16, steps=6, eps=0.3, alpha=0.08, device="cpu",
                            trajectory=str(out / "traj.jsonl"), plot=str(out / "fig3.png"))
    rows = [json.loads(line) for line in (out / "traj.jsonl").read_text().splitlines()]
    steps, samples = 1 + max(r["step"] for r in rows), sorted({r["index"] for r in rows})
    grid = {key: np.full((steps, len(samples)), np.nan) for key in ("loss", "relative_sharpness")}
    for r in rows:
        for key, values in grid.items():
            values[r["step"], samples.index(r["index"])] = r[key]
    return result, caught[0].axes, grid, out / "fig3.png"


def _band(ax, label: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edge (``n`` steps) of the band labelled ``label``, read back from its PolyCollection."""
    (poly,) = [c for c in ax.collections if c.get_label() == label]
    vertices = poly.get_paths()[0].vertices  # fill_between: a start point, the lower edge, an end point, the upper
    np.testing.assert_array_equal(vertices[1:n + 1, 0], np.arange(n))  # edge backwards
    return vertices[1:n + 1, 1], vertices[n + 2:2 * n + 2, 1][::-1]


def test_fig3_bands_are_the_quantiles_of_the_samples_and_never_below_zero(drawn):
    result, axes, grid, path = drawn
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ax, key in zip(axes[:2], ("loss", "relative_sharpness")):
        values = grid[key]
        assert (values >= 0).all()
        for low, high, label in ((0.25, 0.75, "25-75%"), (0.1, 0.9, "10-90%")):
            lower, upper = _band(ax, label, len(values))
            np.testing.assert_allclose(lower, np.quantile(values, low, axis=1), rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(upper, np.quantile(values, high, axis=1), rtol=1e-6, atol=1e-12)
            assert (lower >= 0).all()
        lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
        np.testing.assert_allclose(lines["median"], np.median(values, axis=1), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(lines["mean (the paper's line)"], values.mean(axis=1), rtol=1e-6)
    sharp = grid["relative_sharpness"]
    assert (sharp.mean(1) - sharp.std(1) < 0).any()  # a +-std band would have crossed 0 here
    q = result.summary["sharpness_quantiles_by_step"]
    assert list(q) == ["q10", "q25", "q50", "q75", "q90"]
    np.testing.assert_allclose(q["q50"], np.median(sharp, axis=1), rtol=1e-6)


def test_quantiles_by_step_of_no_sample_are_nan():
    from flatcli.core.statistics import quantiles_by_step

    q = quantiles_by_step(np.zeros((3, 0)))
    assert set(q) == {"q10", "q25", "q50", "q75", "q90"} and np.isnan(q["q50"]).all() and len(q["q50"]) == 3
    np.testing.assert_allclose(quantiles_by_step(np.arange(10.0).reshape(1, 10))["q25"], [2.25])


def test_layer_panels_wrap_at_three_per_row(tmp_path):
    pytest.importorskip("matplotlib")
    from flatcli.outputs.figures import attack as figure

    steps = 4
    band = {q: [0.0] * steps for q in ("q10", "q25", "q50", "q75", "q90")}
    layer = {"layer": "conv", "curvature": "hessian", "method": "exact", "sharpness_peak_step": 1,
             "mean_sharpness_by_step": [1.0] * steps, "sharpness_quantiles_by_step": band}
    hutch = {**layer, "method": "hutchinson", "sharpness_quantiles_by_step": None,
             "sharpness_stderr_by_step": [0.5] * steps}
    summary = {"mean_loss_by_step": [1.0] * steps, "mean_sharpness_by_step": [1.0] * steps,
               "loss_quantiles_by_step": band, "sharpness_quantiles_by_step": band}
    with figures_of(figure) as caught:
        figure.attack_figure(summary, tmp_path / "f.svg", layers=[layer, layer, layer, hutch])
    fig = caught[0]
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 6 and {ax.get_subplotspec().get_geometry()[:2] for ax in shown} == {(2, 3)}
    width, height = fig.get_size_inches()
    assert width / height < 2400 / 432 / 2  # not a 2400x432 strip
    lower, upper = _band(shown[5], "±1 s.e. of the mean", steps)
    assert (lower >= 0).all() and np.allclose(upper, 1.5)
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
