"""The figure of ``flatrob detect --plot``: score histograms with the threshold, and the ROC curve (D.4)."""

from __future__ import annotations

import numpy as np

from flatcli.outputs.figures import check_plot_path, pyplot, save


def detect_figure(outcome, path, title: str = "") -> None:
    """Histograms of a :class:`flatcli.runs.detect.DetectOutcome`'s thresholded value for clean and adversarial inputs with the threshold (left;
    log-scaled when every value is positive, as sharpness spans orders of magnitude), and the ROC
    curve of the out-of-fold decisions with the 5%-FPR operating point (right). Written atomically."""
    fmt = check_plot_path(path)
    plt = pyplot()
    from sklearn.metrics import roc_curve

    s = outcome.summary
    clean, adv = outcome.clean_score, outcome.adv_score
    both = np.concatenate([clean, adv])
    threshold = float(s["threshold"])
    log = bool(both.size) and bool((both > 0).all()) and threshold > 0
    fig, (ax, roc) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True, width_ratios=(1.6, 1))
    if log:
        lo, hi = np.log10(both.min()), np.log10(both.max())
        bins = np.logspace(lo, hi if hi > lo else lo + 1, 41)
        ax.set_xscale("log")
    else:
        bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 41)
    ax.hist(clean, bins=bins, color="tab:blue", alpha=0.55, label=f"clean (n={len(clean)})")
    ax.hist(adv, bins=bins, color="tab:red", alpha=0.55, label=f"adversarial (n={len(adv)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
               label=f"threshold {threshold:.3g} (flag {s['direction']})")
    label = s["score"] if s["method"] in ("stump", "mahalanobis") else f"logit of the {s['method']} detector"
    ax.set_xlabel(label.replace("_", " "))
    ax.set_ylabel("inputs")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{s['method']}: CV accuracy {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}", fontsize=10)
    fpr, tpr, _ = roc_curve(outcome.labels, outcome.cv.oof_decision)
    roc.plot(fpr, tpr, color="tab:purple", label=f"out-of-fold ROC, AUC {s['auc']:.3f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.axvline(0.05, color="grey", linestyle="--", linewidth=0.8)
    roc.plot([0.05], [s["tpr_at_5fpr"]], "o", color="black", markersize=4,
             label=f"TPR {s['tpr_at_5fpr']:.2f} at 5% FPR")
    roc.set_xlabel("false positive rate (clean flagged)")
    roc.set_ylabel("true positive rate (adversarial flagged)")
    roc.set_xlim(0, 1)
    roc.set_ylim(0, 1.02)
    roc.legend(loc="lower right", fontsize=8)
    roc.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, fmt)
