"""The tables of ``flatrob attack``: the summary, the mean curves per step, per-sample statistics."""

from __future__ import annotations

from flatcli.cli import tables


def render(stream, summary: dict, samples: list[dict] | None) -> None:
    if "prompts" in summary:
        return render_gcg(stream, summary, samples)
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(tables.key_values("Attack (config: attack, loss)", scalars))
    steps = [
        {
            "step": t,
            "loss": summary["mean_loss_by_step"][t],
            "loss std": summary["std_loss_by_step"][t],
            "sharpness": summary["mean_sharpness_by_step"][t],
            "sharpness std": summary["std_sharpness_by_step"][t],
            "accuracy": summary["accuracy_by_step"][t],
            "confidence": summary["mean_confidence_by_step"][t],
            "dist_l2": summary["mean_dist_l2_by_step"][t],
        }
        for t in range(len(summary["mean_loss_by_step"]))
    ]
    con.print(tables.rows_table("Mean over samples, per step", steps))
    for entry in summary.get("layers", ()):
        curve = [{"step": t, "mean trace": tr, "mean relative sharpness": sh}
                 for t, (tr, sh) in enumerate(zip(entry["mean_trace_by_step"], entry["mean_sharpness_by_step"]))]
        con.print(tables.rows_table(f"Layer {entry['layer']} ({entry['method']}, {entry['curvature']}), per step", curve))
    to = summary["takeoff"]
    stats = {
        "loss_increase": summary["loss_increase"],
        "clean_sharpness": summary["clean_sharpness"],
        "adv_sharpness": summary["adv_sharpness"],
        "basin_width": to["width"],
        "takeoff_step": to["step"],
    }
    con.print(tables.stats_table(f"Per-sample statistics (take-off tau {to['tau']:g}: {to['measured']} measured, "
                                 f"{to['censored']} censored)", stats))
    if samples:
        con.print(tables.rows_table("Samples", samples))


def render_gcg(stream, summary: dict, samples: list[dict] | None) -> None:
    """GCG on a language model: the figures, each prompt's outcome, the mean sharpness per step (Fig. 15)."""
    con = tables.console(stream)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    con.print(tables.key_values("GCG on a language model (config: steps, search_width, positions)", scalars))
    con.print(tables.rows_table("Prompts", summary["prompts"],
                                ["sample", "steps", "initial_loss", "final_loss", "best_loss", "success", "suffix"]))
    curve = [{"step": t, "mean relative sharpness": v} for t, v in enumerate(summary["mean_sharpness_by_step"])]
    con.print(tables.rows_table("Mean over prompts, per step", curve))
    if samples:
        con.print(tables.rows_table("Steps", samples, ["sample", "step", "loss", "trace_h", "relative_sharpness",
                                                        "exact_match", "suffix"]))
