"""``flatrob bound`` from a checkpoint: Prop. 8/9 with every quantity measured, and checked by attack.

One pass over the data gives, per sample (closed forms of :func:`flatcli.core.curvature.head_measures`):

* ``kappa_i = ||W||_F^2 Tr(H_i)``, the relative sharpness in the squared convention the bound uses;
* ``||phi(x_i)||`` (the sample's own ``r``) and ``||x_i||`` (the theorem assumes ``||x|| <= 1``);
* ``g_i = ||W||_F ||grad_W loss_i||_F`` (the first-order term; 0 at a minimum);
* the sum of the gradient matrices ``grad_W loss_i = (p_i - e_{y_i}) phi_i^T`` (k x m, float64);
* when asked (``lipschitz="local"``, or a check), a local Lipschitz estimate of ``phi`` on the batch
  (:func:`flatcli.core.lipschitz.local_estimate`: power iterations by double backward, the costly part;
  an interrupt is honoured between them).

The data-set values are those of Prop. 9 as the paper states it: ``kappa`` the mean of the per-sample
values (the data-set Hessian is the mean of the per-sample ones), ``r = min_i ||phi(x_i)||``, and
``g = ||W||_F ||(1/n) sum_i grad_W loss_i||_F``, the norm of the gradient of the *data-set* loss: that is
the first-order term of the Taylor expansion of the data-set loss, and it is exactly 0 "at a minimum wrt
S", the paper's assumption. The per-sample radii are Prop. 8 applied to each sample with its own
``kappa_i``, ``||phi(x_i)||`` and ``g_i``; their minimum certifies every sample of the data set in the
sense of Definition 6. ``at_minimum`` drops the first-order term everywhere, as the paper does.

``L`` is an upper bound through the module graph (sound), the largest local Jacobian norm over the
data (an estimate from below, not a certificate), or a given number; the upper bound is always reported,
the local estimate when it was computed (``null`` otherwise), with their ratio.

The check (:func:`check_radii`) attacks every sample with PGD-l2 inside its own certified radius and
records the largest loss increase over all iterates; with a sound ``L`` no sample may exceed epsilon.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from flatcli.core.attack_losses import check_loss
from flatcli.core.curvature import cross_entropy, head_measures, weight_factor
from flatcli.core.attacks import MAX_STEPS, pgd
from flatcli.core.radius import certified_radius
from flatcli.core.statistics import describe
from flatcli.errors import DataError, OptionError, UsageError, literal
from flatcli.models.head import HeadSplit
from flatcli.runs.bound_numbers import parse_list
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runs.sanity import checked
from flatcli.runtime import interrupts
from flatcli.runtime.loop import RunContext, each_batch

LIPSCHITZ_KINDS = ("upper", "local")
#: The most power iterations per batch of the local Lipschitz estimate.
MAX_LOCAL_ITERS = 10_000

#: Per-sample row keys (one row per sample and epsilon); ``loss_increase``/``exceeds`` with a check.
ROW_KEYS = (
    "index", "label", "pred", "loss", "input_norm", "epsilon", "kappa", "feature_norm", "grad",
    "delta", "feature_step", "first_order", "second_order", "third_order",
)
CHECK_KEYS = ("loss_increase", "exceeds")
#: Keys of each data-set radius (one per epsilon) in ``summary["radii"]`` (then ``per_sample_delta``).
RADIUS_KEYS = (
    "epsilon", "kappa", "lipschitz", "r", "classes", "features", "grad",
    "delta", "saturation", "feature_step", "first_order", "second_order", "third_order",
)


@dataclass
class BoundSettings:
    """What the checkpoint mode of ``flatrob bound`` needs beyond the model and data; ranges checked here.

    ``lipschitz`` is ``"upper"``, ``"local"`` or a positive number (kind ``given``). ``check_steps``
    PGD-l2 steps per sample (0: no check), step size ``check_step_factor * delta_i / steps``, ascending
    ``check_loss`` (the increase measured is always the cross-entropy's).
    """

    epsilons: tuple[float, ...]
    lipschitz: str | float = "upper"
    at_minimum: bool = False
    check_steps: int = 0
    check_step_factor: float = 2.5
    local_iters: int = 50
    check_loss: str = "ce"

    def __post_init__(self) -> None:
        check_loss(self.check_loss)
        if not self.epsilons:
            raise UsageError("give at least one --epsilon")
        for e in self.epsilons:
            if not (math.isfinite(e) and e > 0):
                raise OptionError("epsilon", f"{{}} must be positive, got {e}")
        if isinstance(self.lipschitz, str):
            if self.lipschitz not in LIPSCHITZ_KINDS:
                raise OptionError("lipschitz", "{} must be a positive number, upper or local, got "
                                  + literal(repr(self.lipschitz)))
        elif not (math.isfinite(self.lipschitz) and self.lipschitz > 0):
            raise OptionError("lipschitz", f"{{}} must be positive, got {self.lipschitz}")
        if not 0 <= self.check_steps <= MAX_STEPS:
            raise OptionError("check_steps", f"{{}} must be from 0 to {MAX_STEPS}, got {self.check_steps}")
        if not 1 <= self.local_iters <= MAX_LOCAL_ITERS:
            raise OptionError("local_iters", f"{{}} must be from 1 to {MAX_LOCAL_ITERS}, got {self.local_iters}")

    @classmethod
    def from_options(cls, epsilon: str, *, lipschitz: str | float | None = None, at_minimum: bool = False,
                     check: bool = False, check_steps: int | None = None, local_iters: int | None = None,
                     loss: str | None = None) -> "BoundSettings":
        """The command's options: ``epsilon`` a number or comma-separated list, ``lipschitz`` one number,
        ``upper`` (default) or ``local``; ``check_steps`` (default 20) and ``loss`` (default ce) need ``check``."""
        epsilons = parse_list("epsilon", str(epsilon))
        lip_text = str(lipschitz if lipschitz is not None else "upper").strip()
        if lip_text in LIPSCHITZ_KINDS:
            lip_value: str | float = lip_text
        else:
            lips = parse_list("lipschitz", lip_text)
            if len(lips) != 1:
                raise UsageError("with a checkpoint --lipschitz takes one value (a number, upper or local), not a list")
            lip_value = lips[0]
        steps = 20 if check_steps is None else check_steps
        if check and steps < 1:
            raise OptionError("check_steps", f"{{}} must be at least 1, got {steps}")
        if check_steps is not None and not check:
            raise OptionError(("check_steps", "check"), "{} needs {}")
        if loss is not None and not check:
            raise OptionError(("loss", "check", "check", "loss"), "{} is the loss of the {} attack; add {} or drop {}")
        return cls(epsilons=tuple(epsilons), lipschitz=lip_value, at_minimum=at_minimum,
                   check_steps=steps if check else 0, local_iters=50 if local_iters is None else local_iters,
                   check_loss=loss or "ce")

    @property
    def wants_local(self) -> bool:
        """Whether the local estimate is computed: asked for as L, or for a check to compare with."""
        return self.lipschitz == "local" or self.check_steps > 0

    @property
    def lipschitz_kind(self) -> str:
        return self.lipschitz if isinstance(self.lipschitz, str) else "given"

    def config(self) -> dict:
        return {
            "mode": "checkpoint",
            "weight_norm": "squared",
            "at_minimum": self.at_minimum,
            "lipschitz": self.lipschitz,
            "lipschitz_kind": self.lipschitz_kind,
            "epsilons": list(self.epsilons),
            "grad_dataset": "||W||_F * ||mean of per-sample grad_W loss||_F" if not self.at_minimum else "0 (--at-minimum)",
            "check_steps": self.check_steps,
            "check_step_factor": self.check_step_factor,
            "check_loss": self.check_loss,
            "local_iters": self.local_iters,
        }


@dataclass
class Measured:
    """Per-sample scalars of the measuring pass (numpy, float64) and the data-set aggregates."""

    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    loss: np.ndarray
    input_norm: np.ndarray
    kappa: np.ndarray
    feature_norm: np.ndarray
    grad_norm: np.ndarray  # ||grad_W loss_i||_F (without ||W||_F)
    mean_grad_norm: float  # ||(1/n) sum_i grad_W loss_i||_F
    weight_norm: float  # ||W||_F
    input_shape: tuple[int, ...]
    local: dict = field(default_factory=dict)  # value, argmax index, per-batch convergence

    @property
    def n(self) -> int:
        return int(self.index.size)


def measure(ctx: RunContext, settings: BoundSettings) -> Measured:
    """The measuring pass: per-sample kappa, ||phi||, gradient norm, ||x||, loss; mean gradient; local L.

    Under torchrun every rank measures its batches and receives everyone's (the radii of all samples
    are needed by every rank's ``--check``).
    """
    loaded = ctx.loaded
    head = loaded.head
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "label", "pred", "loss", "input_norm", "kappa", "feature_norm", "grad_norm")}
    grad_sum = torch.zeros(head.out_features, head.in_features, dtype=torch.float64, device=ctx.device)
    local_value, local_index, local_converged, local_iterations = -1.0, None, settings.wants_local, 0
    input_shape: tuple[int, ...] | None = None
    with HeadSplit(loaded.model, head, loaded.layer) as split:

        def compute(b) -> dict:
            return _measure_batch(split, loaded, settings, b.x, b.y, b.index, seed=ctx.seed, verify=b.first)

        for r in each_batch(ctx, compute, everywhere=True):  # every rank needs every radius for --check
            input_shape = r["input_shape"]
            grad_sum += r["grad_sum"].to(ctx.device)
            if r["local_value"] > local_value:
                local_value, local_index = r["local_value"], r["local_index"]
            local_converged = local_converged and r["local_converged"]
            local_iterations = max(local_iterations, r["local_iterations"])
            for k in cols:
                cols[k].append(r[k])
    if input_shape is None:
        raise DataError(f"data {ctx.data.name} has no samples; the bound needs at least one (check --limit)")
    v = {k: np.concatenate(c) for k, c in cols.items()}
    n = v["index"].size
    return Measured(
        **v,
        mean_grad_norm=float(torch.linalg.vector_norm(grad_sum / n)),
        weight_norm=float(weight_factor(head.weight, "plain")),
        input_shape=input_shape,
        local={"value": local_value if settings.wants_local else None, "index": local_index,
               "converged": local_converged if settings.wants_local else None, "iterations": local_iterations},
    )


def _measure_batch(split: HeadSplit, loaded, settings: BoundSettings, x, y, index, *, seed: int, verify: bool) -> dict:
    """One batch of the measuring pass, on the CPU: per-sample columns, gradient sum, local estimate."""
    from flatcli.core.lipschitz import local_estimate

    head = loaded.head
    with torch.no_grad():
        phi = split.features(x, verify=verify)
    m = head_measures(phi, head.weight, head.bias, y, weight_norm="squared")
    with torch.no_grad():
        logits = phi.double() @ head.weight.detach().double().T
        if head.bias is not None:
            logits = logits + head.bias.detach().double()
        resid = torch.softmax(logits, dim=-1)
        resid[torch.arange(len(y), device=resid.device), y] -= 1.0
        grad_sum = (resid.T @ phi.double()).cpu()
    local = {"local_value": -1.0, "local_index": None, "local_converged": True, "local_iterations": 0}
    if settings.wants_local:
        with warnings.catch_warnings():
            # torch's forward-mode AD loads TorchScript decompositions on first use and warns about it.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            est = local_estimate(loaded.model, loaded.layer, x, iters=settings.local_iters, seed=seed,
                                 between=interrupts.check)
        local = {"local_value": est.value, "local_index": int(index[est.detail["argmax"]]),
                 "local_converged": bool(est.detail.get("converged", False)),
                 "local_iterations": int(est.detail.get("iterations", 0))}
    return {
        "input_shape": tuple(int(s) for s in x.shape[1:]),
        "grad_sum": grad_sum,
        **local,
        "index": index.cpu().numpy(),
        "label": y.cpu().numpy(),
        "pred": m["pred"].cpu().numpy(),
        "loss": m["loss"].cpu().numpy(),
        "input_norm": torch.linalg.vector_norm(x.double().flatten(1), dim=1).cpu().numpy(),
        "kappa": m["relative_sharpness"].cpu().numpy(),
        "feature_norm": m["feature_norm"].cpu().numpy(),
        "grad_norm": m["grad_norm"].cpu().numpy(),
    }


def lipschitz_constants(loaded, measured: Measured, settings: BoundSettings) -> dict:
    """The L used and both computed values: ``used``, ``kind``, ``certificate``, ``upper``, ``local``, ratio.

    The upper bound is needed when ``--lipschitz upper``; otherwise it is only reported, and a model it
    cannot bound gives ``upper: null`` with the reason instead of failing the command.
    """
    from flatcli.core.lipschitz import upper_bound

    out: dict = {}
    try:
        up = upper_bound(loaded.model, loaded.layer, measured.input_shape)
        out["upper"] = up.value
        out["upper_factors"] = [
            {"layer": r["target"], "kind": r["kind"], "factor": r["factor"]}
            for r in up.detail.get("nodes", [])
            if "factor" in r and r["factor"] != 1.0
        ]
    except UsageError as exc:
        if settings.lipschitz == "upper":
            raise
        out["upper"] = None
        out["upper_error"] = str(exc)
    out["local"] = measured.local["value"]
    out["local_index"] = measured.local["index"]
    out["local_converged"] = measured.local["converged"]
    out["upper_over_local"] = (out["upper"] / out["local"] if out["upper"] is not None and out["local"] is not None
                               and out["local"] > 0 else None)
    kind = settings.lipschitz_kind
    used = out[kind] if kind in LIPSCHITZ_KINDS else float(settings.lipschitz)
    if not (used is not None and math.isfinite(used) and used > 0):
        raise OptionError("lipschitz", f"the {kind} Lipschitz estimate of phi is {used}; the bound needs L > 0 "
                          "(phi may be constant on this data); pass {} VALUE")
    head_order = {"used": used, "kind": kind, "certificate": kind == "upper"}
    return {**head_order, **out}


def radii(measured: Measured, loaded, L: float, settings: BoundSettings) -> tuple[list[dict], list]:
    """Data-set radius per epsilon (Prop. 9) and per-sample radii (Prop. 8), as row dicts and arrays."""
    k, m = loaded.num_classes, loaded.features
    kappa_ds = float(measured.kappa.mean())
    r_ds = float(measured.feature_norm.min())
    g_ds = 0.0 if settings.at_minimum else measured.weight_norm * measured.mean_grad_norm
    g_i = np.zeros_like(measured.grad_norm) if settings.at_minimum else measured.weight_norm * measured.grad_norm
    if r_ds <= 0:
        raise DataError(
            f"min ||phi(x)|| over the data is {r_ds}: the bound needs r > 0 (a sample maps to phi = 0); "
            "drop such samples or pick another layer"
        )
    rows, per_sample = [], []
    for eps in settings.epsilons:
        ds = certified_radius(kappa=kappa_ds, lipschitz=L, r=r_ds, classes=k, features=m, epsilon=eps, grad=g_ds)
        ps = certified_radius(
            kappa=measured.kappa, lipschitz=L, r=measured.feature_norm, classes=k, features=m, epsilon=eps, grad=g_i
        )
        values = {
            "epsilon": eps, "kappa": kappa_ds, "lipschitz": L, "r": r_ds, "classes": k, "features": m, "grad": g_ds,
            **{key: float(getattr(ds, key)) for key in RADIUS_KEYS[7:]},
        }
        rows.append({**{key: values[key] for key in RADIUS_KEYS}, "per_sample_delta": describe(ps.delta)})
        per_sample.append((eps, g_i, ps))
    return rows, per_sample


def sample_rows(measured: Measured, per_sample: list, check: dict | None = None) -> list[dict]:
    """One dict per sample and epsilon with :data:`ROW_KEYS` (and :data:`CHECK_KEYS` after a check)."""
    rows = []
    for e_i, (eps, g_i, ps) in enumerate(per_sample):
        cols = {
            "index": measured.index.tolist(), "label": measured.label.tolist(), "pred": measured.pred.tolist(),
            "loss": measured.loss.tolist(), "input_norm": measured.input_norm.tolist(),
            "epsilon": [eps] * measured.n, "kappa": measured.kappa.tolist(),
            "feature_norm": measured.feature_norm.tolist(), "grad": np.asarray(g_i).tolist(),
            "delta": np.atleast_1d(ps.delta).tolist(), "feature_step": np.atleast_1d(ps.feature_step).tolist(),
            "first_order": np.atleast_1d(ps.first_order).tolist(),
            "second_order": np.atleast_1d(ps.second_order).tolist(),
            "third_order": np.atleast_1d(ps.third_order).tolist(),
        }
        if check is not None:
            inc = check["increase"][e_i]
            cols["loss_increase"] = inc.tolist()
            cols["exceeds"] = (inc > eps).tolist()
        keys = ROW_KEYS + (CHECK_KEYS if check is not None else ())
        rows.extend(dict(zip(keys, vals)) for vals in zip(*(cols[key] for key in keys)))
    return rows


def check_radii(ctx: RunContext, per_sample: list, settings: BoundSettings) -> dict:
    """PGD-l2 inside each sample's certified radius; the largest loss increase over all iterates.

    For every epsilon and sample ``i``: PGD-l2 from the clean input with ``eps = delta_i`` and step
    ``check_step_factor * delta_i / check_steps``, no random start, maximising ``check_loss`` (default the
    cross-entropy at the true label). The increase is ``max_t loss(x_t) - loss(x_0)`` over the iterates ``x_0 .. x_T`` (all of
    them within the radius), both in float64 from the same forward passes. Returns ``increase``: one
    array per epsilon, in data order.
    """
    loaded = ctx.loaded
    steps = settings.check_steps
    increase = [[] for _ in per_sample]
    deltas = [torch.as_tensor(np.atleast_1d(ps.delta), dtype=torch.float64) for _, _, ps in per_sample]
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:

        def compute(b) -> list:
            out = []
            for delta in deltas:
                eps = delta[b.start : b.start + len(b.y)].to(device=ctx.device, dtype=b.x.dtype)
                res = pgd(split, b.x, b.y, norm="l2", eps=eps, alpha=eps * (settings.check_step_factor / steps),
                          steps=steps, record=True, loss=settings.check_loss)
                losses = torch.stack([cross_entropy(lg.double(), b.y) for lg in res.logits_by_step])
                out.append((losses.max(0).values - losses[0]).cpu().numpy())
            return out

        for r in each_batch(ctx, compute):
            for e_i, inc in enumerate(r):
                increase[e_i].append(inc)
    return {"increase": [np.concatenate(parts) if parts else np.zeros(0) for parts in increase]}


def check_summary(check: dict, per_sample: list, measured: Measured, lip: dict, settings: BoundSettings) -> dict:
    """Largest increase and violations per epsilon, and which assumptions a violation points to."""
    per_eps = []
    for inc, (eps, _, _) in zip(check["increase"], per_sample):
        over = inc > eps
        worst = int(np.argmax(inc))
        per_eps.append({
            "epsilon": eps,
            "max_loss_increase": float(inc[worst]),
            "max_increase_over_epsilon": float(inc[worst] / eps),
            "worst_index": int(measured.index[worst]),
            "violations": int(over.sum()),
            "violating_indices": measured.index[over][:20].tolist(),
        })
    violations = sum(p["violations"] for p in per_eps)
    return {
        "steps": settings.check_steps,
        "step_factor": settings.check_step_factor,
        "method": f"PGD-l2 on the {settings.check_loss} loss inside each sample's certified radius, no random start; "
        "max cross-entropy increase over all iterates",
        "per_epsilon": per_eps,
        "violations": violations,
        "broken_assumptions": broken_assumptions(measured, lip, settings) if violations else [],
        "caveat": REMAINDER_CAVEAT if violations else None,
    }


def broken_assumptions(measured: Measured, lip: dict, settings: BoundSettings) -> list[str]:
    """The theorem's assumptions that the measurements contradict, most likely culprit first."""
    out = []
    if not lip["certificate"]:
        out.append(
            f"phi is L-Lipschitz: L = {lip['used']:.4g} is {'a local estimate' if lip['kind'] == 'local' else 'a given number'}, "
            "not a certified upper bound (use --lipschitz upper)"
        )
    if settings.at_minimum and measured.grad_norm.max() > 0:
        out.append(
            f"the model is at a minimum: --at-minimum dropped the first-order term but the gradient norm "
            f"||grad_W loss|| is up to {measured.grad_norm.max():.4g} (mean {measured.grad_norm.mean():.4g}); drop --at-minimum"
        )
    xmax = float(measured.input_norm.max())
    if xmax > 1:
        out.append(
            f"||x|| <= 1: max ||x|| over the data is {xmax:.4g}; the third-order remainder (k m L^3 / 24) "
            "relies on ||phi(x)|| <= L, which needs it"
        )
    return out


#: What a violation can point to when every measured assumption holds.
REMAINDER_CAVEAT = (
    "the third-order remainder bound of appendix C.2, (k m L^3 / 24) Delta^3, does not involve ||W||: "
    "a large head weight can exceed it even when every measured assumption holds"
)


def assumptions(measured: Measured, lip: dict, settings: BoundSettings) -> dict:
    """Each assumption of Prop. 8/9 next to what was measured (the ``assumptions`` block of the JSON)."""
    xmax = float(measured.input_norm.max())
    r = float(measured.feature_norm.min())
    return {
        "input_norm": {"assumed": "||x|| <= 1", "max": xmax, "holds": xmax <= 1.0},
        "minimum": {
            "assumed": "grad_W loss = 0 (a minimum)",
            "grad_norm_mean": float(measured.grad_norm.mean()),
            "grad_norm_max": float(measured.grad_norm.max()),
            "mean_grad_norm": measured.mean_grad_norm,
            "first_order_term": "dropped (--at-minimum)" if settings.at_minimum else "included",
        },
        "feature_norm": {"assumed": "||phi(x)|| >= r > 0", "min": r, "holds": r > 0},
        "lipschitz": {
            "assumed": "phi is L-Lipschitz",
            "value": lip["used"],
            "kind": lip["kind"],
            "certificate": lip["certificate"],
        },
    }


def bound(ctx: RunContext, settings: BoundSettings, *, on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Measure, bound and (with ``check_steps``) check; per-sample rows (one per sample and epsilon) go to
    ``on_rows``. Under torchrun the result is meaningful on rank 0 only."""
    ctx.expect(len(ctx.data) * (2 if settings.check_steps else 1))
    measured = measure(ctx, settings)
    lip = lipschitz_constants(ctx.loaded, measured, settings)
    rows, per_sample = radii(measured, ctx.loaded, lip["used"], settings)
    check = check_radii(ctx, per_sample, settings) if settings.check_steps else None
    config = {**ctx.describe(), **settings.config()}
    if not ctx.dist.is_main:
        return Result("bound", config, {})
    loaded = ctx.loaded
    summary = {
        "n": measured.n,
        "accuracy": float((measured.pred == measured.label).mean()),
        "classes": loaded.num_classes,
        "features": loaded.features,
        "weight_norm": measured.weight_norm,
        "kappa": float(measured.kappa.mean()),
        "r": float(measured.feature_norm.min()),
        "grad": rows[0]["grad"],
        "lipschitz": lip,
        "assumptions": assumptions(measured, lip, settings),
        "radii": rows,
        "per_sample": {
            "kappa": describe(measured.kappa),
            "feature_norm": describe(measured.feature_norm),
            "grad": describe(per_sample[0][1]),
            "loss": describe(measured.loss),
        },
    }
    if check is not None:
        summary["check"] = check_summary(check, per_sample, measured, lip, settings)
    out = Rows(on_rows, keep_samples)
    if out.wanted:
        out(sample_rows(measured, per_sample, check))
    return checked(Result("bound", config, summary, out.kept), ctx, summary["accuracy"])
