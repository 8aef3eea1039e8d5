"""``flatrob bound`` without a checkpoint: the radius of Prop. 8/9 from numbers, or from sharpness JSON.

Numbers-only mode must answer fast in shell loops: this module imports numpy and
:mod:`flatcli.core.radius`, never torch (``tests/cli/test_bound.py`` checks it). Every list option
gives one row per combination (cartesian product). From ``flatrob sharpness --format json`` output,
kappa, r, k, m and the gradient bound are read from the document, in the squared convention the bound
uses (a ``--weight-norm plain`` document is converted exactly, times ``||W||_F``).
"""

from __future__ import annotations

import itertools
import json
import math
import platform

from flatcli import __version__
from flatcli.core.radius import RANGES
from flatcli.errors import OptionError, UsageError
from flatcli.inputs.text import read_text
from flatcli.outputs.plan import plan_inputs
from flatcli.runs.result import Result

#: Keys of each row of numbers-only / --from-json output (``summary.radii[*]``, jsonl, csv).
NUMBER_ROW_KEYS = (
    "kappa", "lipschitz", "r", "classes", "features", "grad", "epsilon",
    "delta", "saturation", "feature_step", "first_order", "second_order", "third_order",
)
#: The options of the grid, in the order the cartesian product runs through them.
NUMBER_OPTIONS = ("kappa", "lipschitz", "r", "classes", "features", "grad", "epsilon")
#: What a checkpoint or a sharpness document measures (so they cannot also be given as numbers).
MEASURED = ("kappa", "r", "classes", "features")
#: The most rows one call may ask for.
MAX_ROWS = 1_000_000
#: The largest sharpness document ``--from-json`` reads (``--per-sample`` output of 100,000 samples fits).
MAX_JSON_BYTES = 64 * 1024 * 1024


