"""``flatrob bound``: the certified radius of Prop. 8/9, from numbers, from sharpness JSON or a checkpoint.

Numbers-only mode (no checkpoint, no ``--from-json``) must answer fast in shell loops: it imports
numpy and :mod:`flatcli.bound`, never torch. Keep this module's top-level imports light; torch is
imported inside the checkpoint branch only (``tests/test_bound_cli.py`` checks it).
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import sys
from typing import Annotated, Optional

import typer

from flatcli import __version__
from flatcli.cli import common, render
from flatcli.cli.app import app
from flatcli.cli.options import (
    Arch, Data, Device, Format, FormatOpt, Layer, Limit, Output, PerSample, Quiet, Seed, SpecFile,
)
from flatcli.errors import UsageError

#: Keys of each row of numbers-only / --from-json output (``summary.radii[*]``, jsonl, csv).
NUMBER_ROW_KEYS = (
    "kappa", "lipschitz", "r", "classes", "features", "grad", "epsilon",
    "delta", "saturation", "feature_step", "first_order", "second_order", "third_order",
)

# option name -> (what it must be, test)
_CHECKS = {
    "kappa": (">= 0", lambda v: v >= 0),
    "lipschitz": ("positive", lambda v: v > 0),
    "r": ("positive", lambda v: v > 0),
    "classes": ("a whole number >= 1", lambda v: v >= 1 and v == math.floor(v)),
    "features": ("a whole number >= 1", lambda v: v >= 1 and v == math.floor(v)),
    "grad": (">= 0", lambda v: v >= 0),
    "epsilon": ("positive", lambda v: v > 0),
}
_NUMBER_OPTIONS = ("kappa", "lipschitz", "r", "classes", "features", "grad", "epsilon")
_MEASURED = ("kappa", "r", "classes", "features")


def parse_list(name: str, text: str | None) -> list[float] | None:
    """``"0.01,0.1,1"`` -> ``[0.01, 0.1, 1.0]``, each checked against :data:`_CHECKS`; ``None`` stays."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise UsageError(f"--{name} needs a number or a comma-separated list of numbers, got {text!r}")
    what, ok = _CHECKS[name]
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise UsageError(f"--{name}: {p!r} is not a number") from None
        if not math.isfinite(v) or not ok(v):
            raise UsageError(f"--{name} must be {what}, got {p}")
        values.append(int(v) if name in ("classes", "features") else v)
    return values


def _versions() -> dict:
    import numpy

    return {"flatrob": __version__, "numpy": numpy.__version__, "python": platform.python_version()}


def number_rows(values: dict[str, list[float]]) -> list[dict]:
    """One row per combination of the list options (cartesian product, in :data:`_NUMBER_OPTIONS` order)."""
    import numpy as np

    from flatcli.bound import certified_radius

    grid = list(itertools.product(*(values[k] for k in _NUMBER_OPTIONS)))
    if len(grid) > 1_000_000:
        raise UsageError(f"the lists give {len(grid)} combinations; at most 1000000")
    cols = {k: np.array([g[i] for g in grid], dtype=np.float64) for i, k in enumerate(_NUMBER_OPTIONS)}
    rad = certified_radius(
        kappa=cols["kappa"], lipschitz=cols["lipschitz"], r=cols["r"], classes=cols["classes"],
        features=cols["features"], epsilon=cols["epsilon"], grad=cols["grad"],
    )
    out = {k: [v for v in (g[i] for g in grid)] for i, k in enumerate(_NUMBER_OPTIONS)}
    for k in ("delta", "saturation", "feature_step", "first_order", "second_order", "third_order"):
        out[k] = np.atleast_1d(getattr(rad, k)).tolist()
    return [{k: out[k][j] for k in NUMBER_ROW_KEYS} for j in range(len(grid))]


