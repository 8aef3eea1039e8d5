"""The figure of ``--plot`` with several checkpoints: each summary measure against the checkpoint order, and
each checkpoint's curves overlaid."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, panel_grid, pyplot, save

#: Up to this many checkpoints the overlaid curves have a legend; beyond, a colour bar (first to last).
LEGEND_LINES = 10


def checkpoints_figure(labels: list[str], series: dict[str, dict[str, list]], path: str | os.PathLike,
                       title: str = "", marks: dict[str, dict[str, list[bool]]] | None = None,
                       curves: dict[str, dict] | None = None) -> None:
    """First rows: one panel per entry of ``series`` (``{panel: {measure: [value per checkpoint]}}``), one line
    per measure, the checkpoints in order on the x axis (``labels`` their names). Failed checkpoints are gaps;
    a panel whose values are all positive and span more than three decades is drawn on a log scale; ``marks``
    (``{panel: {measure: [flag per checkpoint]}}``) rings the flagged points (``sweep-scale``'s gradient
    masking). Then one panel per entry of ``curves`` (:func:`flatcli.runs.many.curve_series`): one line per
    checkpoint, coloured from the first to the last, its masked points ringed. At most three panels a row."""
    fmt = check_plot_path(path)
    plt = pyplot()
    import numpy as np

    marks, curves = marks or {}, curves or {}
    x = np.arange(len(labels))
    panels = list(series.items()) or [("no measure", {})]
    fig, axes = panel_grid(plt, len(panels), len(curves), width=max(4.5, 0.35 * len(labels) + 2.5), height=3.8)
    for ax, (panel, measures) in zip(axes, panels):
        finite = []
        for name, values in measures.items():
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            finite.extend(y[np.isfinite(y)].tolist())
            line, = ax.plot(x, y, marker="o", markersize=3, label=name)
            _ring(ax, x, y, marks.get(panel, {}).get(name), line.get_color())
        _log_if_wide(ax, finite)
        ax.set_title(panel, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                           fontsize=7)
        ax.set_xlabel("checkpoint")
        ax.grid(alpha=0.3)
        if measures:
            ax.legend(loc="best", fontsize=7)
    colours = plt.get_cmap("viridis")
    for ax, (panel, curve) in zip(axes[len(panels):], curves.items()):
        finite = []
        for index, name, xs, ys, masked in curve["lines"]:
            y = np.array([np.nan if v is None else v for v in ys], dtype=float)
            finite.extend(y[np.isfinite(y)].tolist())
            colour = colours(0.9 * index / max(len(labels) - 1, 1))
            ax.plot(xs, y, marker="o", markersize=2.5, linewidth=1.2, color=colour, label=name)
            _ring(ax, np.asarray(xs, dtype=float), y, masked, "tab:red")
        if curve["log_x"]:
            ax.set_xscale("log")
        _log_if_wide(ax, finite)
        ax.set_title(f"{panel}, one line per checkpoint", fontsize=10)
        ax.set_xlabel(curve["x"])
        ax.grid(alpha=0.3)
        if len(curve["lines"]) <= LEGEND_LINES:
            ax.legend(loc="best", fontsize=7)
        else:
            bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, len(labels) - 1), colours), ax=ax)
            bar.set_label("checkpoint (first to last)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, fmt)


def _ring(ax, x, y, flags, colour) -> None:
    """Open rings (labelled ``masking`` once per panel) at the points where ``flags`` is true."""
    import numpy as np

    if flags is None or not any(flags):
        return
    flags = np.asarray(flags, dtype=bool)
    seen = any(c.get_label() == "masking" for c in ax.collections)
    ax.scatter(x[flags], y[flags], s=110, facecolors="none", edgecolors=colour, linewidths=1.3,
               label="_masking" if seen else "masking", zorder=3)


def _log_if_wide(ax, values: list[float]) -> None:
    """A log y axis when the values are all positive and span more than three decades."""
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")
