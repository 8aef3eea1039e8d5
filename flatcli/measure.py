"""``flatrob sharpness`` as a library call: closed-form head sharpness over a data set, streamed.

One forward pass per batch gives logits and features; :func:`flatcli.sharpness.head_measures` turns
them into per-sample rows, handed to ``on_rows`` as soon as a batch is done (so memory is bounded by
the batch; only per-sample scalars are kept for the summary). Hutchinson traces, when asked for, take
a second pass with double backprop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from flatcli import data as datamod
from flatcli.distributed import SINGLE, Dist
from flatcli.head import HeadSplit, Scaling
from flatcli.precision import autocast
from flatcli.model import LoadedModel, find_module
from flatcli.sharpness import MEASURES, batch_loss_sum, head_measures, hutchinson_traces, weight_factor
from flatcli.stats import describe_columns

ROW_KEYS = ("index", "label", "pred") + MEASURES


@dataclass
class SharpnessSettings:
    batch_size: int = 256
    scaling: Scaling = Scaling()
    weight_norm: str = "squared"
    hutchinson: int = 0  # probes for the head (0: off)
    layers: tuple[str, ...] = ()  # earlier layers for Hutchinson
    seed: int = 0
    precision: str = "fp32"  # forward pass under autocast; closed forms stay float64


def batch_rows(measures: dict[str, torch.Tensor], y: torch.Tensor, index: torch.Tensor) -> list[dict]:
    """One dict per sample with :data:`ROW_KEYS`, from :func:`head_measures` output."""
    cols = {"index": index.cpu().tolist(), "label": y.cpu().tolist(), "pred": measures["pred"].cpu().tolist()}
    cols.update({k: measures[k].cpu().tolist() for k in MEASURES})
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def measure_sharpness(
    loaded: LoadedModel,
    data: datamod.DataSource,
    settings: SharpnessSettings,
    *,
    device: torch.device,
    on_rows: Callable[[list[dict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: Dist = SINGLE,
) -> dict:
    """Per-sample closed forms streamed to ``on_rows``; returns the data-set summary.

    Under torchrun (``dist``) each rank measures its batches and rank 0 receives them in order; the
    summary (and every ``on_rows`` call) is meaningful on rank 0 only.
    """
    model, head = loaded.model, loaded.head
    scaling = settings.scaling
    columns: dict[str, list] = {k: [] for k in MEASURES}
    correct = 0
    n = 0
    with HeadSplit(model, head, loaded.layer, scaling) as split:
        for i, batch in enumerate(dist.rounds(data, settings.batch_size, device=device)):
            result = None
            if batch is not None:
                x, y, index = batch
                with torch.no_grad(), autocast(device, settings.precision):
                    phi = split.features(x, verify=i == 0)
                m = head_measures(phi, scaling.weight(head), scaling.bias(head), y, weight_norm=settings.weight_norm)
                result = {k: m[k].cpu() for k in ("pred", *MEASURES)} | {"y": y.cpu(), "index": index.cpu()}
            for r in dist.gather(result):
                for k in MEASURES:
                    columns[k].append(r[k].numpy())
                correct += int((r["pred"] == r["y"]).sum())
                n += len(r["y"])
                if on_rows is not None:
                    on_rows(batch_rows(r, r["y"], r["index"]))
                if progress is not None:
                    progress(len(r["y"]))
    if settings.hutchinson or settings.layers:
        hutchinson = hutchinson_summary(loaded, data, settings, device=device, dist=dist)
    if not dist.is_main:
        return {}
    values = {k: np.concatenate(v) for k, v in columns.items()}
    w = scaling.weight(head)
    summary = {
        "n": n,
        "accuracy": correct / n,
        "classes": loaded.num_classes,
        "features": loaded.features,
        "weight_norm": float(weight_factor(w, "plain")),
        "feature_norm_min": float(values["feature_norm"].min()),
        **describe_columns(values),
    }
    if settings.hutchinson or settings.layers:
        for row in hutchinson:
            if row["layer"] == loaded.layer and settings.hutchinson:
                row["closed_form_trace"] = summary["trace_h"]["mean"]
                row["z"] = (row["trace"] - row["closed_form_trace"]) / row["trace_stderr"] if row["trace_stderr"] > 0 else 0.0
        summary["hutchinson"] = hutchinson
    return summary


def hutchinson_summary(
    loaded: LoadedModel, data: datamod.DataSource, settings: SharpnessSettings, *, device, dist: Dist = SINGLE
) -> list[dict]:
    """Hutchinson traces of the head (when ``settings.hutchinson``) and of ``settings.layers``.

    For layer ``l`` the relative sharpness is ``||W_l||_F^2 Tr(H_l)`` (paper Fig. 14; ``plain`` uses
    ``||W_l||_F``). The head's Hessian is taken w.r.t. the scaled weight ``sW``: differentiating w.r.t.
    ``W`` gives ``s^2`` times it.
    """
    probes = settings.hutchinson or 100
    head = loaded.head
    names = ([loaded.layer] if settings.hutchinson else []) + [n for n in settings.layers if n != loaded.layer]
    weights = [head.weight if n == loaded.layer else _layer_weight(loaded, n) for n in names]
    scaling = settings.scaling

    def loss_sums():
        with HeadSplit(loaded.model, head, loaded.layer, scaling) as split:
            for batch in dist.rounds(data, settings.batch_size, device=device):
                if batch is not None:
                    x, y, _ = batch
                    logits, _ = split(x)
                    yield batch_loss_sum(logits, y), len(y)

    estimates = hutchinson_traces(loss_sums, [[w] for w in weights], probes, seed=settings.seed, reduce=dist.sum)
    out = []
    for name, w, est in zip(names, weights, estimates):
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


def _layer_weight(loaded: LoadedModel, name: str) -> torch.nn.Parameter:
    from flatcli.errors import LayerError

    module = find_module(loaded.model.net, name)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter):
        raise LayerError(f"layer {name!r} ({type(module).__name__}) has no weight to take a Hessian of")
    return weight