def parse_list(name: str, text: str | None) -> list[float] | None:
    """``"0.01,0.1,1"`` -> ``[0.01, 0.1, 1.0]`` for option ``--name``, each in :data:`RANGES`; ``None`` stays."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise OptionError(name, f"{{}} needs a number or a comma-separated list of numbers, got {text!r}")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise OptionError(name, f"{{}}: {p!r} is not a number") from None
        values.append(checked_number(name, v, p))
    return values


def checked_number(name: str, value: float, shown, where: str | None = None) -> float | int:
    """``value`` if it is finite and in :data:`RANGES` ``[name]`` (whole numbers as ``int``); else one
    :class:`OptionError` naming the option, or ``where`` in the ``from_json`` document it was read from."""
    what, holds, _ = RANGES[name]
    if not math.isfinite(value) or not holds(value):
        if where is None:
            raise OptionError(name, f"{{}} must be {what}, got {shown}")
        raise OptionError("from_json", f"{{}}: {where} must be {what}, got {shown}")
    return int(value) if name in ("classes", "features") else value


def versions() -> dict:
    """The versions of a numbers-only result (no torch is imported here)."""
    import numpy

    return {"flatrob": __version__, "numpy": numpy.__version__, "python": platform.python_version()}


def number_rows(values: dict[str, list[float]]) -> list[dict]:
    """One row per combination of the list options (cartesian product, in :data:`NUMBER_OPTIONS` order)."""
    import numpy as np

    from flatcli.core.radius import certified_radius

    grid = list(itertools.product(*(values[k] for k in NUMBER_OPTIONS)))
    if len(grid) > MAX_ROWS:
        raise UsageError(f"the lists give {len(grid)} combinations; at most {MAX_ROWS}")
    cols = {k: np.array([g[i] for g in grid], dtype=np.float64) for i, k in enumerate(NUMBER_OPTIONS)}
    rad = certified_radius(
        kappa=cols["kappa"], lipschitz=cols["lipschitz"], r=cols["r"], classes=cols["classes"],
        features=cols["features"], epsilon=cols["epsilon"], grad=cols["grad"],
    )
    out = {k: [g[i] for g in grid] for i, k in enumerate(NUMBER_OPTIONS)}
    for k in ("delta", "saturation", "feature_step", "first_order", "second_order", "third_order"):
        out[k] = np.atleast_1d(getattr(rad, k)).tolist()
    return [{k: out[k][j] for k in NUMBER_ROW_KEYS} for j in range(len(grid))]


def lipschitz_numbers(text: str | None, mode: str) -> list[float]:
    """``lipschitz`` as numbers (``upper``/``local`` need a checkpoint to compute L from)."""
    if text is None:
        raise OptionError("lipschitz", f"{mode} needs {{}} VALUE (the Lipschitz constant of phi); upper/local need "
                          "a checkpoint")
    if text.strip() in ("upper", "local"):
        raise OptionError("lipschitz", f"{{}} {text.strip()} needs a checkpoint to compute L from; give a checkpoint "
                          "or a number")
    return parse_list("lipschitz", text)


def check_options(*, epsilon, grad, at_minimum: bool) -> None:
    """What every mode of the bound refuses: no epsilon, or a gradient term with ``--at-minimum``."""
    if grad is not None and at_minimum:
        raise OptionError(("grad", "at_minimum", "at_minimum"), "{} and {} contradict each other ({} sets g = 0); "
                          "drop one")
    if epsilon is None:
        raise OptionError("epsilon", "{} is required: the allowed loss increase, e.g. 0.1 (or a list 0.01,0.1,1)")


def radius(given: dict[str, str | None], *, from_json: str | None = None, at_minimum: bool = False,
           model_options: list[str] | None = None) -> Result:
    """The bound without a model: from the numbers ``given`` (option name -> text, ``None`` when unset) or
    from the sharpness document at ``from_json``. ``model_options`` names the options given that need a model
    to measure; any of them is refused."""
    check_options(epsilon=given.get("epsilon"), grad=given.get("grad"), at_minimum=at_minimum)
    used = list(model_options or ())
    if used:
        raise OptionError(tuple(used), ", ".join("{}" for _ in used) + f" need{'s' if len(used) == 1 else ''} a "
                          "checkpoint to measure; give one, e.g. flatrob bound example:digits-cnn --epsilon 0.1")
    if from_json is not None:
        return from_sharpness_json(from_json, given, at_minimum=at_minimum)
    return from_numbers(given, at_minimum=at_minimum)


def from_numbers(given: dict[str, str | None], *, at_minimum: bool = False) -> Result:
    """The radius for every combination of the numbers ``given`` (option name -> text, ``None`` when unset)."""
    missing = [k for k in ("kappa", "lipschitz", "r", "classes", "features") if given.get(k) is None]
    if missing:
        raise OptionError((*missing, "from_json"), "numbers-only mode needs " + ", ".join("{}" for _ in missing) +
                          " (missing); or give a checkpoint to measure them, or {} FILE")
    values = {k: parse_list(k, given[k]) for k in NUMBER_OPTIONS if k != "lipschitz" and given.get(k) is not None}
    values["lipschitz"] = lipschitz_numbers(given["lipschitz"], "numbers-only mode")
    values["grad"] = [0.0] if at_minimum or given.get("grad") is None else values["grad"]
    rows = number_rows(values)
    config = {
        "mode": "numbers",
        "weight_norm": "squared",
        "at_minimum": at_minimum,
        "lipschitz_kind": "given",
        "grid": "cartesian product of the list options",
        "versions": versions(),
    }
    return Result("bound", config, {"radii": rows}, rows)


def read_sharpness_json(source: str) -> tuple[dict, str]:
    """The ``flatrob sharpness --format json`` document at ``source`` (``-``: stdin) and its name.

    At most :data:`MAX_JSON_BYTES` are read, whatever the file is (``/dev/zero`` too)."""
    name = "stdin" if source == "-" else source
    plan_inputs(from_json=source)
    text = read_text(source, limit=MAX_JSON_BYTES, what="sharpness JSON file", error=UsageError)
    if not text.strip():
        raise OptionError("from_json", f"{{}}: {name} is empty; pipe in `flatrob sharpness ... --format json`")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError("from_json", f"{{}}: {name} is not JSON ({exc.msg} at line {exc.lineno}); use `flatrob "
                          "sharpness ... --format json` (not jsonl/csv/table)") from None
    except RecursionError:
        raise OptionError("from_json", f"{{}}: {name} is not sharpness JSON (nested too deeply to read)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise OptionError("from_json", f"{{}}: {name} is not sharpness JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("command") != "sharpness":
        got = doc.get("command") if isinstance(doc, dict) else type(doc).__name__
        raise OptionError("from_json", f"{{}}: {name} is not `flatrob sharpness --format json` output (command: "
                          f"{got!r})")
    return doc, name


def values_from_sharpness(doc: dict, name: str) -> tuple[dict, dict]:
    """kappa, r, k, m, ||W||_F, mean gradient norm from a sharpness document, and provenance.

    The bound uses the squared convention ``kappa = ||W||_F^2 Tr(H)``. A document made with
    ``--weight-norm plain`` holds ``||W||_F Tr(H)``; it is converted exactly by multiplying by
    ``||W||_F`` (``summary.weight_norm``), and the config says so.
    """
    summary, config = doc.get("summary") or {}, doc.get("config") or {}
    if not isinstance(summary, dict) or not isinstance(config, dict):
        raise OptionError("from_json", f"{{}}: {name}: summary and config must be JSON objects; is it "
                          "`flatrob sharpness --format json` output?")

    def get(name_in_range: str, *path):
        """``summary.<path>``: a JSON number (not a boolean), checked as the option ``name_in_range`` is."""
        node = summary
        for p in path:
            if not isinstance(node, dict) or p not in node or node[p] is None:
                raise OptionError("from_json", f"{{}}: {name} lacks summary.{'.'.join(path)}; is it `flatrob sharpness "
                                  "--format json` output of this version?")
            node = node[p]
        where = f"{name}: summary.{'.'.join(path)}"
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise OptionError("from_json", f"{{}}: {where} must be a number, got {json.dumps(node)[:40]}")
        try:
            value = float(node)
        except OverflowError:
            raise OptionError("from_json", f"{{}}: {where} is too large a number ({str(node)[:20]}...)") from None
        return checked_number(name_in_range, value, json.dumps(node)[:40], where)

    convention = config.get("weight_norm", "squared")
    if convention not in ("squared", "plain"):
        raise OptionError("from_json", f"{{}}: {name} has unknown config.weight_norm {json.dumps(convention)[:40]}")
    kappa = get("kappa", "relative_sharpness", "mean")
    wn = get("kappa", "weight_norm")  # a norm: >= 0, finite
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
        kappa = checked_number("kappa", kappa * wn, kappa * wn, f"{name}: kappa (converted to squared)")
        provenance["kappa_from"] += " * summary.weight_norm (converted from --weight-norm plain to squared)"
    values = {
        "kappa": kappa,
        "r": get("r", "feature_norm_min"),
        "classes": get("classes", "classes"),
        "features": get("features", "features"),
        "weight_norm": wn,
        "grad_norm_mean": get("grad", "grad_norm", "mean"),
    }
    return values, provenance


def from_sharpness_json(source: str, given: dict[str, str | None], *, at_minimum: bool = False) -> Result:
    """The radius from a sharpness document at ``source`` (``-``: stdin), for the given L, epsilon (and g)."""
    conflicting = [k for k in MEASURED if given.get(k) is not None]
    if conflicting:
        raise OptionError(("from_json", *conflicting), "{} takes kappa, r, classes and features from the JSON; drop " +
                          ", ".join("{}" for _ in conflicting))
    epsilons = parse_list("epsilon", given["epsilon"])
    lips = lipschitz_numbers(given.get("lipschitz"), "the sharpness JSON mode")
    grads = parse_list("grad", given.get("grad"))
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
    notes = []
    if provenance["source_weight_norm"] == "plain":
        notes.append("note: the JSON was made with --weight-norm plain; kappa converted to the squared convention "
                     "(times ||W||_F) that the bound uses")
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
        "versions": versions(),
    }
    return Result("bound", config, {"radii": rows}, rows, notes=notes)
