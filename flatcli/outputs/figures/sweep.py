"""Figures of ``flatrob sweep-scale --plot DIR``: the paper's Fig. 2 (§6.1) and Fig. 13 (D.3).

Take-off steps and widths come from :func:`flatcli.core.trajectories.takeoff` with the run's tau, so the
figures mark exactly what the summary reports; files are written atomically.

* ``fig2_loss_geometry.png``: (a) histograms of the loss increase on the fixed trajectories, one per
  scale; (b) one example's normalised loss along its trajectory at each scale (the basin forming);
  (c) several samples with different basin widths (normalised loss against distance, take-off
  marked); (d) clean relative sharpness at s=1 against basin width at s=1, with Spearman's rho.
* ``fig13_unattackable.png``: (a) clean relative sharpness (mean and median) against s; (b) robust
  accuracy under the per-scale attack, under the same PGD on the margin loss and (``--square``) under
  Square against s, scales flagged as masking marked, clean accuracy for reference; (c) sharpness against
  robust accuracy; (d) accuracy of the s=1 adversarials at each scale (transfer).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import torch

from flatcli.core.trajectories import MIN_RISE, normalized_loss, takeoff
from flatcli.outputs.figures import eps_text, pyplot, save

FIG2 = "fig2_loss_geometry.png"
FIG13 = "fig13_unattackable.png"
#: The files ``--plot DIR`` receives.
FIGURES = (FIG2, FIG13)
#: Loss increases below this are drawn in the lowest bin of the log-scale histogram.
HIST_FLOOR = 1e-12


def sweep_figures(outcome, directory: str | os.PathLike, *, title: str = "", trajectory=None, attack=None) -> list[Path]:
    """Draw both figures of a :class:`flatcli.runs.sweep.SweepOutcome` into ``directory``; return the paths."""
    pyplot()
    directory = Path(directory)
    traj_text = (f"PGD-{trajectory.norm} eps {eps_text(trajectory.eps)}, alpha {eps_text(trajectory.alpha)}, "
                 f"{trajectory.steps} steps") if trajectory else ""
    atk_text = (f"PGD-{attack.norm} eps {eps_text(attack.eps)}, alpha {eps_text(attack.alpha)}, {attack.steps} steps"
                if attack else "")
    paths = [directory / FIG2, directory / FIG13]
    _figure2(outcome, paths[0], f"{title}: fixed trajectories on s=1 ({traj_text})" if title else traj_text)
    _figure13(outcome, paths[1], f"{title}: per-scale attack ({atk_text})" if attack else f"{title}: per-scale attack skipped")
    return paths


def _colours(scales):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    logs = np.log10(np.asarray(scales, dtype=float))
    span = logs.max() - logs.min()
    return [cmap(0.9 * (v - logs.min()) / span if span > 0 else 0.0) for v in logs]


def normalised(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised loss of (T+1, E) curves for drawing (:func:`flatcli.core.trajectories.normalized_loss`
    with no censoring threshold), and whether each rise counts as measured (``> MIN_RISE``). Curves that
    never rise are all NaN."""
    curves = torch.from_numpy(np.ascontiguousarray(loss, dtype=np.float64))
    rise = (curves.max(dim=0).values - curves[0]).numpy()
    return normalized_loss(curves, min_rise=0.0).numpy(), rise > MIN_RISE


def takeoff_steps(loss: np.ndarray, dist_l2: np.ndarray, tau: float, min_rise: float = MIN_RISE) -> tuple[np.ndarray, np.ndarray]:
    """Take-off step (-1 where censored) and basin width of (T+1, E) example curves, by
    :func:`flatcli.core.trajectories.takeoff`: the numbers the summary reports."""
    to = takeoff(torch.from_numpy(np.ascontiguousarray(loss, dtype=np.float64)),
                 torch.from_numpy(np.ascontiguousarray(dist_l2, dtype=np.float64)), tau, min_rise)
    return to.step.numpy(), to.width.numpy()


