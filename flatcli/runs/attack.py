"""``flatrob attack``: PGD (or APGD, Square) over a data set, recording loss and sharpness along every trajectory.

Per batch, the attack (any of :mod:`flatcli.core.attacks`: PGD, APGD, Square, chosen by
:func:`flatcli.core.attacks.make_attack`) runs with ``record=True``: the features of every iterate come
from the forward pass that gives the gradient, plus one final forward for ``x_T``. One call of
:func:`flatcli.core.curvature.head_measures` on all ``(T+1) * B`` feature vectors turns them into the
closed-form measures (the same numbers ``flatrob sharpness`` gives on ``x_t``). Rows go out per batch
(trajectory rows: one per sample and step; sample rows: one per sample), so memory is bounded by the
batch; the summary keeps per-step sums and a few scalars per sample. The statistics (take-off, basin
width, uncanny valley) are :mod:`flatcli.core.trajectories`. With ``--layers`` the traces of earlier layers
(:mod:`flatcli.runs.layers`) are measured at every iterate ``x_t`` too (one more forward and ``k``
backward passes per step for exact traces; Hutchinson probes give per-step data-set values only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flatcli.core.curvature import WEIGHT_NORMS, head_measures, weight_factor
from flatcli.core.head_scaling import Scaling
from flatcli.core.hutchinson import HutchinsonTraces, batch_loss_sum, trace_estimates
from flatcli.core.attack_losses import check_loss
from flatcli.core.attacks import PGD, PRESETS, Attack, batch_generator, least_likely
from flatcli.core.statistics import describe, quantiles, quantiles_by_step
from flatcli.core.trajectories import (
    Takeoff, finite_samples, sharpness_peaks, takeoff, valley_mask, valley_of_mean,
)
from flatcli.errors import OptionError
from flatcli.options import AttackOptions, HeadOptions, LayerOptions, SpeedOptions, TakeoffOptions
from flatcli.options.calls import chosen_of
from flatcli.inputs.adversarial_file import save_adversarials
from flatcli.models.head import HeadSplit
from flatcli.outputs.writer import ResultWriter
from flatcli.runs import layers as layer_run
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runs.sanity import checked, degenerate_attack
from flatcli.runtime.loop import RunContext, each_batch, resumed_note
from flatcli.runtime.precision import PRECISIONS, autocast

STEP_KEYS = (
    "index", "step", "loss", "relative_sharpness", "trace_h", "confidence", "p_true", "pred", "correct",
    "dist_l2", "dist_linf",
)
SAMPLE_KEYS = (
    "index", "label", "target", "restart", "clean_pred", "adv_pred", "clean_loss", "adv_loss", "loss_increase",
    "clean_sharpness", "adv_sharpness", "peak_sharpness", "peak_step", "valley", "takeoff_step", "basin_width",
    "censored", "final_dist_l2", "final_dist_linf", "nonfinite",
)

CONVENTIONS = {
    "objective": "per-sample loss (config.loss: ce cross-entropy, cw logit margin, dlr difference-of-logits ratio) "
    "summed over the batch (targeted: the targeted variant); the recorded loss is the cross-entropy at the true label "
    "whatever loss drives the attack",
    "update": "step (linf: alpha*sign(g); l2: alpha*g/max(||g||_2,1e-12)), project onto the eps-ball, clamp to [0,1]",
    "random_start": "linf: uniform in the box; l2: uniform in the ball's volume",
    "adversarial": "final iterate; with restarts, per sample the restart with the highest final objective",
    "recording": "measures of x_t from the forward pass that gives the gradient at step t, plus one final forward; "
    "apgd: step t records its answer after t iterations (the successful, else the highest-loss, iterate so far); "
    "square: the clean input and the adversarial only",
    "zero_grad_fraction": "share of samples whose input gradient at the first step is zero or underflows "
    "(every component below float32's smallest normal number); null for square (no gradients)",
    "loss_increase": "loss at x_T minus loss at the clean input",
    "takeoff": "first t with (l_t - l_0)/(max l - l_0) >= tau; width ||x_{t*-1} - x_clean||_2; censored if max l - l_0 <= 1e-6",
    "valley": "sample's sharpness peaks at 0 < t < T and ends below half of its peak",
    "ever_fooled_accuracy": "share of samples classified correctly at the clean input and at every iterate",
    "nonfinite": "a sample whose logits or gradients turn NaN/Inf at any step is flagged (nonfinite), counted in "
    "summary.nonfinite and left out of every mean and rate; --save-adv keeps its clean input",
}

#: The most bytes of adversarials (float32 inputs) ``keep_adv`` holds in memory; beyond, a note says how to get them.
KEEP_ADV_BYTES = 2**30
#: Trajectory file formats by suffix.
TRAJECTORY_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def parse_targeted(value) -> int | str | None:
    """``targeted``: a class number, ``least-likely`` (also ``ll``), or ``None`` for untargeted."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if isinstance(value, int) and value < 0:
            raise OptionError("targeted", f"{{}} {value}: class numbers start at 0")
        return value
    text = str(value).strip().lower()
    if text in ("least-likely", "ll", "least_likely"):
        return "least-likely"
    try:
        cls = int(text)
    except ValueError:
        raise OptionError("targeted", f"{{}} takes a class number or least-likely, got {value!r}") from None
    if cls < 0:
        raise OptionError("targeted", f"{{}} {cls}: class numbers start at 0")
    return cls


