"""Figures (matplotlib is an optional extra: ``pip install 'flatrob[plot]'``), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from flatcli.errors import MissingExtraError, UsageError
from flatcli.output import atomic_path

FORMATS = ("png", "pdf", "svg")


def require_matplotlib() -> None:
    """Fail with one clear line, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "--plot needs matplotlib, which is not installed; pip install 'flatrob[plot]' (or drop --plot)"
        ) from None


def check_plot_path(path: str | os.PathLike, option: str = "--plot") -> str:
    """The image format implied by the suffix; UsageError for an unknown suffix or a missing directory."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"{option} {path}: use a .png, .pdf or .svg file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: directory {parent} does not exist; create it first")
    return fmt


def attack_figure(summary: dict, path: str | os.PathLike, title: str = "") -> None:
    """The paper's Fig. 3: mean (and +-1 std band) of loss and of relative sharpness against the PGD step."""
    require_matplotlib()
    fmt = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(len(summary["mean_loss_by_step"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    panels = (
        (axes[0], "mean_loss_by_step", "std_loss_by_step", "loss (cross-entropy)", "tab:red"),
        (axes[1], "mean_sharpness_by_step", "std_sharpness_by_step", "relative sharpness", "tab:blue"),
    )
    for ax, mean_key, std_key, label, colour in panels:
        mean = np.asarray(summary[mean_key], dtype=float)
        std = np.asarray(summary[std_key], dtype=float)
        ax.fill_between(steps, np.maximum(mean - std, 0.0), mean + std, color=colour, alpha=0.18, linewidth=0, label="±1 std")
        ax.plot(steps, mean, color=colour, marker="o", markersize=3, label="mean")
        ax.set_xlabel("PGD step")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    peak = summary.get("sharpness_peak_step")
    if peak is not None:
        axes[1].axvline(peak, color="grey", linestyle=":", linewidth=1)
    acc = summary.get("accuracy_by_step")
    if acc is not None:
        twin = axes[0].twinx()
        twin.plot(steps, acc, color="black", linestyle="--", linewidth=1)
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("accuracy (dashed)")
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