def _figure2(outcome, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    scales = list(outcome.scales)
    colours = _colours(scales)
    summary = outcome.summary
    tau = summary["takeoff_tau"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    (ax_a, ax_b), (ax_c, ax_d) = axes

    # (a) loss increase per scale, on a log axis (the increase spans many orders of magnitude)
    inc = outcome.samples["loss_increase"]
    finite = inc[np.isfinite(inc)]
    top = max(float(finite.max()) if finite.size else 1.0, HIST_FLOOR * 10)
    bins = np.logspace(np.log10(HIST_FLOOR), np.log10(top) + 0.05, 40)
    for i, s in enumerate(scales):
        values = np.clip(inc[i][np.isfinite(inc[i])], HIST_FLOOR, None)
        ax_a.hist(values, bins=bins, histtype="step", linewidth=1.6, color=colours[i], label=f"s={s:g}")
    ax_a.set_xscale("log")
    ax_a.set_xlabel(f"loss increase l(x_T) - l(x_0)  (values <= {HIST_FLOOR:g} in the first bin)")
    ax_a.set_ylabel("samples")
    ax_a.set_title("(a) loss increase on the fixed trajectories")
    ax_a.legend(fontsize=8, ncol=2)

    ex = outcome.examples
    loss, dist = ex["loss"], ex["dist_l2"]
    E = dist.shape[1] if dist.ndim == 2 else 0
    steps = np.arange(dist.shape[0]) if E else np.zeros(0)

    # (b) one example: its normalised loss at each scale
    if E:
        correct = outcome.samples.get("clean_correct")
        j = _pick_example(loss, tau, correct[0][:E] if correct is not None else None)
        for i, s in enumerate(scales):
            n, measured = normalised(loss[i][:, [j]])
            if np.isnan(n).all():
                continue
            ax_b.plot(steps, n[:, 0], color=colours[i], linestyle="-" if measured[0] else ":",
                      marker="o", markersize=2.5, label=f"s={s:g}" + ("" if measured[0] else " (rise < 1e-6)"))
        ax_b.axhline(tau, color="grey", linestyle="--", linewidth=0.8)
        ax_b.set_title(f"(b) basin forming: sample {int(ex['index'][j])}, normalised loss at each scale")
        ax_b.legend(fontsize=8, ncol=2)
    else:
        _empty(ax_b, "no example trajectories kept")
    ax_b.set_xlabel("PGD step")
    ax_b.set_ylabel("(l_t - l_0) / (max l - l_0)")

    # (c) several samples with different basin widths, at the scale where widths differ most
    if E:
        i, chosen, widths = _pick_width_examples(outcome, tau)
        if chosen:
            cm = plt.get_cmap("plasma")
            for r, j in enumerate(chosen):
                n, _ = normalised(loss[i][:, [j]])
                c = cm(0.85 * r / max(len(chosen) - 1, 1))
                ax_c.plot(dist[:, j], n[:, 0], color=c, marker="o", markersize=2.5,
                          label=f"sample {int(ex['index'][j])}: width {widths[r]:.3g}")
                ax_c.axvline(widths[r], color=c, linestyle=":", linewidth=1)
            ax_c.axhline(tau, color="grey", linestyle="--", linewidth=0.8)
            ax_c.set_title(f"(c) basin widths differ by sample (s={scales[i]:g})")
            ax_c.legend(fontsize=8)
        else:
            _empty(ax_c, "every example trajectory is censored (the loss never rises)")
    else:
        _empty(ax_c, "no example trajectories kept")
    ax_c.set_xlabel("||x_t - x_0||_2")
    ax_c.set_ylabel("normalised loss")

    # (d) sharpness at s=1 vs basin width at s=1
    ref = {k: v[~outcome.reference["nonfinite"].astype(bool)] for k, v in outcome.reference.items()}  # flagged: left out
    cens = ref["censored"].astype(bool)
    ax_d.scatter(ref["clean_sharpness"][~cens], ref["width"][~cens], s=10, alpha=0.6, color="tab:blue", label="measured")
    if cens.any():
        ax_d.scatter(ref["clean_sharpness"][cens], ref["final_dist_l2"][cens], s=14, marker="^", facecolors="none",
                     edgecolors="tab:red", label=f"censored ({int(cens.sum())}): width >= final distance")
    _log_if_positive(ax_d, ref["clean_sharpness"], "x")
    rho = summary["spearman_width_sharpness"]
    rho_text = f"{rho:.3f}" if rho is not None else "n/a"
    ax_d.set_title(f"(d) basin width vs sharpness, s=1: Spearman rho {rho_text} (n={summary['spearman_samples']})")
    ax_d.set_xlabel("relative sharpness at the clean input (s=1)")
    ax_d.set_ylabel("basin width ||x_{t*-1} - x_0||_2")
    ax_d.legend(fontsize=8)

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, "png", dpi=110)


def _pick_example(loss: np.ndarray, tau: float, correct: np.ndarray | None = None) -> int:
    """The example that shows the basin forming best: among the clean-correct ones (when known), the
    one whose take-off step moves the most across the scales where its curve can be drawn."""
    S, _, E = loss.shape
    dummy = np.zeros(loss.shape[1:])
    steps = np.stack([takeoff_steps(loss[i], dummy, tau, min_rise=0.0)[0] for i in range(S)])  # (S, E)
    best, best_key = 0, None
    for j in range(E):
        drawn = steps[:, j][steps[:, j] >= 0]
        ok = bool(correct[j]) if correct is not None and j < len(correct) else True
        key = (ok, drawn.size >= 2, int(drawn.max() - drawn.min()) if drawn.size else -1, int(drawn.size))
        if best_key is None or key > best_key:
            best, best_key = j, key
    return best


def _pick_width_examples(outcome, tau: float, count: int = 5):
    """A scale and up to ``count`` example samples whose (measured) widths spread the most there."""
    ex = outcome.examples
    loss, dist = ex["loss"], ex["dist_l2"]
    best = (0, [], [])
    best_spread = -1.0
    for i in range(loss.shape[0]):
        step, width = takeoff_steps(loss[i], dist, tau)
        widths = sorted((float(width[j]), j) for j in range(dist.shape[1]) if step[j] >= 1)
        if len(widths) < 2:
            continue
        values = np.array([w for w, _ in widths])
        spread = float(values.max() - values.min())
        if spread > best_spread:
            picks = np.unique(np.linspace(0, len(widths) - 1, min(count, len(widths))).round().astype(int))
            best = (i, [widths[p][1] for p in picks], [widths[p][0] for p in picks])
            best_spread = spread
    return best


def _figure13(outcome, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    records = outcome.summary["scales"]
    order = np.argsort([r["scale"] for r in records])
    recs = [records[k] for k in order]
    s = np.array([r["scale"] for r in recs])
    sharp_mean = np.array([r["sharpness_mean"] for r in recs])
    ok = ~outcome.samples["nonfinite"].astype(bool)  # (S, N): non-finite samples are left out of the median
    sharp_median = np.array([np.median(v[k]) if k.any() else np.nan
                             for v, k in zip(outcome.samples["clean_sharpness"], ok)])[order]
    clean = np.array([r["clean_accuracy"] for r in recs])
    attacked = all(r["robust_accuracy"] is not None for r in recs)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    (ax_a, ax_b), (ax_c, ax_d) = axes

    ax_a.plot(s, sharp_mean, marker="o", color="tab:blue", label="mean")
    ax_a.plot(s, sharp_median, marker="s", color="tab:purple", linestyle="--", label="median")
    ax_a.set_xscale("log")
    _log_if_positive(ax_a, np.concatenate([sharp_mean, sharp_median]), "y")
    ax_a.set_xlabel("scale s")
    ax_a.set_ylabel("relative sharpness at the clean inputs")
    ax_a.set_title("(a) sharpness of the scaled networks")
    ax_a.legend(fontsize=8)

    if attacked:
        robust = np.array([r["robust_accuracy"] for r in recs])
        transfer = np.array([r["transfer_accuracy"] for r in recs])
        ax_b.plot(s, robust, marker="o", color="tab:red", label="robust (attack at s)")
        ax_b.plot(s, [r["robust_accuracy_cw"] for r in recs], marker="^", color="tab:orange",
                  label="robust, PGD on the margin loss (cw)")
        if recs[0].get("robust_accuracy_square") is not None:
            ax_b.plot(s, [r["robust_accuracy_square"] for r in recs], marker="v", color="tab:brown",
                      label="robust, Square (gradient-free)")
        masked = np.array([bool(r["masking"]) for r in recs])
        if masked.any():
            ax_b.scatter(s[masked], robust[masked], s=140, facecolors="none", edgecolors="tab:red", label="masking")
        ax_b.plot(s, clean, linestyle="--", color="black", label="clean")
        ax_b.set_xscale("log")
        ax_b.set_ylim(-0.02, 1.02)
        ax_b.set_xlabel("scale s")
        ax_b.set_ylabel("accuracy")
        ax_b.set_title("(b) robust accuracy under the per-scale attack")
        ax_b.legend(fontsize=8)

        # the median: the mean is ruled by near-ties, whose sharpness rises with s while the typical sample's falls
        sc = ax_c.scatter(sharp_median, robust, c=np.log10(s), cmap="viridis", s=30)
        for x, yv, sv in zip(sharp_median, robust, s):
            ax_c.annotate(f"s={sv:g}", (x, yv), textcoords="offset points", xytext=(4, 3), fontsize=7)
        _log_if_positive(ax_c, sharp_median, "x")
        ax_c.set_ylim(-0.02, 1.02)
        ax_c.set_xlabel("median relative sharpness at the clean inputs")
        ax_c.set_ylabel("robust accuracy")
        ax_c.set_title("(c) sharpness vs robust accuracy")
        fig.colorbar(sc, ax=ax_c, label="log10 s")

        ax_d.plot(s, transfer, marker="o", color="tab:green", label="s=1 adversarials, evaluated at s")
        ax_d.plot(s, robust, marker=".", color="tab:red", alpha=0.5, label="attack at s")
        ax_d.plot(s, clean, linestyle="--", color="black", label="clean")
        ax_d.set_xscale("log")
        ax_d.set_ylim(-0.02, 1.02)
        ax_d.set_xlabel("scale s")
        ax_d.set_ylabel("accuracy")
        ax_d.set_title("(d) transfer: the s=1 adversarials fool every scale")
        ax_d.legend(fontsize=8)
    else:
        for ax, name in ((ax_b, "(b)"), (ax_c, "(c)"), (ax_d, "(d)")):
            _empty(ax, f"{name}: per-scale attack skipped (--no-attack-each-scale)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, "png", dpi=110)


def _log_if_positive(ax, values, axis: str) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all():
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