def read_sharpness_json(source: str) -> tuple[dict, str]:
    """The ``flatrob sharpness --format json`` document at ``source`` (``-``: stdin) and its name."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except OSError as exc:
        raise UsageError(f"--from-json: cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--from-json: {name} is not UTF-8 text; use `flatrob sharpness ... --format json`") from None
    if not text.strip():
        raise UsageError(f"--from-json: {name} is empty; pipe in `flatrob sharpness ... --format json`")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--from-json: {name} is not JSON ({exc.msg} at line {exc.lineno}); "
            "use `flatrob sharpness ... --format json` (not jsonl/csv/table)"
        ) from None
    except RecursionError:
        raise UsageError(f"--from-json: {name} is not sharpness JSON (nested too deeply to read)") from None
    if not isinstance(doc, dict) or doc.get("command") != "sharpness":
        got = doc.get("command") if isinstance(doc, dict) else type(doc).__name__
        raise UsageError(f"--from-json: {name} is not `flatrob sharpness --format json` output (command: {got!r})")
    return doc, name


def values_from_sharpness(doc: dict, name: str) -> tuple[dict, dict]:
    """kappa, r, k, m, ||W||_F, mean gradient norm from a sharpness document, and provenance.

    The bound uses the squared convention ``kappa = ||W||_F^2 Tr(H)``. A document made with
    ``--weight-norm plain`` holds ``||W||_F Tr(H)``; it is converted exactly by multiplying by
    ``||W||_F`` (``summary.weight_norm``), and the config says so.
    """
    summary, config = doc.get("summary") or {}, doc.get("config") or {}

    def get(*path):
        node = summary
        for p in path:
            if not isinstance(node, dict) or p not in node or node[p] is None:
                raise UsageError(
                    f"--from-json: {name} lacks summary.{'.'.join(path)}; "
                    "is it `flatrob sharpness --format json` output of this version?"
                )
            node = node[p]
        return node

    kappa = float(get("relative_sharpness", "mean"))
    wn = float(get("weight_norm"))
    convention = config.get("weight_norm", "squared")
    if convention not in ("squared", "plain"):
        raise UsageError(f"--from-json: {name} has unknown config.weight_norm {convention!r}")
    provenance = {
        "source": name,
        "source_checkpoint": config.get("checkpoint"),
        "source_checkpoint_sha256": config.get("checkpoint_sha256"),
        "source_data": config.get("data"),
        "source_split": config.get("split"),
        "source_limit": config.get("limit"),
        "source_scale": config.get("scale"),
        "source_weight_norm": convention,
        "kappa_from": "summary.relative_sharpness.mean",
    }
    if convention == "plain":
        kappa *= wn
        provenance["kappa_from"] += " * summary.weight_norm (converted from --weight-norm plain to squared)"
    values = {
        "kappa": kappa,
        "r": float(get("feature_norm_min")),
        "classes": int(get("classes")),
        "features": int(get("features")),
        "weight_norm": wn,
        "grad_norm_mean": float(get("grad_norm", "mean")),
    }
    for key, (what, ok) in (("kappa", _CHECKS["kappa"]), ("r", _CHECKS["r"])):
        if not (math.isfinite(values[key]) and ok(values[key])):
            raise UsageError(f"--from-json: {name} gives {key} = {values[key]}, but the bound needs it {what}")
    return values, provenance


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

_SHORT = {
    "kappa": "kappa", "lipschitz": "L", "r": "r", "classes": "k", "features": "m", "grad": "g",
    "epsilon": "epsilon", "delta": "delta", "saturation": "limit",
    "first_order": "1st", "second_order": "2nd", "third_order": "3rd",
}
_CAPTION = (
    "delta: certified radius; limit: delta as kappa -> 0 (g = 0); 1st, 2nd, 3rd: g D, (kappa/2) D^2, "
    "(k m L^3/24) D^3 at D = L delta / r (they sum to epsilon)"
)


def _radius_table(title: str, rows: list[dict]):
    table = render.Table(title=title, title_justify="left", caption=_CAPTION, caption_justify="left")
    for k in _SHORT:
        table.add_column(_SHORT[k], justify="right")
    for row in rows:
        table.add_row(*(render.fmt(row.get(k)) for k in _SHORT))
    return table


def _console(stream):
    """Like :func:`render.console`, wide enough for the twelve columns of a radius table."""
    return render.Console(file=stream, soft_wrap=False, width=max(render.Console(file=stream).width, 140))


def render_numbers(stream, summary: dict, samples) -> None:
    con = _console(stream)
    con.print(_radius_table("Certified radius (Prop. 8/9)", summary["radii"]))


def render_checkpoint(stream, summary: dict, samples) -> None:
    con = _console(stream)
    lip = summary["lipschitz"]
    con.print(render.key_values("Measured (data set)", {
        "samples": summary["n"], "accuracy": summary["accuracy"], "classes k": summary["classes"],
        "features m": summary["features"], "||W||_F": summary["weight_norm"],
        "kappa (mean, squared)": summary["kappa"], "r = min ||phi(x)||": summary["r"],
        "g = ||W|| ||mean grad||": summary["grad"],
    }))
    con.print(render.key_values("Lipschitz constant of phi", {
        "used": lip["used"], "kind": lip["kind"] + ("" if lip["certificate"] else " (not a certificate)"),
        "upper (sound)": lip.get("upper"), "local (estimate)": lip.get("local"),
        "upper / local": lip.get("upper_over_local"),
    }))
    a = summary["assumptions"]
    table = render.Table(title="Assumptions of the theorem, as measured", title_justify="left")
    for c in ("assumption", "measured", "holds"):
        table.add_column(c)
    table.add_row(a["input_norm"]["assumed"], f"max ||x|| = {render.fmt(a['input_norm']['max'])}", render.fmt(a["input_norm"]["holds"]))
    m = a["minimum"]
    table.add_row(
        m["assumed"],
        f"||grad|| mean {render.fmt(m['grad_norm_mean'])}, max {render.fmt(m['grad_norm_max'])}; "
        f"||mean grad|| {render.fmt(m['mean_grad_norm'])}",
        f"first-order term {m['first_order_term']}",
    )
    table.add_row(a["feature_norm"]["assumed"], f"min ||phi|| = {render.fmt(a['feature_norm']['min'])}", render.fmt(a["feature_norm"]["holds"]))
    table.add_row(a["lipschitz"]["assumed"], f"L = {render.fmt(a['lipschitz']['value'])} ({a['lipschitz']['kind']})", render.fmt(a["lipschitz"]["certificate"]))
    con.print(table)
    con.print(_radius_table("Data-set radius (Prop. 9)", summary["radii"]))
    per = [{"epsilon": r["epsilon"], **{k: r["per_sample_delta"].get(k) for k in render.STAT_COLUMNS}} for r in summary["radii"]]
    con.print(render.rows_table("Per-sample radii delta_i (Prop. 8, each sample's own kappa, ||phi||, g)", per))
    con.print(render.stats_table("Per-sample measures", summary["per_sample"]))
    if "check" in summary:
        rows = [{k: p[k] for k in ("epsilon", "max_loss_increase", "max_increase_over_epsilon", "violations")} for p in summary["check"]["per_epsilon"]]
        con.print(render.rows_table(f"Check: PGD-l2 ({summary['check']['steps']} steps) inside each certified radius", rows))
    if samples:
        con.print(render.rows_table("Samples", samples))


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------



@app.command()
def bound(
    checkpoint: Annotated[
        Optional[str],
        typer.Argument(help="Checkpoint (or example:digits-cnn) to measure everything from; omit for numbers-only mode.", show_default=False),
    ] = None,
    epsilon: Annotated[Optional[str], typer.Option("--epsilon", help="Allowed loss increase epsilon > 0; a comma-separated list gives one row each.", show_default=False)] = None,
    kappa: Annotated[Optional[str], typer.Option("--kappa", help="Relative sharpness ||W||_F^2 Tr(H) (numbers mode; list allowed).", show_default=False)] = None,
    lipschitz: Annotated[Optional[str], typer.Option("--lipschitz", "-L", help="Lipschitz constant of phi: a number (list allowed), or with a checkpoint upper (sound, default) or local (estimate).", show_default=False)] = None,
    r: Annotated[Optional[str], typer.Option("--r", help="Lower bound r > 0 on ||phi(x)|| (numbers mode; list allowed).", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", "-k", help="Number of classes k (numbers mode; list allowed).", show_default=False)] = None,
    features: Annotated[Optional[str], typer.Option("--features", "-m", help="Feature dimension m (numbers mode; list allowed).", show_default=False)] = None,
    grad: Annotated[Optional[str], typer.Option("--grad", help="First-order term g = ||W||_F ||grad_W loss||_F >= 0 (default 0 in numbers mode; list allowed).", show_default=False)] = None,
    at_minimum: Annotated[bool, typer.Option("--at-minimum", help="Drop the first-order term, as the paper does (it assumes a minimum).")] = False,
    from_json: Annotated[Optional[str], typer.Option("--from-json", help="Take kappa, r, k, m (and g) from `flatrob sharpness --format json` output; - reads stdin.", show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="Attack each sample with PGD-l2 inside its certified radius and report the largest loss increase.")] = False,
    check_steps: Annotated[Optional[int], typer.Option("--check-steps", help="PGD-l2 steps per sample for --check [default: 20].", show_default=False)] = None,
    local_iters: Annotated[Optional[int], typer.Option("--local-iters", help="Power iterations per batch for the local Lipschitz estimate [default: 50].", show_default=False)] = None,
    spec: SpecFile = None,
    arch: Arch = None,
    layer: Layer = None,
    data: Data = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Data split: train, test or all (digits) [default: test].", show_default=False)] = None,
    limit: Limit = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Samples per batch; memory is bounded by it [default: 256].", show_default=False)] = None,
    device: Device = "auto",
    seed: Seed = 0,
    per_sample: PerSample = False,
    format: FormatOpt = Format.table,
    output: Output = None,
    quiet: Quiet = False,
) -> None:
    """Certified radius of Proposition 8/9: from numbers, from sharpness JSON, or measured from a checkpoint.

    \b
    flatrob bound --kappa 0.8 --lipschitz 12 --r 3.1 --classes 10 --features 512 --epsilon 0.1
    flatrob sharpness m.safetensors --format json | flatrob bound --from-json - --lipschitz 12 --epsilon 0.1
    flatrob bound example:digits-cnn --epsilon 0.1 --check
    """
    given = {
        "kappa": kappa, "lipschitz": lipschitz, "r": r, "classes": classes, "features": features,
        "grad": grad, "epsilon": epsilon,
    }
    if checkpoint is not None and from_json is not None:
        raise UsageError("give either a checkpoint or --from-json, not both")
    if grad is not None and at_minimum:
        raise UsageError("--grad and --at-minimum contradict each other (--at-minimum sets g = 0); drop one")
    if epsilon is None:
        raise UsageError("--epsilon is required: the allowed loss increase, e.g. --epsilon 0.1 (or a list 0.01,0.1,1)")
    if checkpoint is None:
        model_only = {
            "--check": check, "--check-steps": check_steps is not None,
            "--local-iters": local_iters is not None, "--spec": spec, "--arch": arch,
            "--layer": layer, "--data": data, "--split": split, "--limit": limit is not None,
            "--batch-size": batch_size is not None, "--per-sample": per_sample,
        }
        used = [k for k, v in model_only.items() if v]
        if used:
            raise UsageError(f"{', '.join(used)} need{'s' if len(used) == 1 else ''} a checkpoint to measure; "
                             "give one, e.g. flatrob bound example:digits-cnn --epsilon 0.1")
        if from_json is not None:
            _from_json(from_json, given, at_minimum, format, output, quiet)
        else:
            _numbers(given, at_minimum, format, output)
        return
    conflicting = [f"--{k}" for k in (*_MEASURED, "grad") if given[k] is not None]
    if conflicting:
        raise UsageError(
            f"{', '.join(conflicting)} cannot be combined with a checkpoint, which measures "
            f"{'them' if len(conflicting) > 1 else 'it'}; drop {'them' if len(conflicting) > 1 else 'it'} "
            "or leave out the checkpoint for numbers-only mode"
        )
    _checkpoint(
        checkpoint, epsilon=epsilon, lipschitz=lipschitz, at_minimum=at_minimum, check=check, check_steps=check_steps,
        local_iters=50 if local_iters is None else local_iters,
        spec=spec, arch=arch, layer=layer, data=data, split=split or "test", limit=limit,
        batch_size=256 if batch_size is None else batch_size, device=device, seed=seed, per_sample=per_sample,
        format=format, output=output, quiet=quiet,
    )


def _lipschitz_numbers(text: str | None, mode: str) -> list[float]:
    if text is None:
        raise UsageError(f"{mode} needs --lipschitz VALUE (the Lipschitz constant of phi); "
                         "upper/local need a checkpoint")
    if text.strip() in ("upper", "local"):
        raise UsageError(f"--lipschitz {text.strip()} needs a checkpoint to compute L from; "
                         "give a checkpoint or a number")
    return parse_list("lipschitz", text)


def _numbers(given: dict, at_minimum: bool, format, output) -> None:
    missing = [f"--{k}" for k in ("kappa", "lipschitz", "r", "classes", "features") if given[k] is None]
    if missing:
        raise UsageError(
            f"numbers-only mode needs {', '.join(missing)} (missing); "
            "or give a checkpoint to measure them, or --from-json FILE"
        )
    values = {k: parse_list(k, given[k]) for k in _NUMBER_OPTIONS if k != "lipschitz" and given[k] is not None}
    values["lipschitz"] = _lipschitz_numbers(given["lipschitz"], "numbers-only mode")
    values["grad"] = [0.0] if at_minimum or given["grad"] is None else values["grad"]
    rows = number_rows(values)
    config = {
        "mode": "numbers",
        "weight_norm": "squared",
        "at_minimum": at_minimum,
        "lipschitz_kind": "given",
        "grid": "cartesian product of the list options",
        "versions": _versions(),
    }
    _write_rows(rows, config, format, output)


def _from_json(source: str, given: dict, at_minimum: bool, format, output, quiet: bool) -> None:
    conflicting = [f"--{k}" for k in _MEASURED if given[k] is not None]
    if conflicting:
        raise UsageError(f"--from-json takes kappa, r, classes and features from the JSON; drop {', '.join(conflicting)}")
    epsilons = parse_list("epsilon", given["epsilon"])
    lips = _lipschitz_numbers(given["lipschitz"], "--from-json")
    grads = parse_list("grad", given["grad"])
    doc, name = read_sharpness_json(source)
    v, provenance = values_from_sharpness(doc, name)
    if at_minimum:
        grads, grad_from = [0.0], "0 (--at-minimum)"
    elif grads is not None:
        grad_from = "--grad"
    else:
        # The norm of the mean gradient is not in the sharpness JSON; the mean of the per-sample norms
        # bounds it from above (triangle inequality), so the radius stays on the safe side.
        grads = [v["weight_norm"] * v["grad_norm_mean"]]
        grad_from = "summary.weight_norm * summary.grad_norm.mean (bounds ||W||_F ||mean gradient||_F from above)"
    if provenance["source_weight_norm"] == "plain":
        common.note("note: the JSON was made with --weight-norm plain; kappa converted to the squared convention "
                    "(times ||W||_F) that the bound uses", quiet)
    values = {
        "kappa": [v["kappa"]], "r": [v["r"]], "classes": [v["classes"]], "features": [v["features"]],
        "lipschitz": lips, "grad": grads, "epsilon": epsilons,
    }
    rows = number_rows(values)
    config = {
        "mode": "from-json",
        **provenance,
        "grad_from": grad_from,
        "weight_norm": "squared",
        "at_minimum": at_minimum,
        "lipschitz_kind": "given",
        "grid": "cartesian product of the list options",
        "versions": _versions(),
    }
    _write_rows(rows, config, format, output)


def _write_rows(rows: list[dict], config: dict, format, output) -> None:
    with common.writer(format, output, command="bound", per_sample=False, render_table=render_numbers) as out:
        out.rows(rows)
        out.finish(config, {"radii": rows})


def _checkpoint(
    checkpoint: str, *, epsilon: str, lipschitz: str | None, at_minimum: bool, check: bool, check_steps: int | None,
    local_iters: int,
    spec, arch, layer, data, split: str, limit, batch_size: int, device: str, seed: int, per_sample: bool,
    format, output, quiet: bool,
) -> None:
    epsilons = parse_list("epsilon", epsilon)
    lip_text = (lipschitz or "upper").strip()
    if lip_text in ("upper", "local"):
        lip_value: str | float = lip_text
    else:
        lips = parse_list("lipschitz", lip_text)
        if len(lips) != 1:
            raise UsageError("with a checkpoint --lipschitz takes one value (a number, upper or local), not a list")
        lip_value = lips[0]
    steps = 20 if check_steps is None else check_steps
    if check and steps < 1:
        raise UsageError(f"--check-steps must be at least 1, got {steps}")
    if check_steps is not None and not check:
        raise UsageError("--check-steps needs --check")
    common.check_common(limit=limit, batch_size=batch_size, output=output)

    import torch

    from flatcli.certify import BoundSettings, measure_bound

    settings = BoundSettings(
        epsilons=tuple(epsilons), lipschitz=lip_value, at_minimum=at_minimum, batch_size=batch_size,
        check_steps=steps if check else 0, local_iters=local_iters, seed=seed,
    )
    torch.manual_seed(seed)
    loaded, dev = common.load(checkpoint, spec=spec, arch=arch, layer=layer, device=device)
    ds = common.load_data_for(loaded, data, split, limit)
    config = {
        **common.base_config(loaded, ds, device=dev, seed=seed, batch_size=batch_size, split=split, limit=limit),
        "mode": "checkpoint",
        "weight_norm": "squared",
        "at_minimum": at_minimum,
        "lipschitz": lip_value,
        "lipschitz_kind": settings.lipschitz_kind,
        "epsilons": list(epsilons),
        "grad_dataset": "||W||_F * ||mean of per-sample grad_W loss||_F" if not at_minimum else "0 (--at-minimum)",
        "check_steps": settings.check_steps,
        "check_step_factor": settings.check_step_factor,
        "local_iters": settings.local_iters,
    }
    dist = common.distributed(dev)
    with common.writer(
        format, output, command="bound", per_sample=per_sample, render_table=render_checkpoint, enabled=dist.is_main
    ) as out:
        with common.progress_bar(len(ds), "bound", quiet or not dist.is_main) as progress:
            summary = measure_bound(loaded, ds, settings, device=dev, on_rows=out.rows, progress=progress, dist=dist)
        out.finish(config, summary)
    if dist.is_main:
        _report_check(summary, quiet)


def _report_check(summary: dict, quiet: bool) -> None:
    """A violated bound is printed loudly on stderr (even with --quiet); a passed check is a note."""
    chk = summary.get("check")
    if not chk:
        return
    worst = max(chk["per_epsilon"], key=lambda p: p["max_increase_over_epsilon"])
    if chk["violations"]:
        lip = summary["lipschitz"]
        what = "a sound upper bound on L" if lip["certificate"] else f"a {lip['kind']} L (not a certificate)"
        print(
            f"BOUND VIOLATED: {chk['violations']} sample(s) lost more than epsilon inside their certified radius "
            f"with {what} (largest increase {worst['max_loss_increase']:.4g} at epsilon {worst['epsilon']:.4g}, "
            f"sample {worst['worst_index']})",
            file=sys.stderr,
        )
        for item in chk["broken_assumptions"]:
            print(f"  broken assumption: {item}", file=sys.stderr)
        print(f"  {'also: ' if chk['broken_assumptions'] else 'no measured assumption is broken; '}{chk['caveat']}", file=sys.stderr)
    else:
        common.note(
            f"check: no sample's loss rose by more than epsilon inside its certified radius "
            f"(largest increase {worst['max_loss_increase']:.3g} = {worst['max_increase_over_epsilon']:.3g} x epsilon)",
            quiet,
        )
