"""The figure of ``flatrob attack --plot``: the paper's Fig. 3 (loss and sharpness along PGD), and Fig. 14's layers."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, pyplot, save

#: Panels per row: more layers wrap onto further rows instead of a long strip.
MAX_COLUMNS = 3


def attack_figure(summary: dict, path: str | os.PathLike, title: str = "", layers=()) -> None:
    """The paper's Fig. 3: mean (and +-1 std band) of loss and of relative sharpness against the PGD step;
    one more panel per entry of ``layers`` (``summary.layers``: the relative sharpness of an earlier layer, Fig. 14;
    its band is +-1 std over samples, or +-1 standard error for Hutchinson estimates); at most
    :data:`MAX_COLUMNS` panels a row."""
    fmt = check_plot_path(path)
    plt = pyplot()
    import numpy as np

    steps = np.arange(len(summary["mean_loss_by_step"]))
    count = 2 + len(layers)
    columns = min(count, MAX_COLUMNS)
    rows = -(-count // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), constrained_layout=True, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[count:]:  # the empty cells of the last row
        ax.set_axis_off()
    panels = [
        (axes[0], summary, "mean_loss_by_step", "std_loss_by_step", "loss (cross-entropy)", "tab:red"),
        (axes[1], summary, "mean_sharpness_by_step", "std_sharpness_by_step", "relative sharpness (head)", "tab:blue"),
    ]
    for ax, entry in zip(axes[2:], layers):
        spread = "std_sharpness_by_step" if entry.get("std_sharpness_by_step") is not None else "sharpness_stderr_by_step"
        what = "Gauss-Newton, " if entry["curvature"] == "gauss-newton" else ""
        label = f"rel. sharpness @{entry['layer']} ({what}{entry['method']})"
        panels.append((ax, entry, "mean_sharpness_by_step", spread, label, "tab:green"))
        ax.axvline(entry["sharpness_peak_step"], color="grey", linestyle=":", linewidth=1)
    for ax, source, mean_key, std_key, label, colour in panels:
        mean = np.asarray(source[mean_key], dtype=float)
        std = np.asarray(source[std_key], dtype=float)
        band = "±1 std" if std_key.startswith("std") else "±1 s.e."
        ax.fill_between(steps, np.maximum(mean - std, 0.0), mean + std, color=colour, alpha=0.18, linewidth=0, label=band)
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
