"""The figure of ``flatrob attack --plot``: the paper's Fig. 3 (loss and sharpness along PGD)."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, pyplot, save


def attack_figure(summary: dict, path: str | os.PathLike, title: str = "") -> None:
    """The paper's Fig. 3: mean (and +-1 std band) of loss and of relative sharpness against the PGD step."""
    fmt = check_plot_path(path)
    plt = pyplot()
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
    save(fig, path, fmt)
