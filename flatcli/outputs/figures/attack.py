"""The figure of ``flatrob attack --plot``: the paper's Fig. 3 (loss and sharpness along PGD), and Fig. 14's layers."""

from __future__ import annotations

import os

from flatcli.outputs.figures import check_plot_path, panel_grid, pyplot, save

#: The quantile bands drawn around the mean (keys of ``*_quantiles_by_step``), inner band last.
BANDS = (("q10", "q90", "10-90%", 0.12), ("q25", "q75", "25-75%", 0.25))


def attack_figure(summary: dict, path: str | os.PathLike, title: str = "", layers=()) -> None:
    """The paper's Fig. 3: the mean over samples of the loss and of the relative sharpness against the PGD step
    (the line the paper draws and the uncanny valley is read from), the median beside it, and the 25-75% and
    10-90% quantile bands over samples (the sharpness is skewed and non-negative: a +-std band would cross 0);
    one more panel per entry of ``layers`` (``summary.layers``: the relative sharpness of an earlier layer, Fig. 14;
    per-sample layers get the same quantile bands, Hutchinson estimates a +-1 standard error band of the mean);
    at most :data:`~flatcli.outputs.figures.MAX_COLUMNS` panels a row."""
    fmt = check_plot_path(path)
    plt = pyplot()
    import numpy as np

    steps = np.arange(len(summary["mean_loss_by_step"]))
    fig, axes = panel_grid(plt, 2 + len(layers))
    panels = [
        (axes[0], summary, "loss_quantiles_by_step", "mean_loss_by_step", "loss (cross-entropy)", "tab:red"),
        (axes[1], summary, "sharpness_quantiles_by_step", "mean_sharpness_by_step", "relative sharpness (head)",
         "tab:blue"),
    ]
    for ax, entry in zip(axes[2:], layers):
        what = "Gauss-Newton, " if entry["curvature"] == "gauss-newton" else ""
        label = f"rel. sharpness @{entry['layer']} ({what}{entry['method']})"
        panels.append((ax, entry, "sharpness_quantiles_by_step", "mean_sharpness_by_step", label, "tab:green"))
        ax.axvline(entry["sharpness_peak_step"], color="grey", linestyle=":", linewidth=1)
    for ax, source, quantile_key, mean_key, label, colour in panels:
        mean = np.asarray(source[mean_key], dtype=float)
        q = source.get(quantile_key)
        if q is not None:
            for low, high, name, alpha in BANDS:
                ax.fill_between(steps, np.asarray(q[low], dtype=float), np.asarray(q[high], dtype=float),
                                color=colour, alpha=alpha, linewidth=0, label=name)
            ax.plot(steps, np.asarray(q["q50"], dtype=float), color=colour, linestyle="-.", linewidth=1,
                    label="median")
        else:  # a Hutchinson estimate: no per-sample values, the uncertainty of the mean
            se = np.asarray(source["sharpness_stderr_by_step"], dtype=float)
            ax.fill_between(steps, np.maximum(mean - se, 0.0), mean + se, color=colour, alpha=0.18, linewidth=0,
                            label="±1 s.e. of the mean")
        ax.plot(steps, mean, color=colour, marker="o", markersize=3, label="mean (the paper's line)")
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
