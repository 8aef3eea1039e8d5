"""``flatrob sharpness``: closed-form head sharpness over a data set, streamed; Hutchinson traces on request.

One forward pass per batch gives logits and features; :func:`flatcli.core.curvature.head_measures` turns
them into per-sample rows, handed to ``on_rows`` as soon as a batch is done (memory is bounded by the
batch; only per-sample scalars are kept for the summary). Hutchinson traces, when asked for, take a
second pass with double backprop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flatcli.core.curvature import MEASURES, WEIGHT_NORMS, head_measures, weight_factor
from flatcli.core.head_scaling import Scaling
from flatcli.core.hutchinson import MAX_PROBES, HutchinsonTraces, batch_loss_sum
from flatcli.core.statistics import describe_columns
from flatcli.errors import LayerError, UsageError
from flatcli.models.head import HeadSplit
from flatcli.models.loading import find_module
from flatcli.runs.result import OnRows, Result, Rows
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
    layers: tuple[str, ...] = ()  # earlier layers for Hutchinson
    precision: str = "fp32"  # forward pass under autocast; closed forms stay float64
    channels_last: bool = False

    def __post_init__(self) -> None:
        if not self.scaling.scale > 0:
            raise UsageError(f"--scale must be positive, got {self.scaling.scale}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise UsageError(f"--weight-norm must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.hutchinson < 0 or self.hutchinson == 1 or self.hutchinson > MAX_PROBES:
            raise UsageError(f"--hutchinson needs 0 (off) or 2 to {MAX_PROBES} probes, got {self.hutchinson}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.layers = tuple(self.layers)

    def config(self) -> dict:
        return {
            "weight_norm": self.weight_norm,
            "scale": self.scaling.scale,
            "scale_bias": self.scaling.scale_bias,
            "hutchinson_probes": self.hutchinson,
            "layers": list(self.layers),
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


def batch_rows(measures: dict[str, torch.Tensor], y: torch.Tensor, index: torch.Tensor) -> list[dict]:
    """One dict per sample with :data:`ROW_KEYS`, from :func:`head_measures` output."""
    cols = {"index": index.cpu().tolist(), "label": y.cpu().tolist(), "pred": measures["pred"].cpu().tolist()}
    cols.update({k: measures[k].cpu().tolist() for k in MEASURES})
    return [dict(zip(ROW_KEYS, vals)) for vals in zip(*(cols[k] for k in ROW_KEYS))]


def sharpness(ctx: RunContext, settings: SharpnessSettings, *, on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Per-sample closed forms streamed to ``on_rows`` (and kept in the result with ``keep_samples``).

    Under torchrun each rank measures its batches and rank 0 receives them in order; the result is
    meaningful on rank 0 only.
    """
    loaded = ctx.loaded
    scaling = settings.scaling
    head = loaded.head
    hutchinson_names = _hutchinson_layers(loaded, settings)
    ctx.expect(len(ctx.data) * (2 if hutchinson_names else 1))
    rows = Rows(on_rows, keep_samples)
    columns: dict[str, list] = {k: [] for k in MEASURES}
    correct = n = 0
    with HeadSplit(loaded.model, head, loaded.layer, scaling) as split:

        def compute(b) -> dict:
            with torch.no_grad(), autocast(ctx.device, settings.precision):
                phi = split.features(b.x, verify=b.first)
            m = head_measures(phi, scaling.weight(head), scaling.bias(head), b.y, weight_norm=settings.weight_norm)
            return {k: m[k].cpu() for k in ("pred", *MEASURES)} | {"y": b.y.cpu(), "index": b.index.cpu()}

        for r in each_batch(ctx, compute):
            for k in MEASURES:
                columns[k].append(r[k].numpy())
            correct += int((r["pred"] == r["y"]).sum())
            n += len(r["y"])
            if rows.wanted:
                rows(batch_rows(r, r["y"], r["index"]))
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
    return Result("sharpness", config, summary, rows.kept)


def _hutchinson_layers(loaded, settings: SharpnessSettings) -> list[str]:
    """The head (with ``--hutchinson``, or named in ``--layers``) and the earlier ``--layers``, in that order."""
    head = settings.hutchinson or loaded.layer in settings.layers
    return ([loaded.layer] if head else []) + [n for n in settings.layers if n != loaded.layer]


def hutchinson_traces(ctx: RunContext, settings: SharpnessSettings, names: list[str]) -> list[dict]:
    """Hutchinson traces of the named layers over the data (the head's when ``settings.hutchinson``).

    For layer ``l`` the relative sharpness is ``||W_l||_F^2 Tr(H_l)`` (paper Fig. 14; ``plain`` uses
    ``||W_l||_F``). The head's Hessian is taken w.r.t. the scaled weight ``sW``: differentiating w.r.t.
    ``W`` gives ``s^2`` times it. 100 probes unless ``--hutchinson`` says otherwise.
    """
    loaded = ctx.loaded
    head = loaded.head
    scaling = settings.scaling
    weights = [head.weight if n == loaded.layer else _layer_weight(loaded, n) for n in names]
    traces = HutchinsonTraces([[w] for w in weights], settings.hutchinson or 100, seed=ctx.seed)
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


def _layer_weight(loaded, name: str) -> torch.nn.Parameter:
    module = find_module(loaded.model.net, name)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter):
        raise LayerError(f"layer {name!r} ({type(module).__name__}) has no weight to take a Hessian of")
    return weight