@dataclass
class AttackSettings:
    """What ``flatrob attack`` runs; ranges are checked on construction (:meth:`from_groups` applies a preset)."""

    attack: Attack = field(default_factory=PGD)
    preset: str = "uncanny"  # the preset the unset attack options came from (recorded in the config)
    scaling: Scaling = Scaling()
    weight_norm: str = "squared"
    takeoff: float = 0.1  # tau
    targeted: int | str | None = None  # a class, "least-likely", or None
    precision: str = "fp32"  # forward/backward under autocast; closed forms stay float64
    channels_last: bool = False
    layers: tuple[str, ...] = ()  # earlier layers measured at every step (Fig. 14)
    layer_method: str = "auto"  # flatcli.runs.layers
    fisher_samples: int = 2
    hutchinson: int = 0  # probes for layers measured by Hutchinson (0: layer_run.DEFAULT_PROBES)

    def __post_init__(self) -> None:
        if not 0 < self.takeoff <= 1:
            raise OptionError("takeoff", f"{{}} must be in (0, 1], got {self.takeoff}")
        if not self.scaling.scale > 0:
            raise OptionError("scale", f"{{}} must be positive, got {self.scaling.scale}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise OptionError("weight_norm", f"{{}} must be one of {', '.join(WEIGHT_NORMS)}, got {self.weight_norm!r}")
        if self.precision not in PRECISIONS:
            raise OptionError("precision", f"{{}} must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.targeted = parse_targeted(self.targeted)
        if self.targeted is not None and not self.attack.targets:
            raise OptionError(("attack", "targeted"), f"{{}} {self.attack.kind} is untargeted here; drop {{}}")
        layer_run.check_method(self.layer_method, self.fisher_samples)
        if self.hutchinson < 0 or self.hutchinson == 1:
            raise OptionError("hutchinson", f"{{}} needs 0 (the default {layer_run.DEFAULT_PROBES}) or at least 2 "
                              f"probes, got {self.hutchinson}")
        self.layers = tuple(self.layers)

    @property
    def probes(self) -> int:
        return self.hutchinson or layer_run.DEFAULT_PROBES

    def layer_config(self) -> dict:
        return {"layers": list(self.layers), "layer_method": self.layer_method, "fisher_samples": self.fisher_samples,
                "hutchinson_probes": self.probes}

    @classmethod
    def from_options(cls, targeted=None, **options) -> "AttackSettings":
        """The settings of keyword options, as the API takes them (``steps=3, eps=0.1, ...``)."""
        return cls.from_groups(chosen_of(options, AttackOptions, HeadOptions, LayerOptions, SpeedOptions,
                                         TakeoffOptions), targeted=targeted)

    @classmethod
    def from_groups(cls, chosen, targeted=None) -> "AttackSettings":
        """The settings of one call's option groups (:mod:`flatcli.options`): the preset's (default ``uncanny``)
        attack with every given option applied."""
        head, layers, speed, attack = chosen.head, chosen.layers, chosen.speed, chosen.attack
        preset = attack.preset or "uncanny"
        return cls(attack=attack.make(preset), preset=preset, scaling=Scaling(head.scale, head.scale_bias),
                   weight_norm=head.norm, takeoff=chosen.takeoff.takeoff, targeted=targeted,
                   precision=speed.precision, channels_last=speed.channels_last, layers=layers.layers or (),
                   layer_method=layers.layer_method, fisher_samples=layers.fisher_samples,
                   hutchinson=layers.hutchinson)

    def identity(self) -> dict:
        """What the per-batch numbers depend on (the resume identity)."""
        return {
            **self.attack.config(), "targeted": self.targeted, "takeoff": self.takeoff, "weight_norm": self.weight_norm,
            "scale": self.scaling.scale, "scale_bias": self.scaling.scale_bias, "precision": self.precision,
            "channels_last": self.channels_last, **self.layer_config(),
        }

    def config(self) -> dict:
        return {
            "preset": self.preset,
            "preset_values": PRESETS[self.preset],
            **self.attack.config(),
            "targeted": self.targeted,
            "takeoff_tau": self.takeoff,
            "weight_norm": self.weight_norm,
            "scale": self.scaling.scale,
            "scale_bias": self.scaling.scale_bias,
            **self.layer_config(),
        }


def trajectory_format(path: str | None) -> str | None:
    """The format of a ``--trajectory`` file, from its suffix (``None`` without one)."""
    if path is None:
        return None
    if path == "-":
        raise OptionError("trajectory", "{} needs a file name (stdout carries the result)")
    fmt = TRAJECTORY_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OptionError("trajectory", f"{{}} {path}: use a .csv or .jsonl file name")
    return fmt


class _Accumulator:
    """Per-step sums (O(T)), per-sample scalars (O(N)) and the per-sample loss and sharpness at every step
    (O(N T), for the quantile bands) for the summary."""

    def __init__(self, steps: int, plans=(), weight_norm: str = "squared"):
        shape = steps + 1
        self.weight_norm = weight_norm
        self.sums = {k: np.zeros(shape) for k in ("loss", "loss_sq", "sharp", "sharp_sq", "correct", "confidence", "dist_l2")}
        self.plans = list(plans)
        for p in self.plans:  # per-sample layers: sums (and squares) of each column, per step
            for c in p.columns():
                self.sums[c] = np.zeros(shape)
                self.sums[c + "^2"] = np.zeros(shape)
        hutchinson = [p for p in self.plans if not p.per_sample]
        self.quad = None  # Hutchinson layers: (steps + 1, layers, probes) sums of quadratic forms
        self.hutchinson = hutchinson
        self.per_sample: dict[str, list[np.ndarray]] = {
            k: [] for k in ("clean_correct", "adv_correct", "ever_correct", "loss_increase", "valley", "width",
                            "censored", "lower_bound", "takeoff_step", "clean_sharpness", "adv_sharpness", "hit",
                            "zero_grad")
        }
        self.by_step: dict[str, list[np.ndarray]] = {"loss": [], "sharp": []}  # (T+1, B) blocks per batch
        for p in self.plans:
            if p.per_sample:
                self.by_step[p.column("sharpness")] = []
        self.n = 0  # samples in the statistics (finite ones)
        self.total = 0  # samples attacked
        self.nonfinite = 0  # samples whose logits or gradients went NaN/Inf: flagged, left out of the statistics

    def add(self, **cols: Tensor) -> None:
        for k, v in cols.items():
            self.per_sample[k].append(v.detach().cpu().numpy())

    def column(self, k: str) -> np.ndarray:
        parts = self.per_sample[k]
        return np.concatenate(parts) if parts else np.zeros(0)

    def step_quantiles(self, k: str) -> dict[str, list[float]]:
        """``{"q10": [...], ..., "q90": [...]}``: the :data:`STEP_QUANTILES` over samples of ``k`` at every step."""
        parts = self.by_step[k]
        return quantiles_by_step(np.concatenate(parts, axis=1) if parts else np.zeros((len(self.sums["loss"]), 0)))


def resolve_targets(targeted, y: Tensor, clean_logits: Tensor | None) -> Tensor | None:
    """Target classes per sample: ``None`` (untargeted), one class for all, or the least likely one."""
    if targeted is None:
        return None
    if targeted == "least-likely":
        return least_likely(clean_logits)
    return torch.full_like(y, int(targeted))


def attack(ctx: RunContext, settings: AttackSettings, *, trajectory: str | None = None, save_adv: str | None = None,
           plot: str | None = None, on_rows: OnRows | None = None, keep_samples: bool = False,
           keep_adv: bool = False) -> Result:
    """Attack every batch, stream the per-sample rows to ``on_rows`` and the per-step rows to the
    ``trajectory`` file; write ``save_adv`` and ``plot`` at the end; return the result on rank 0.

    ``result.artifacts["adversarials"]`` is ``(x_adv, y, index)`` (CPU tensors, in data order) with ``save_adv``, and
    with ``keep_adv`` when the data set's adversarials take at most :data:`KEEP_ADV_BYTES` (else a note says so).

    Random starts draw from a generator seeded by ``(seed, batch number)``, so a batch is attacked the
    same way whichever process runs it. With ``--resume`` finished batches come from the store (every
    batch keeps its adversarials there, so a resumed run may add ``--save-adv``); the adversarials are
    held in memory only for ``save_adv`` and ``keep_adv``. A flagged (non-finite) sample keeps its clean input.
    """
    loaded = ctx.loaded
    k = loaded.num_classes
    if isinstance(settings.targeted, int) and not 0 <= settings.targeted < k:
        raise OptionError("targeted", f"{{}} {settings.targeted}: the model has classes 0..{k - 1}")
    check_loss(settings.attack.loss, k, settings.targeted is not None)
    traj_format = trajectory_format(trajectory)
    plans = layer_run.plan_layers(loaded, settings.layers, settings.layer_method)
    store = ctx.store("attack", settings.identity(), {"Takeoff": Takeoff})
    ctx.expect(len(ctx.data))
    adv_bytes = 4 * len(ctx.data) * math.prod(ctx.data.input_shape)
    too_big = keep_adv and save_adv is None and adv_bytes > KEEP_ADV_BYTES
    keep_adv = save_adv is not None or keep_adv and not too_big
    acc = _Accumulator(settings.attack.recorded_steps, plans, settings.weight_norm)
    advs: list[tuple[Tensor, Tensor, Tensor]] = []
    target_hits = 0
    rows = Rows(on_rows, keep_samples)
    main = ctx.dist.is_main
    traj = ResultWriter(traj_format, trajectory, command="attack", enabled=main) if trajectory else None
    config = {**ctx.describe(), **settings.config(), "trajectory": trajectory, "save_adv": save_adv, "plot": plot,
              "precision": settings.precision, "channels_last": settings.channels_last, "conventions": CONVENTIONS}
    with traj if traj is not None else contextlib.nullcontext():
        with HeadSplit(loaded.model, loaded.head, loaded.layer, settings.scaling) as split:

            def compute(b) -> dict:
                generator = batch_generator(ctx.seed, b.number)
                return _attack_batch(split, loaded, settings, b.x, b.y, b.index, generator=generator, verify=b.first,
                                     keep_adv=keep_adv or store is not None, plans=plans,
                                     seeds=(ctx.seed, b.number))

            for r in each_batch(ctx, compute, store=store, resumable=True):
                target_hits += _consume(r, acc, traj.rows if traj is not None else None,
                                        rows if rows.wanted else None)
                if keep_adv:
                    advs.append((r["x_adv"], r["y"], r["index"]))
        if not main:
            return Result("attack", config, {})
        summary = _summary(acc, settings, target_hits)
        adv = tuple(torch.cat(parts) for parts in zip(*advs)) if keep_adv else None
        if save_adv is not None:
            x_adv, y_adv, index = adv
            save_adversarials(save_adv, x_adv, y_adv, index, **loaded.fingerprint, data=ctx.data.name, seed=ctx.seed,
                              targeted=settings.targeted, scale=settings.scaling.scale,
                              scale_bias=settings.scaling.scale_bias, **settings.attack.config())
        if plot is not None:
            from flatcli.outputs.figures.attack import attack_figure

            title = f"{loaded.name}: {settings.attack.describe()}"
            attack_figure(summary, plot, title=title, layers=summary.get("layers", ()))
        if traj is not None:
            traj.finish(config, summary)
    notes = []
    if summary.get("nonfinite"):
        notes.append(f"note: {summary['nonfinite']} of {summary['n']} samples hit NaN/Inf in the logits or gradients; "
                     "they are flagged (nonfinite) and left out of the means")
    notes += layer_run.notes(plans, settings.layer_method, settings.probes)
    if too_big:
        notes.append(f"note: the adversarials ({adv_bytes / 2**30:.1f} GiB of float32 inputs) are not kept in memory "
                     f"(at most {KEEP_ADV_BYTES / 2**30:g} GiB); save_adv writes them to a file")
    notes += resumed_note(store, ctx.resume)
    censored = acc.column("censored").astype(bool)
    degenerate = degenerate_attack(acc.column("takeoff_step")[~censored], int(censored.sum()),
                                   steps=settings.attack.recorded_steps, tau=settings.takeoff,
                                   attack=settings.attack.config(), success_rate=summary["success_rate"])
    return checked(Result("attack", config, summary, rows.kept, artifacts={"adversarials": adv} if adv is not None
                          else {}, notes=notes), ctx, summary["clean_accuracy"], degenerate)


def _attack_batch(split: HeadSplit, loaded, settings: AttackSettings, x: Tensor, y: Tensor,
                  index: Tensor, *, generator: torch.Generator, verify: bool, keep_adv: bool, plans=(),
                  seeds: tuple[int, int] = (0, 0)) -> dict:
    """Attack one batch with recording; everything the summary and the rows need, on the CPU."""
    attack = settings.attack
    T, B = attack.recorded_steps, len(y)
    weight, bias = settings.scaling.weight(loaded.head), settings.scaling.bias(loaded.head)
    if verify:
        split.verify(x[:2])  # structural check: BN is in eval mode, samples are independent
    clean_phi = None
    clean_logits = None
    with autocast(x.device, settings.precision):
        if attack.random_start or settings.targeted == "least-likely":
            with torch.no_grad():
                clean_logits, clean_phi = split(x)
        target = resolve_targets(settings.targeted, y, clean_logits)
        res = attack.run(split, x, y, target=target, record=True, keep_iterates=bool(plans), generator=generator)
    layers = _layer_steps(split, plans, res.x_by_step, y, settings, seeds) if plans else {}
    # One closed-form call for all (T+1) * B iterates: the numbers `flatrob sharpness` gives on x_t.
    m = head_measures(res.phi.flatten(0, 1), weight, bias, y.repeat(T + 1), weight_norm=settings.weight_norm)
    m = {key: v.view(T + 1, B) for key, v in m.items()}
    if clean_phi is None:
        clean = {key: v[0] for key, v in m.items()}
    else:
        clean = head_measures(clean_phi, weight, bias, y, weight_norm=settings.weight_norm)
    correct = m["pred"] == y[None, :].to(m["pred"].device)
    finite = finite_samples(m, clean, res.dist_l2, res.dist_linf, *layers.get("trace", ()))
    x_adv = None
    if keep_adv:  # a flagged sample keeps its clean input, so the saved file stays loadable
        x_adv = torch.where(finite.to(x.device).view(-1, *([1] * (x.dim() - 1))), res.x_adv, x)
    to = takeoff(m["loss"], res.dist_l2.double().to(m["loss"].device), settings.takeoff)
    peak_step, peak = sharpness_peaks(m["relative_sharpness"])
    out = {
        "m": {key: m[key] for key in ("loss", "relative_sharpness", "trace_h", "confidence", "p_true", "pred")},
        "clean": {key: clean[key] for key in ("pred", "loss", "relative_sharpness")},
        "correct": correct,
        "takeoff": to,
        "peak_step": peak_step,
        "peak": peak,
        "valley": valley_mask(m["relative_sharpness"]),
        "dist_l2": res.dist_l2,
        "dist_linf": res.dist_linf,
        "restart": res.restart,
        "target": target,
        "y": y,
        "index": index,
        "x_adv": x_adv,
        "finite": finite,
        "layers": layers,
        "zero_grad": res.zero_grad,
    }
    return _to_cpu(out)


def _layer_steps(split: HeadSplit, plans, x_by_step: Tensor, y: Tensor, settings: AttackSettings,
                 seeds: tuple[int, int]) -> dict[str, Tensor]:
    """Layer traces at every iterate: ``"trace"`` (and, for fisher-mc, ``"stderr"``) of the per-sample layers,
    (layers, T+1, B), and ``"hutchinson"`` the summed quadratic forms (T+1, layers, probes) of the layers
    measured by Hutchinson (loss w.r.t. the true label). Keyed by position, not layer name (names hold dots,
    which the resume store uses as separators)."""
    per = [p for p in plans if p.per_sample]
    hutchinson = [p for p in plans if not p.per_sample]

    def logits(v: Tensor) -> Tensor:
        with autocast(v.device, settings.precision):
            return split(v)[0]

    columns: dict[str, list[Tensor]] = {}
    quads = []
    for t, xt in enumerate(x_by_step):
        if per:
            traces = layer_run.batch_traces(logits, xt, per, fisher_samples=settings.fisher_samples,
                                            generator=layer_run.draw_generator(*seeds, t))
            for key, v in traces.items():
                columns.setdefault(key, []).append(v)
        if hutchinson:
            traces = HutchinsonTraces([[p.weight] for p in hutchinson], settings.probes, seed=seeds[0])
            traces.add(batch_loss_sum(logits(xt), y), len(y))
            quads.append(traces.quad)
    out = {}
    if per:
        out["trace"] = torch.stack([torch.stack(columns[p.column("trace")]) for p in per])
        if per[0].method == "fisher-mc":
            out["stderr"] = torch.stack([torch.stack(columns[p.column("stderr")]) for p in per])
    if quads:
        out["hutchinson"] = torch.stack(quads)
    return out


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, Takeoff):
        return Takeoff(**{f: _to_cpu(getattr(value, f)) for f in value.__dataclass_fields__})
    return value


def _consume(r: dict, acc: "_Accumulator", on_steps, on_samples) -> int:
    """Add one batch's results to the summary sums and emit its rows; returns its target hits."""
    m, clean, correct, to, y = r["m"], r["clean"], r["correct"], r["takeoff"], r["y"]
    sharp, loss = m["relative_sharpness"], m["loss"]
    clean_correct = clean["pred"] == y
    ok = r["finite"]  # flagged (non-finite) samples are left out of every sum and column
    s = acc.sums
    s["loss"] += loss[:, ok].sum(1).numpy()
    s["loss_sq"] += (loss * loss)[:, ok].sum(1).numpy()
    s["sharp"] += sharp[:, ok].sum(1).numpy()
    s["sharp_sq"] += (sharp * sharp)[:, ok].sum(1).numpy()
    s["correct"] += correct[:, ok].sum(1).numpy()
    s["confidence"] += m["confidence"][:, ok].sum(1).numpy()
    s["dist_l2"] += r["dist_l2"].double()[:, ok].sum(1).numpy()
    acc.by_step["loss"].append(loss[:, ok].numpy())
    acc.by_step["sharp"].append(sharp[:, ok].numpy())
    acc.add(
        clean_correct=clean_correct[ok],
        adv_correct=correct[-1][ok],
        ever_correct=(correct.all(0) & clean_correct)[ok],
        loss_increase=(loss[-1] - clean["loss"])[ok],
        valley=r["valley"][ok],
        width=to.width[ok],
        censored=to.censored[ok],
        lower_bound=to.lower_bound[ok],
        takeoff_step=to.step[ok],
        clean_sharpness=clean["relative_sharpness"][ok],
        adv_sharpness=sharp[-1][ok],
    )
    if r.get("zero_grad") is not None:
        acc.add(zero_grad=r["zero_grad"][ok])
    acc.n += int(ok.sum())
    acc.total += len(y)
    acc.nonfinite += int((~ok).sum())
    layers = r.get("layers") or {}  # absent from a resumed batch without layers
    per = [p for p in acc.plans if p.per_sample]
    traces = {p.column("trace"): layers["trace"][j] for j, p in enumerate(per)}
    traces.update({p.column("stderr"): layers["stderr"][j] for j, p in enumerate(per) if "stderr" in layers})
    layer_cols = layer_run.sharpness_columns(acc.plans, traces, acc.weight_norm)
    for key, v in layer_cols.items():
        v = v.double()[:, ok]
        s[key] += v.sum(1).numpy()
        s[key + "^2"] += (v * v).sum(1).numpy()
        if key in acc.by_step:
            acc.by_step[key].append(v.numpy())
    if "hutchinson" in layers:
        quad = layers["hutchinson"].numpy()
        acc.quad = quad if acc.quad is None else acc.quad + quad
    if on_steps is not None:
        on_steps(_step_rows(m, correct, r["dist_l2"], r["dist_linf"], r["index"], layer_cols))
    if on_samples is not None:
        on_samples(
            _sample_rows(
                index=r["index"], y=y, target=r["target"], restart=r["restart"], clean=clean, m=m, peak=r["peak"],
                peak_step=r["peak_step"], valley=r["valley"], to=to, dist_linf=r["dist_linf"][-1], nonfinite=~ok,
            )
        )
    target = r["target"]
    return 0 if target is None else int(((m["pred"][-1] == target) & ok).sum())


def _step_rows(m: dict, correct: Tensor, dist_l2: Tensor, dist_linf: Tensor, index: Tensor,
               layer_cols: dict[str, Tensor] | None = None) -> list[dict]:
    """One row per sample and step, ordered by sample then step (then the layer columns, ``trace_h@LAYER`` ...)."""
    T1, B = correct.shape
    cols = {
        "index": index.cpu().repeat_interleave(T1).tolist(),
        "step": list(range(T1)) * B,
        "loss": m["loss"],
        "relative_sharpness": m["relative_sharpness"],
        "trace_h": m["trace_h"],
        "confidence": m["confidence"],
        "p_true": m["p_true"],
        "pred": m["pred"],
        "correct": correct,
        "dist_l2": dist_l2,
        "dist_linf": dist_linf,
    }
    cols.update(layer_cols or {})
    keys = STEP_KEYS + tuple(layer_cols or ())
    for key in keys[2:]:
        cols[key] = cols[key].T.reshape(-1).cpu().tolist()
    return [dict(zip(keys, vals)) for vals in zip(*(cols[key] for key in keys))]


def _sample_rows(*, index, y, target, restart, clean, m, peak, peak_step, valley, to, dist_linf, nonfinite) -> list[dict]:
    B = len(y)
    nan = [None] * B
    cols = {
        "index": index,
        "label": y,
        "target": target if target is not None else nan,
        "restart": restart,
        "clean_pred": clean["pred"],
        "adv_pred": m["pred"][-1],
        "clean_loss": clean["loss"],
        "adv_loss": m["loss"][-1],
        "loss_increase": m["loss"][-1] - clean["loss"],
        "clean_sharpness": clean["relative_sharpness"],
        "adv_sharpness": m["relative_sharpness"][-1],
        "peak_sharpness": peak,
        "peak_step": peak_step,
        "valley": valley,
        "takeoff_step": torch.where(to.censored, torch.zeros_like(to.step), to.step),
        "basin_width": to.width,
        "censored": to.censored,
        "final_dist_l2": to.lower_bound,
        "final_dist_linf": dist_linf,
        "nonfinite": nonfinite,
    }
    lists = {key: (v.cpu().tolist() if isinstance(v, Tensor) else v) for key, v in cols.items()}
    censored = lists["censored"]
    lists["takeoff_step"] = [None if c else s for s, c in zip(lists["takeoff_step"], censored)]
    lists["basin_width"] = [None if c else w for w, c in zip(lists["basin_width"], censored)]
    return [dict(zip(SAMPLE_KEYS, vals)) for vals in zip(*(lists[key] for key in SAMPLE_KEYS))]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _summary(acc: _Accumulator, settings: AttackSettings, target_hits: int) -> dict:
    n = acc.n
    s = acc.sums
    with np.errstate(invalid="ignore", divide="ignore"):  # every sample non-finite: NaN (null) means
        mean_loss = s["loss"] / n
        mean_sharp = s["sharp"] / n
        std_loss = np.sqrt(np.maximum(s["loss_sq"] / n - mean_loss**2, 0.0))
        std_sharp = np.sqrt(np.maximum(s["sharp_sq"] / n - mean_sharp**2, 0.0))
    censored = acc.column("censored").astype(bool)
    width = acc.column("width")
    steps = acc.column("takeoff_step")
    lower = acc.column("lower_bound")
    clean_correct = acc.column("clean_correct").astype(bool)
    adv_correct = acc.column("adv_correct").astype(bool)
    summary = {
        "n": acc.total,
        "nonfinite": acc.nonfinite,
        "steps": settings.attack.steps,
        "clean_accuracy": _mean(clean_correct),
        "robust_accuracy": _mean(adv_correct),
        "ever_fooled_accuracy": _mean(acc.column("ever_correct").astype(bool)),
        "success_rate": float((clean_correct & ~adv_correct).sum() / max(clean_correct.sum(), 1)),
        "zero_grad_fraction": _mean(acc.column("zero_grad").astype(bool)) if acc.per_sample["zero_grad"] else None,
        "mean_loss_by_step": mean_loss.tolist(),
        "std_loss_by_step": std_loss.tolist(),
        "mean_sharpness_by_step": mean_sharp.tolist(),
        "std_sharpness_by_step": std_sharp.tolist(),
        "loss_quantiles_by_step": acc.step_quantiles("loss"),
        "sharpness_quantiles_by_step": acc.step_quantiles("sharp"),
        "accuracy_by_step": (s["correct"] / max(n, 1) if n else s["correct"] * np.nan).tolist(),
        "mean_confidence_by_step": (s["confidence"] / max(n, 1) if n else s["confidence"] * np.nan).tolist(),
        "mean_dist_l2_by_step": (s["dist_l2"] / max(n, 1) if n else s["dist_l2"] * np.nan).tolist(),
        **valley_of_mean(mean_sharp),
        "valley_fraction": _mean(acc.column("valley").astype(bool)),
        "loss_final_is_max": bool(mean_loss[-1] >= mean_loss.max()),
        "loss_increase": quantiles(acc.column("loss_increase")),
        "clean_sharpness": describe(acc.column("clean_sharpness")),
        "adv_sharpness": describe(acc.column("adv_sharpness")),
        "takeoff": {
            "tau": settings.takeoff,
            "measured": int((~censored).sum()),
            "censored": int(censored.sum()),
            "width": quantiles(width[~censored]),
            "step": describe(steps[~censored]),
            "censored_final_dist_l2": describe(lower[censored]),
        },
    }
    if settings.targeted is not None:
        summary["target_success_rate"] = target_hits / n if n else float("nan")
    if acc.plans:
        summary["layers"] = _layer_summary(acc, settings)
    return summary


def _layer_summary(acc: _Accumulator, settings: AttackSettings) -> list[dict]:
    """Per layer: mean, std (over samples) and standard error (Monte Carlo, Hutchinson) of its trace and
    relative sharpness at every step, and the peak and final/peak ratio of its mean sharpness curve."""
    n, s = acc.n, acc.sums
    hutchinson = {p.name: j for j, p in enumerate(acc.hutchinson)}
    out = []
    for p in acc.plans:
        entry = {**p.describe(), "draws": settings.fisher_samples if p.method == "fisher-mc" else None,
                 "probes": settings.probes if p.method == "hutchinson" else None}
        wf = float(weight_factor(p.weight, settings.weight_norm))
        if p.per_sample:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = {k: s[p.column(k)] / n for k in ("trace", "sharpness")}
                std = {k: np.sqrt(np.maximum(s[p.column(k) + "^2"] / n - mean[k] ** 2, 0.0)) for k in mean}
                se = np.sqrt(s[p.column("stderr") + "^2"]) / n if p.method == "fisher-mc" else None
        else:
            est = [trace_estimates(torch.from_numpy(q), acc.total)[hutchinson[p.name]] for q in acc.quad]
            mean = {"trace": np.array([e.mean for e in est])}
            mean["sharpness"] = wf * mean["trace"]
            std = {"trace": None, "sharpness": None}
            se = np.array([e.stderr for e in est])
        entry.update({
            "mean_trace_by_step": mean["trace"].tolist(),
            "std_trace_by_step": None if std["trace"] is None else std["trace"].tolist(),
            "trace_stderr_by_step": None if se is None else se.tolist(),
            "mean_sharpness_by_step": mean["sharpness"].tolist(),
            "std_sharpness_by_step": None if std["sharpness"] is None else std["sharpness"].tolist(),
            "sharpness_stderr_by_step": None if se is None else (wf * se).tolist(),
            "sharpness_quantiles_by_step": acc.step_quantiles(p.column("sharpness")) if p.per_sample else None,
            **valley_of_mean(mean["sharpness"]),
        })
        out.append(entry)
    return out
