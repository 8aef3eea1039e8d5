"""The figure of ``--plot`` with several checkpoints: each summary measure against the checkpoint order."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, pyplot, save


def checkpoints_figure(labels: list[str], series: dict[str, dict[str, list]], path: str | os.PathLike,
                       title: str = "") -> None:
    """One panel per entry of ``series`` (``{panel: {measure: [value per checkpoint]}}``), one line per
    measure, the checkpoints in order on the x axis (``labels`` their names). Failed checkpoints are gaps;
    a panel whose values are all positive and span more than three decades is drawn on a log scale."""
    fmt = check_plot_path(path)
    plt = pyplot()
    import numpy as np

    x = np.arange(len(labels))
    panels = list(series.items()) or [("no measure", {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.35 * len(labels) + 2.5) * len(panels), 3.8),
                             constrained_layout=True, squeeze=False)
    for ax, (panel, measures) in zip(axes[0], panels):
        finite = []
        for name, values in measures.items():
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            finite.extend(y[np.isfinite(y)].tolist())
            ax.plot(x, y, marker="o", markersize=3, label=name)
        if finite and min(finite) > 0 and max(finite) / min(finite) > 1e3:
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                           fontsize=7)
        ax.set_xlabel("checkpoint")
        ax.grid(alpha=0.3)
        if measures:
            ax.legend(loc="best", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, fmt)
