"""``flatrob sharpness``: closed-form head sharpness over a data set, streamed; earlier layers on request.

One forward pass per batch gives logits and features; :func:`flatcli.core.curvature.head_measures` turns
them into per-sample rows, handed to ``on_rows`` as soon as a batch is done (memory is bounded by the
batch; only per-sample scalars are kept for the summary). Earlier ``--layers`` measured per sample
(:mod:`flatcli.runs.layers`: exact or ``fisher-mc``) add their backward passes to the same forward pass
and their columns to the same rows; Hutchinson traces, when asked for, take a second pass with double
backprop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flatcli.core.curvature import MEASURES, WEIGHT_NORMS, head_measures, weight_factor
from flatcli.core.head_scaling import Scaling
from flatcli.core.hutchinson import MAX_PROBES, HutchinsonTraces, batch_loss_sum
from flatcli.core.statistics import describe_columns
from flatcli.errors import OptionError
from flatcli.models.head import HeadSplit
from flatcli.runs import layers as layer_run
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runs.sanity import checked
from flatcli.runtime.loop import RunContext, each_batch
from flatcli.runtime.precision import PRECISIONS, autocast

#: Keys of the per-sample rows, in order (pinned by the JSON contract test).
ROW_KEYS = ("index", "label", "pred") + MEASURES


@dataclass
class SharpnessSettings:
    """What ``flatrob sharpness`` measures; ranges are checked on construction."""

    scaling: Scaling = Scaling()
    weight_norm: str = "squared"
    hutchinson: int = 0  # probes for the head (0: off)
    layers: tuple[str, ...] = ()  # earlier layers (Fig. 14)
    layer_method: str = "auto"  # auto | exact | fisher-mc | hutchinson (flatcli.runs.layers)
    fisher_samples: int = 2  # labels drawn per sample for fisher-mc
    precision: str = "fp32"  # forward pass under autocast; closed forms stay float64
    channels_last: bool = False

    def __post_init__(self) -> None:
        if not self.scaling.scale > 0:
            raise OptionError("scale", f"{{}} must be positive, got {self.scaling.scale}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise OptionError("weight_norm", f"{{}} must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.hutchinson < 0 or self.hutchinson == 1 or self.hutchinson > MAX_PROBES:
            raise OptionError("hutchinson", f"{{}} needs 0 (off) or 2 to {MAX_PROBES} probes, got {self.hutchinson}")
        if self.precision not in PRECISIONS:
            raise OptionError("precision", f"{{}} must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        layer_run.check_method(self.layer_method, self.fisher_samples)
        self.layers = tuple(self.layers)

    @classmethod
    def from_groups(cls, chosen) -> "SharpnessSettings":
        """The settings of one call's option groups (:mod:`flatcli.options`)."""
        head, layers, speed = chosen.head, chosen.layers, chosen.speed
        return cls(scaling=Scaling(head.scale, head.scale_bias), weight_norm=head.norm, hutchinson=layers.hutchinson,
                   layers=layers.layers or (), layer_method=layers.layer_method, fisher_samples=layers.fisher_samples,
                   precision=speed.precision, channels_last=speed.channels_last)

    def config(self) -> dict:
        return {
            "weight_norm": self.weight_norm,
            "scale": self.scaling.scale,
            "scale_bias": self.scaling.scale_bias,
            "hutchinson_probes": self.hutchinson,
            "layers": list(self.layers),
            "layer_method": self.layer_method,
            "fisher_samples": self.fisher_samples,
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


def batch_rows(measures: dict[str, torch.Tensor], y: torch.Tensor, index: torch.Tensor,
               layer_columns: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """One dict per sample with :data:`ROW_KEYS` (from :func:`head_measures` output), then the layer columns."""
    layer_columns = layer_columns or {}
    keys = ROW_KEYS + tuple(layer_columns)
    cols = {"index": index.cpu().tolist(), "label": y.cpu().tolist(), "pred": measures["pred"].cpu().tolist()}
    cols.update({k: measures[k].cpu().tolist() for k in MEASURES})
    cols.update({k: v.tolist() for k, v in layer_columns.items()})
    return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


def sharpness(ctx: RunContext, settings: SharpnessSettings, *, on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Per-sample closed forms streamed to ``on_rows`` (and kept in the result with ``keep_samples``).

    Under torchrun each rank measures its batches and rank 0 receives them in order; the result is
    meaningful on rank 0 only.
    """
    loaded = ctx.loaded
    scaling = settings.scaling
    head = loaded.head
    plans = layer_run.plan_layers(loaded, settings.layers, settings.layer_method)
    per_sample = [p for p in plans if p.per_sample]
    head_probed = bool(settings.hutchinson) or loaded.layer in settings.layers  # --layers naming the head
    hutchinson_names = ([loaded.layer] if head_probed else []) + [p.name for p in plans if not p.per_sample]
    ctx.expect(len(ctx.data) * (2 if hutchinson_names else 1))
    rows = Rows(on_rows, keep_samples)
    columns: dict[str, list] = {k: [] for k in MEASURES}
    columns.update({c: [] for p in per_sample for c in p.columns()})
    correct = n = 0
    with HeadSplit(loaded.model, head, loaded.layer, scaling) as split:

        def forward(b, seen: dict):
            def logits(x):
                with autocast(ctx.device, settings.precision):
                    seen["phi"] = split.features(x, verify=b.first)
                    return split.logits(seen["phi"])

            return logits

        def compute(b) -> dict:
            traces: dict = {}
            if per_sample:
                seen: dict = {}
                traces = layer_run.batch_traces(forward(b, seen), b.x, per_sample, fisher_samples=settings.fisher_samples,
                                                generator=layer_run.draw_generator(ctx.seed, b.number))
                phi = seen["phi"].detach()
            else:
                with torch.no_grad(), autocast(ctx.device, settings.precision):
                    phi = split.features(b.x, verify=b.first)
            m = head_measures(phi, scaling.weight(head), scaling.bias(head), b.y, weight_norm=settings.weight_norm)
            return {k: m[k].cpu() for k in ("pred", *MEASURES)} | {"y": b.y.cpu(), "index": b.index.cpu(),
                                                                   "layers": traces}

        for r in each_batch(ctx, compute):
            layer_cols = layer_run.sharpness_columns(per_sample, r["layers"], settings.weight_norm)
            for k in MEASURES:
                columns[k].append(r[k].numpy())
            for k, v in layer_cols.items():
                columns[k].append(v.numpy())
            correct += int((r["pred"] == r["y"]).sum())
            n += len(r["y"])
            if rows.wanted:
                rows(batch_rows(r, r["y"], r["index"], layer_cols))
    hutchinson = hutchinson_traces(ctx, settings, hutchinson_names) if hutchinson_names else None
    config = {**ctx.describe(), **settings.config()}
    if not ctx.dist.is_main:
        return Result("sharpness", config, {})
    values = {k: np.concatenate(v) for k, v in columns.items()}
    summary = {
        "n": n,
        "accuracy": correct / n,
        "classes": loaded.num_classes,
        "features": loaded.features,
        "weight_norm": float(weight_factor(scaling.weight(head), "plain")),
        "feature_norm_min": float(values["feature_norm"].min()),
        **describe_columns(values),
    }
    if hutchinson is not None:
        for row in hutchinson:
            if row["layer"] == loaded.layer:
                row["closed_form_trace"] = summary["trace_h"]["mean"]
                row["z"] = (row["trace"] - row["closed_form_trace"]) / row["trace_stderr"] if row["trace_stderr"] > 0 else 0.0
        summary["hutchinson"] = hutchinson
    if plans:
        summary["layers"] = _layer_entries(plans, values, hutchinson or [], settings)
    notes = layer_run.notes(plans, settings.layer_method, settings.hutchinson or layer_run.DEFAULT_PROBES)
    return checked(Result("sharpness", config, summary, rows.kept, notes=notes), ctx, summary["accuracy"])


def _layer_entries(plans, values: dict, hutchinson: list[dict], settings: SharpnessSettings) -> list[dict]:
    """``summary.layers``: one entry per ``--layers`` name, whatever measured it."""
    by_name = {row["layer"]: row for row in hutchinson}
    out = []
    for p in plans:
        if p.per_sample:
            stderr = values.get(p.column("stderr")) if p.method == "fisher-mc" else None
            trace, se = layer_run.mean_and_stderr(values[p.column("trace")], stderr)
            draws = settings.fisher_samples if p.method == "fisher-mc" else None
            out.append(layer_run.data_set_entry(p, trace, se, settings.weight_norm, draws=draws))
        else:
            row = by_name[p.name]
            out.append(layer_run.data_set_entry(p, row["trace"], row["trace_stderr"], settings.weight_norm,
                                                probes=row["probes"]))
    return out


def hutchinson_traces(ctx: RunContext, settings: SharpnessSettings, names: list[str]) -> list[dict]:
    """Hutchinson traces of the named layers over the data (the head's when ``settings.hutchinson``).

    For layer ``l`` the relative sharpness is ``||W_l||_F^2 Tr(H_l)`` (paper Fig. 14; ``plain`` uses
    ``||W_l||_F``). The head's Hessian is taken w.r.t. the scaled weight ``sW``: differentiating w.r.t.
    ``W`` gives ``s^2`` times it. 100 probes unless ``--hutchinson`` says otherwise.
    """
    loaded = ctx.loaded
    head = loaded.head
    scaling = settings.scaling
    weights = [head.weight if n == loaded.layer else loaded.model.net.get_submodule(n).weight for n in names]
    traces = HutchinsonTraces([[w] for w in weights], settings.hutchinson or layer_run.DEFAULT_PROBES, seed=ctx.seed)
    with HeadSplit(loaded.model, head, loaded.layer, scaling) as split:

        def compute(b) -> int:
            logits, _ = split(b.x)
            traces.add(batch_loss_sum(logits, b.y), len(b.y))
            return len(b.y)

        for _ in each_batch(ctx, compute):
            pass
    out = []
    for name, w, est in zip(names, weights, traces.estimates(reduce=ctx.dist.sum)):
        is_head = name == loaded.layer
        factor = scaling.scale**2 if is_head else 1.0
        trace, stderr = est.mean / factor, est.stderr / factor
        wf = float(weight_factor(scaling.weight(head) if is_head else w, settings.weight_norm))
        out.append(
            {
                "layer": name,
                "parameters": w.numel(),
                "probes": est.probes,
                "trace": trace,
                "trace_stderr": stderr,
                "relative_sharpness": wf * trace,
                "relative_sharpness_stderr": wf * stderr,
            }
        )
    return out

