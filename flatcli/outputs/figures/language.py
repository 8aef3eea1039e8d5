"""The figure of ``flatrob attack --attack gcg --plot``: the paper's Fig. 15 (target loss and relative sharpness
of the head along GCG, per step)."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, pyplot, save

#: Prompts whose own trajectories are drawn as thin lines beside the mean.
EXAMPLES = 5


def gcg_figure(points: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Fig. 15: per GCG step, the mean over prompts of the target loss and of the relative sharpness, with the
    25-75% quantile band (the sharpness is skewed, so no ±std band that crosses 0), and the trajectories of the
    first :data:`EXAMPLES` prompts. ``points``: one ``{sample, step, loss, relative_sharpness}`` per prompt and
    step; a prompt that stopped early keeps its last value."""
    fmt = check_plot_path(path)
    plt = pyplot()
    import numpy as np

    samples = sorted({p["sample"] for p in points})
    length = 1 + max(p["step"] for p in points)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, key, label, colour in ((axes[0], "loss", "target loss (mean cross-entropy)", "tab:red"),
                                   (axes[1], "relative_sharpness", "relative sharpness (LM head)", "tab:blue")):
        grid = np.full((len(samples), length), np.nan)
        for p in points:
            grid[samples.index(p["sample"]), p["step"]] = p[key]
        for row in grid:  # early stops: the last value carries on
            last = np.where(~np.isnan(row))[0].max()
            row[last + 1:] = row[last]
        steps = np.arange(length)
        ax.fill_between(steps, np.quantile(grid, 0.25, axis=0), np.quantile(grid, 0.75, axis=0), color=colour,
                        alpha=0.18, linewidth=0, label="25-75%")
        for row in grid[:EXAMPLES]:
            ax.plot(steps, row, color=colour, alpha=0.35, linewidth=0.8)
        ax.plot(steps, grid.mean(axis=0), color=colour, marker="o", markersize=2, label="mean")
        ax.set_xlabel("GCG step")
        ax.set_ylabel(label)
        if key == "loss":
            ax.set_ylim(bottom=0)  # the sharpness keeps its own range: its rise and fall are the point
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, fmt)
