"""What the table and ``--plot`` of several checkpoints show: names that tell the checkpoints apart, sweep-scale's
masking verdict, each checkpoint's curves overlaid (figures read back as matplotlib objects)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bench.common import perturbed_copies
from flatcli.runs.many import CheckpointRun, ManyResult, curve_series, masking_marks, short_names, trend_series
from flatcli.runs.result import Result
from tests.conftest import EXAMPLE
from tests.outputs import figures_of


@pytest.mark.parametrize("given, shown", [
    (["runs/a/model.safetensors", "runs/b/model.safetensors"], ["a", "b"]),
    (["ckpt/cnn_seed0.safetensors", "ckpt/cnn_seed1.safetensors"], ["cnn_seed0", "cnn_seed1"]),
    (["/x/runs/s0/e10.safetensors", "/x/runs/s1/e10.safetensors", "/x/runs/s0/e20.safetensors"],
     ["s0/e10", "s1/e10", "s0/e20"]),
    (["/t/epoch0/model.safetensors", "/t/m2.safetensors", EXAMPLE], ["epoch0/model", "m2", EXAMPLE]),
    (["runs/a/model.safetensors", "runs/a/b/model.safetensors"], ["model", "b/model"]),
    (["model.safetensors", "runs/model.safetensors"], ["model", "runs/model"]),
    (["/x/a.safetensors", "b.safetensors"], ["/x/a", "b"]),
    (["r/a.safetensors", "r/a.safetensors"], ["a", "a"]),  # the same checkpoint twice: one name
    (["a/digits-cnn", EXAMPLE], ["digits-cnn", EXAMPLE]),
    (["hf-hub:org/m1", "hf-hub:org/m2"], ["hf-hub:org/m1", "hf-hub:org/m2"]),
    (["runs/a/model.safetensors"], ["model"]),
])
def test_short_names_keep_what_differs(given, shown):
    assert short_names(given) == shown


def _sweep_summary(robust: list[float], masking: list[bool | None]) -> dict:
    scales = [0.5, 1.0, 50.0]
    return {"n": 20, "scales": [{"scale": s, "clean_accuracy": 0.9, "robust_accuracy": r, "sharpness_median": 10.0 / s,
                                 "masking": m} for s, r, m in zip(scales, robust, masking)]}


SWEEP = ManyResult("sweep-scale", {}, [
    CheckpointRun(0, "/data/experiment-with-a-long-name/seed0/model.safetensors", None,
                  Result("sweep-scale", {}, _sweep_summary([0.1, 0.2, 0.9], [False, False, True]))),
    CheckpointRun(1, "/data/experiment-with-a-long-name/seed1/model.safetensors", None, error="not a checkpoint"),
    CheckpointRun(2, "/data/experiment-with-a-long-name/seed2/model.safetensors", None,
                  Result("sweep-scale", {}, _sweep_summary([0.0, 0.1, 0.2], [False, False, False]))),
], [])


def test_sweep_table_has_a_row_per_scale_with_its_masking_verdict_and_whole_names():
    from flatcli.cli.tables.many import render

    out = io.StringIO()
    render(out, "sweep-scale", SWEEP.summaries)
    text = out.getvalue()
    assert "…" not in text and "seed0" in text and "seed2" in text and "experiment" not in text
    lines = [line for line in text.splitlines() if line.startswith("│")]
    masked = [line for line in lines if line.rstrip("│ ").endswith("yes")]
    assert len(masked) == 1 and "50" in masked[0]  # seed0 at s=50
    assert "masking" in text and "not a" in text  # the error, folded
    assert sum(line.rstrip("│ ").endswith("no") for line in lines) == 5
    assert "--format json has the paths" in text


def test_sweep_plot_rings_masking_and_overlays_one_line_per_checkpoint(tmp_path):
    pytest.importorskip("matplotlib")
    from flatcli.outputs.figures import checkpoints as figure

    fig = _drawn(figure, SWEEP, tmp_path / "sweep.svg")
    assert (tmp_path / "sweep.svg").read_text().lstrip().startswith("<?xml")
    trend, curves = _panels(fig)
    assert [t.get_text() for t in trend["robust accuracy"].get_xticklabels()] == ["seed0", "seed1", "seed2"]
    rings = [c for c in trend["robust accuracy"].collections if c.get_label() == "masking"]
    assert len(rings) == 1 and rings[0].get_offsets().tolist() == [[0.0, 0.9]]  # seed0's s=50; seed1 failed: a gap
    line = {ln.get_label(): ln.get_ydata() for ln in trend["robust accuracy"].get_lines()}["robust s=50"]
    assert line[0] == 0.9 and np.isnan(line[1]) and line[2] == 0.2
    overlay = curves["robust accuracy"]
    assert {ln.get_label(): ln.get_ydata().tolist() for ln in overlay.get_lines()} == \
           {"seed0": [0.1, 0.2, 0.9], "seed2": [0.0, 0.1, 0.2]}
    assert overlay.get_xscale() == "log"
    (ring,) = [c for c in overlay.collections if c.get_label() == "masking"]
    assert ring.get_offsets().tolist() == [[50.0, 0.9]]


def test_many_checkpoints_overlay_has_a_colour_bar_instead_of_a_legend(tmp_path):
    pytest.importorskip("matplotlib")
    from flatcli.outputs.figures import checkpoints as figure

    runs = [CheckpointRun(i, f"runs/epoch{i:02d}.safetensors", None, Result("attack", {}, {
        "n": 5, "clean_accuracy": 1.0, "mean_loss_by_step": [0.0, i], "mean_sharpness_by_step": [1.0, i]}))
        for i in range(figure.LEGEND_LINES + 2)]
    fig = _drawn(figure, ManyResult("attack", {}, runs, []), tmp_path / "many.pdf")
    assert (tmp_path / "many.pdf").read_bytes().startswith(b"%PDF")
    _, curves = _panels(fig)
    assert curves["mean loss"].get_legend() is None and len(curves["mean loss"].get_lines()) == len(runs)
    assert any(ax.get_ylabel() == "checkpoint (first to last)" for ax in fig.axes)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return perturbed_copies(tmp_path_factory.mktemp("ckpts"), 3)


def test_attack_plot_of_several_checkpoints_overlays_their_curves(ckpts, tmp_path):
    pytest.importorskip("matplotlib")
    from flatcli import api
    from flatcli.outputs.figures import checkpoints as figure

    with figures_of(figure) as caught:
        many = api.attack([ckpts[0], ckpts[2], EXAMPLE], "digits", limit=16, batch_size=16, steps=3, eps=0.2,
                          alpha=0.05, device="cpu", plot=str(tmp_path / "attack.png"))
    assert (tmp_path / "attack.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trend, curves = _panels(caught[0])
    assert set(trend) == {"accuracy", "relative sharpness", "uncanny valley"}
    assert [t.get_text() for t in trend["accuracy"].get_xticklabels()] == ["epoch0/model", "m2", EXAMPLE]
    for panel, key in (("mean loss", "mean_loss_by_step"), ("mean relative sharpness", "mean_sharpness_by_step")):
        lines = {ln.get_label(): ln.get_ydata().tolist() for ln in curves[panel].get_lines()}
        assert lines == {name: r.summary[key] for name, r in zip(["epoch0/model", "m2", EXAMPLE], many.results)}
        assert curves[panel].get_xlabel() == "attack step"
    geometry = {ax.get_subplotspec().get_geometry()[:2] for ax in [*trend.values(), *curves.values()]}
    assert geometry == {(2, 3)}  # the trend on the first row, the curves on the second


def _drawn(figure, many: ManyResult, path):
    """Draw ``many``'s figure as ``--plot`` does; the Figure, caught before it is saved and closed."""
    with figures_of(figure) as caught:
        figure.checkpoints_figure(short_names([run.checkpoint for run in many.runs]), trend_series(many), path,
                                  marks=masking_marks(many), curves=curve_series(many))
    return caught[0]


def _panels(fig) -> tuple[dict, dict]:
    """The trend panels and the overlay panels of a several-checkpoint figure, by title."""
    shown = [ax for ax in fig.axes if ax.axison and ax.get_title()]
    trend = {ax.get_title(): ax for ax in shown if not ax.get_title().endswith(", one line per checkpoint")}
    curves = {ax.get_title().removesuffix(", one line per checkpoint"): ax for ax in shown
              if ax.get_title().endswith(", one line per checkpoint")}
    return trend, curves
