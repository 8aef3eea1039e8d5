"""Many checkpoints in one call: the list, the loop over it, and the combined result.

``flatrob sharpness a.safetensors b.safetensors ...`` (or ``--checkpoints-from FILE|-``) and
``flatcli.api.sharpness([a, b], data)`` run the one-checkpoint command once per checkpoint, in order, in
one process (:func:`each_checkpoint`):

* the data set is built once and reused (:func:`shared`: the first checkpoint's ``DataSource``);
* each checkpoint is loaded, measured and released before the next (a ``gc`` pass if its model outlived
  the call, then on CUDA the allocator's cache: :func:`flatcli.runtime.device.release_memory`), so memory is
  bounded by one model;
* its rows get a ``checkpoint`` column and are held in a temporary file until it has finished, so a
  checkpoint that fails half-way leaves none of its rows in the output;
* a checkpoint that fails is reported (``on_error``) and the others still run; with ``fail_fast`` the first
  failure ends the call and nothing is written (no row reaches the output before every checkpoint has
  finished). A :class:`~flatcli.errors.UsageError` (options that are
  wrong, or out of range) ends the call at once, as it would for one checkpoint;
* outputs written per checkpoint (``--trajectory``, ``--save-adv``, ``--save``) name a template with
  ``{stem}`` (the file name without its suffix) or ``{index}`` (the position in the list, from 0, zero-padded);
  every name is made and checked before any work. ``--plot FILE`` draws the summary measures against the
  checkpoint order (:func:`trend`) and each checkpoint's curves overlaid (:func:`curve_series`); the table and
  the figure name the checkpoints by :func:`short_names`. ``--resume DIR`` keeps each checkpoint's batches in
  ``DIR/<sha256[:16]>`` (the sha256 of its weights, a hub checkpoint's too); ``DIR`` is checked as an output
  (no input, not inside an input folder, holding nothing but such stores) before any work, and an
  interruption names ``DIR``;
* every file the call reads (each checkpoint, a hub checkpoint's cached files, the ``--checkpoints-from``
  list, the ``--data`` file) is an input of the output plan before any work (:func:`plan_checkpoints`); a
  device or named pipe among the checkpoints is never read to hash it.

What a call with failures writes: the results of the checkpoints that succeeded (rows, summaries, files),
committed together at the end; the failed ones appear in ``summaries`` with their ``error``. When every
checkpoint failed, nothing is written.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
import stat
import tempfile
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flatcli.errors import CheckpointFailed, FlatrobError, Interrupted, UsageError
from flatcli.inputs.text import read_text
from flatcli.outputs.plan import check_outputs, output_plan, plan_inputs
from flatcli.runtime.resume import refusal
from flatcli.outputs.writer import document, jsonable
from flatcli.runs.result import OnRows, Result

#: The largest ``--checkpoints-from`` list read (about 100,000 paths).
MAX_LIST_BYTES = 16 * 1024 * 1024
#: Outputs written once per checkpoint: their names must hold ``{stem}`` or ``{index}``.
PER_CHECKPOINT = ("trajectory", "save_adv", "save")
_FIELD = re.compile(r"\{(stem|index)\}")
#: The name of one checkpoint's store inside a several-checkpoint ``--resume`` directory.
_STORE = re.compile(r"[0-9a-f]{16}|unreadable")
#: Rows replayed from a checkpoint's temporary file per call of ``on_rows``.
_REPLAY = 1024

_shared: ContextVar[dict | None] = ContextVar("flatrob_shared_inputs", default=None)
_models: ContextVar[list | None] = ContextVar("flatrob_checkpoint_models", default=None)


def is_many(models: Any, checkpoints_from: str | None) -> bool:
    """Whether a call measures a list of checkpoints (a list or tuple, or ``--checkpoints-from``)."""
    return checkpoints_from is not None or isinstance(models, (list, tuple))


def checkpoint_list(models: Any, checkpoints_from: str | None) -> list[str]:
    """The checkpoints, in order: ``models`` (a list of paths or ``example:NAME``), then the lines of
    ``checkpoints_from`` (a file, ``-`` for stdin; blank lines and ``#`` comments skipped)."""
    listed = [] if models is None else list(models) if isinstance(models, (list, tuple)) else [models]
    for m in listed:
        if not (isinstance(m, str) or hasattr(m, "__fspath__")):
            raise UsageError(f"a list of models must hold checkpoint paths or example:NAME, got {type(m).__name__}; "
                             "measure an nn.Module with its own call")
    paths = [os.fspath(m) for m in listed]
    if checkpoints_from is not None:
        text = read_text(checkpoints_from, limit=MAX_LIST_BYTES, what="--checkpoints-from list", error=UsageError)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(line)
    if not paths:
        where = f" ({checkpoints_from} lists none)" if checkpoints_from is not None else ""
        raise UsageError(f"no checkpoint given{where}; name one or more, or --checkpoints-from FILE")
    return paths


def file_sha256(*paths: str | os.PathLike) -> str | None:
    """The sha256 of the checkpoint files ``paths`` read one after the other (a sharded model's shards), ``None``
    if one is no regular file or cannot be read (a device or a named pipe is never read: it is refused when its
    turn comes, as it is alone)."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def plan_checkpoints(checkpoints: list[str], kwargs: dict, checkpoints_from: str | None) -> list[str | None]:
    """Every file the call reads, named as an input of the output plan before any work (each checkpoint, a hub
    checkpoint's cached files, the ``--checkpoints-from`` list, the ``--data`` file or folder); the sha256 of
    each checkpoint's weights (``None`` where they cannot be found: that checkpoint fails in its turn)."""
    from flatcli.inputs.checkpoint import locate
    from flatcli.inputs.data import FILE_FORMS

    plan_inputs(checkpoints_from=checkpoints_from)
    for role in ("data", "fit_data"):
        kind, _, path = kwargs[role].strip().partition(":") if isinstance(kwargs.get(role), str) else ("", "", "")
        if kind in FILE_FORMS and path:
            plan_inputs(**{role: path})
    from flatcli.models.kinds.hf_folder import is_causal_lm_folder, resolve, weight_files

    digests = []
    for ref in checkpoints:
        if is_causal_lm_folder(ref):  # a language model's folder: config, weights (maybe sharded), tokenizer
            plan_inputs(checkpoint=resolve(ref))
            files = weight_files(ref)
            digests.append(file_sha256(*files) if files else None)
            continue
        try:
            weights, config = locate(ref)
        except FlatrobError:
            digests.append(None)
            continue
        plan_inputs(checkpoint=weights, hub_config=config)
        digests.append(file_sha256(weights))
    return digests


def resume_parent(resume: str) -> None:
    """Check (then create) the ``--resume`` directory of several checkpoints, which holds one store per
    checkpoint (``<sha256[:16]>/``): no input, nor inside an input folder, and holding nothing else."""
    from flatcli.outputs.plan import check_output_directory

    check_output_directory("resume", resume)
    top = Path(resume).expanduser()
    if top.is_dir():
        other = sorted(e.name for e in top.iterdir() if not (_STORE.fullmatch(e.name) and e.is_dir()
                                                            and not e.is_symlink()))
        if other:
            raise refusal(resume, f" holds {other[0]}, which is not a checkpoint's store (<sha256[:16]>/): "
                             "it is not a flatrob resume directory; name a new or empty directory")
    elif top.exists() or top.is_symlink():
        raise refusal(resume, " is a file; name a directory (it is created if missing)")
    elif not top.parent.is_dir():
        raise refusal(resume, f": directory {top.parent} does not exist; create it first")
    else:
        top.mkdir()


def per_checkpoint_names(option: str, template: str, checkpoints: list[str]) -> list[str]:
    """``template`` with ``{stem}`` and ``{index}`` filled in for every checkpoint; refused without either
    field, or when two checkpoints would write the same file."""
    flag = "--" + option.replace("_", "-")
    if not _FIELD.search(template):
        raise UsageError(f"{flag} {template} would be written once per checkpoint; put {{stem}} or {{index}} in the "
                         f"name (e.g. {flag} out-{{stem}}{Path(template).suffix})")
    width = len(str(len(checkpoints) - 1))
    names = []
    for i, ref in enumerate(checkpoints):
        fields = {"stem": Path(ref.split(":", 1)[1] if ref.startswith("example:") else ref).stem,
                  "index": str(i).zfill(width)}
        names.append(_FIELD.sub(lambda m: fields[m.group(1)], template))
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise UsageError(f"{flag} {template} gives {name} for both {checkpoints[seen[name]]} and {checkpoints[i]}; "
                             "use {index} in the name")
        seen[name] = i
    return names


def shared(key: tuple, factory: Callable[[], Any]) -> Any:
    """``factory()``, built once per many-checkpoint call for each ``key`` (the data set is read once)."""
    cache = _shared.get()
    if cache is None:
        return factory()
    if key not in cache:
        cache[key] = factory()
    return cache[key]


def track(model: Any) -> None:
    """Note a model loaded inside a many-checkpoint call, to make sure it is gone before the next is loaded."""
    refs = _models.get()
    if refs is not None:
        refs.append(weakref.ref(model))


def _release(refs: list) -> None:
    """Free the last checkpoint's model: reference counting usually has; a model kept alive by a reference
    cycle is collected (a full ``gc`` pass costs 0.1-0.5 s, so only then); then the CUDA cache is emptied."""
    from flatcli.runtime.device import release_memory

    if any(ref() is not None for ref in refs):
        gc.collect()
    refs.clear()
    release_memory()


@dataclass
class CheckpointRun:
    """One checkpoint of a many-checkpoint call: its place, file hash, and result or error."""

    index: int
    checkpoint: str
    sha256: str | None
    result: Result | None = None
    error: str | None = None
    exit_code: int = 0

    def entry(self) -> dict:
        """Its element of ``summaries``: the one-checkpoint ``config`` and ``summary``, or the ``error``."""
        ok = self.result is not None
        return {"index": self.index, "checkpoint": self.checkpoint, "sha256": self.sha256, "error": self.error,
                "config": self.result.config if ok else None, "summary": self.result.summary if ok else None}


@dataclass
class ManyResult:
    """The result of one command on many checkpoints: one :class:`CheckpointRun` each, in order.

    ``summaries`` has one entry per checkpoint (``index, checkpoint, sha256, error, config, summary``);
    ``results`` the per-checkpoint :class:`Result` objects (``None`` where it failed); ``samples`` every kept
    row with its ``checkpoint`` column; ``errors`` maps each failed checkpoint to its message.
    """

    command: str
    config: dict
    runs: list[CheckpointRun]
    notes: list[str]

    @property
    def summaries(self) -> list[dict]:
        return [run.entry() for run in self.runs]

    @property
    def results(self) -> list[Result | None]:
        return [run.result for run in self.runs]

    @property
    def errors(self) -> dict[str, str]:
        return {run.checkpoint: run.error for run in self.runs if run.error is not None}

    @property
    def exit_code(self) -> int:
        """0 when every checkpoint succeeded; else the largest failure's (2: bad input; 1: all unexpected)."""
        return max((run.exit_code for run in self.runs), default=0)

    @property
    def samples(self) -> list[dict] | None:
        kept = [(run.checkpoint, run.result.samples) for run in self.runs
                if run.result is not None and run.result.samples is not None]
        if not kept:
            return None
        return [{"checkpoint": name, **row} for name, rows in kept for row in rows]

    def to_dict(self) -> dict:
        """The ``--format json`` document: ``summaries`` instead of ``summary`` (``samples`` when kept)."""
        return document(self.command, self.config, None, self.samples, summaries=self.summaries)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


class _Spool:
    """A checkpoint's rows, with its ``checkpoint`` column, in a temporary file until it has finished."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.file = tempfile.TemporaryFile("w+", encoding="utf-8")

    def __call__(self, rows: list[dict]) -> None:
        self.file.write("".join(json.dumps(jsonable({"checkpoint": self.checkpoint, **r})) + "\n" for r in rows))

    def replay(self, on_rows: OnRows) -> None:
        self.file.seek(0)
        chunk = []
        for line in self.file:
            chunk.append(json.loads(line))
            if len(chunk) == _REPLAY:
                on_rows(chunk)
                chunk = []
        if chunk:
            on_rows(chunk)

    def close(self) -> None:
        self.file.close()


def each_checkpoint(command: str, call: Callable[..., Result], checkpoints: list[str], *, kwargs: dict,
                    checkpoints_from: str | None = None, fail_fast: bool = False, plot: str | None = None,
                    on_error: Callable[[str, str], None] | None = None) -> ManyResult:
    """``call(checkpoint, **kwargs)`` for every checkpoint in turn, as the module docstring describes.

    ``kwargs`` are the one-checkpoint keyword arguments: per-checkpoint outputs are templates here,
    ``resume`` the parent directory, ``on_rows`` the consumer of every row (with its ``checkpoint`` column).
    ``on_error(checkpoint, message)`` hears of each failure as it happens.
    """
    from flatcli.runtime.resume import hint_for

    stdin = [role for role in ("data", "fit_data") if kwargs.get(role) == "tensors:-"]
    if checkpoints_from == "-" and stdin:
        raise UsageError(f"--checkpoints-from - and --{stdin[0].replace('_', '-')} tensors:- both read stdin; "
                         "save one of them to a file")
    names = {opt: per_checkpoint_names(opt, kwargs[opt], checkpoints) for opt in PER_CHECKPOINT
             if kwargs.get(opt) is not None and kwargs[opt] != "-"}
    if plot is not None:
        from flatcli.outputs.figures import check_plot_path, require_matplotlib

        check_plot_path(plot)
        require_matplotlib()
    check_outputs(plot=plot, **names)
    digests = plan_checkpoints(checkpoints, kwargs, checkpoints_from)  # no output may be an input: before any work
    resume = kwargs.get("resume")
    if resume is not None:
        resume_parent(resume)
    on_rows = kwargs.get("on_rows")
    runs: list[CheckpointRun] = []
    held: list[_Spool] = []  # with fail_fast, every checkpoint's rows until all have finished
    token, refs = _shared.set({}), []
    models_token = _models.set(refs)
    try:
        with output_plan() as plan:
            for i, ref in enumerate(checkpoints):
                run = CheckpointRun(i, ref, digests[i])
                runs.append(run)
                args = dict(kwargs, **{opt: paths[i] for opt, paths in names.items()})
                if resume is not None:
                    args["resume"] = os.path.join(resume, (run.sha256 or "unreadable")[:16])
                spool = _Spool(ref) if on_rows is not None else None
                args["on_rows"] = spool
                staged = len(plan.staged)
                try:
                    run.result = call(ref, **args)
                except Interrupted as e:  # the line names the directory given, not this checkpoint's store in it
                    if resume is None:
                        raise
                    raise Interrupted(e.signum, str(e).replace(hint_for(args["resume"]), hint_for(resume))) from None
                except UsageError:
                    raise  # the options are wrong, for every checkpoint: the run ends as one checkpoint's would
                except Exception as e:  # noqa: BLE001 - one checkpoint's failure must not end the others
                    if not isinstance(e, FlatrobError) and os.environ.get("FLATROB_DEBUG") == "1":
                        raise  # debugging: the unexpected failure ends the run, with its traceback
                    run.exit_code, message = (e.exit_code, str(e)) if isinstance(e, FlatrobError) else \
                        (1, f"unexpected failure: {type(e).__name__}: {e} (FLATROB_DEBUG=1 shows a traceback)")
                    run.error = _named_once(ref, " ".join(message.split()))
                    for tmp, _ in plan.staged[staged:]:  # its own files never reach the output
                        plan.unstage(tmp)
                    if fail_fast:
                        raise CheckpointFailed(f"{ref}: {run.error}", run.exit_code) from e
                    if on_error is not None:
                        on_error(ref, run.error)
                else:
                    if spool is not None:
                        held.append(spool)
                        spool = None
                finally:
                    if spool is not None:
                        spool.close()
                    _release(refs)
                if not fail_fast:  # else nothing reaches the output until every checkpoint has succeeded
                    _replay(held, on_rows)
            _replay(held, on_rows)
            if all(run.result is None for run in runs):
                raise CheckpointFailed(f"all {len(runs)} checkpoints failed; nothing was written",
                                       max(run.exit_code for run in runs))
            config = {"checkpoints": checkpoints, "checkpoints_from": checkpoints_from, "fail_fast": fail_fast,
                      "failed": sum(run.result is None for run in runs), "resume": resume, "plot": plot}
            notes = [f"{run.checkpoint}: {line}" for run in runs if run.result is not None for line in run.result.notes]
            many = ManyResult(command, config, runs, notes)
            if plot is not None and _is_main():
                from flatcli.outputs.figures.checkpoints import checkpoints_figure

                checkpoints_figure(short_names(checkpoints), trend_series(many), plot, title=f"flatrob {command}",
                                   marks=masking_marks(many), curves=curve_series(many))
    finally:
        for spool in held:
            spool.close()
        _shared.reset(token)
        _models.reset(models_token)
    return many


def _replay(held: list[_Spool], on_rows: OnRows) -> None:
    """Hand the rows of the finished checkpoints in ``held`` to ``on_rows``, in order, and empty it."""
    while held:
        spool = held.pop(0)
        spool.replay(on_rows)
        spool.close()


def _named_once(ref: str, message: str) -> str:
    """``message`` without a leading ``REF: `` (the checkpoint is named by whoever reports it: once)."""
    from flatcli.inputs.checkpoint import resolve

    names = [ref]
    with contextlib.suppress(FlatrobError):
        names.append(os.fspath(resolve(ref)))
    for name in names:
        if message.startswith(f"{name}: "):
            return message[len(name) + 2:]
    return message


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


#: A checkpoint named by a reference, not a file path (``example:NAME``, ``hf-hub:ORG/NAME``).
_REFERENCE = re.compile(r"[a-z][a-z0-9-]*:")


def short_names(checkpoints: list[str]) -> list[str]:
    """The shortest names that still tell the checkpoints apart, for tables and figures (the JSON keeps what was
    given): the path components of the files without the leading and trailing ones every file shares, and
    without the file suffix when all share it; a reference (``example:NAME``, ``hf-hub:ORG/NAME``) stays whole.
    ``runs/a/model.safetensors``, ``runs/b/model.safetensors`` -> ``a``, ``b``; ``ckpt/cnn_seed0.safetensors``,
    ``ckpt/cnn_seed1.safetensors`` -> ``cnn_seed0``, ``cnn_seed1``; one file -> its stem. Nothing is cut inside
    a component, no name is emptied (the same checkpoint listed twice keeps one name), an absolute path left
    whole keeps its leading ``/``, and names that would clash are given whole."""
    files = [i for i, ref in enumerate(checkpoints) if not _REFERENCE.match(ref)]
    parts = {i: [p for j, p in enumerate(checkpoints[i].split("/")) if j == 0 or p not in ("", ".")] for i in files}
    suffixes = {Path(p[-1]).suffix for p in parts.values()}
    if len(suffixes) == 1 and "" not in suffixes and all(Path(p[-1]).stem for p in parts.values()):
        parts = {i: [*p[:-1], Path(p[-1]).stem] for i, p in parts.items()}
    shortest = min((len(p) for p in parts.values()), default=0)
    lead = trail = 0
    while lead < shortest - 1 and len({p[lead] for p in parts.values()}) == 1:
        lead += 1
    while lead + trail < shortest - 1 and len({p[len(p) - 1 - trail] for p in parts.values()}) == 1:
        trail += 1
    if len(parts) == 1:  # one file, nothing to tell it apart from: its own name
        lead, trail = shortest - 1, 0
    names = [("/".join(parts[i][lead:len(parts[i]) - trail]) if i in parts else ref)
             for i, ref in enumerate(checkpoints)]
    return names if len(set(names)) == len(set(checkpoints)) else list(checkpoints)


def _at(summary: dict, path: str):
    value: Any = summary
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


#: The summary measures of each command shown per checkpoint (table columns, figure panels):
#: panel title -> [(column, dotted key in the one-checkpoint summary)].
MEASURES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "sharpness": {
        "accuracy": [("accuracy", "accuracy")],
        "relative sharpness": [("sharpness mean", "relative_sharpness.mean"),
                               ("sharpness median", "relative_sharpness.median")],
    },
    "attack": {
        "accuracy": [("clean accuracy", "clean_accuracy"), ("robust accuracy", "robust_accuracy")],
        "relative sharpness": [("clean sharpness", "clean_sharpness.mean"), ("adv sharpness", "adv_sharpness.mean")],
        "uncanny valley": [("valley fraction", "valley_fraction")],
    },
    "attack gcg": {  # a language model's GCG summary (it holds "prompts"): no labels, no accuracy
        "GCG": [("success rate", "success_rate"), ("initial loss", "initial_loss_mean"),
                ("final loss", "final_loss_mean"), ("valley share", "valley_share")],
    },
    "bound": {
        "accuracy": [("accuracy", "accuracy")],
        "kappa": [("kappa", "kappa")],
        "certified radius": [("delta", "radii.0.delta")],
    },
    "detect": {
        "detector": [("CV accuracy", "accuracy_mean"), ("AUC", "auc"), ("flagged share", "flagged_share")],
    },
}


def trend(command: str, summary: dict) -> dict[str, list[tuple[str, float | None]]]:
    """The summary measures of one checkpoint, by panel: ``{panel: [(column, value), ...]}``."""
    if command == "sweep-scale":
        scales = summary.get("scales") or []
        return {"robust accuracy": [(f"robust s={s['scale']:g}", s.get("robust_accuracy")) for s in scales],
                "sharpness median": [(f"sharpness median s={s['scale']:g}", s.get("sharpness_median")) for s in scales]}
    if command == "attack" and "prompts" in summary:
        command = "attack gcg"
    panels = {}
    for panel, columns in MEASURES.get(command, {}).items():
        values = [(name, _at(_lists_as_dicts(summary), key)) for name, key in columns]
        if any(v is not None for _, v in values):
            panels[panel] = [(n, v) for n, v in values if v is not None]
    return panels


def _lists_as_dicts(value):
    """Lists become dicts keyed by position, so a dotted key can say ``radii.0.delta``."""
    if isinstance(value, dict):
        return {k: _lists_as_dicts(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): _lists_as_dicts(v) for i, v in enumerate(value)}
    return value


def trend_series(many: ManyResult) -> dict[str, dict[str, list[float | None]]]:
    """Every measure against the checkpoint order: ``{panel: {column: [value per checkpoint]}}`` (``None``
    where a checkpoint failed or lacks it)."""
    series: dict[str, dict[str, list]] = {}
    for position, run in enumerate(many.runs):
        if run.result is None:
            continue
        for panel, values in trend(many.command, run.result.summary).items():
            for name, value in values:
                series.setdefault(panel, {}).setdefault(name, [None] * len(many.runs))[position] = value
    return series


def masking_marks(many: ManyResult) -> dict[str, dict[str, list[bool]]]:
    """Where ``sweep-scale`` flags gradient masking, on the robust accuracy of :func:`trend_series`:
    ``{panel: {column: [flag per checkpoint]}}`` (empty for the other commands)."""
    marks: dict[str, dict[str, list[bool]]] = {}
    if many.command != "sweep-scale":
        return marks
    for position, run in enumerate(many.runs):
        for s in (run.result.summary.get("scales") or []) if run.result is not None else []:
            column = marks.setdefault("robust accuracy", {}).setdefault(f"robust s={s['scale']:g}",
                                                                        [False] * len(many.runs))
            column[position] = bool(s.get("masking"))
    return marks


#: The curves of one checkpoint overlaid with the others' by ``--plot`` (panel -> x label, summary key of the
#: per-step list); ``sweep-scale``'s are per scale (:func:`curve_series`).
CURVES: dict[str, dict[str, tuple[str, str]]] = {
    "attack": {"mean loss": ("attack step", "mean_loss_by_step"),
               "mean relative sharpness": ("attack step", "mean_sharpness_by_step")},
}


def curve_series(many: ManyResult) -> dict[str, dict]:
    """Each checkpoint's curves, to overlay: ``{panel: {"x": label, "log_x": bool, "lines": [(index, name, xs, ys,
    masked)]}}`` with one line per checkpoint that succeeded (``index`` its place in the list, ``name`` from
    :func:`short_names`; ``masked`` the points ``sweep-scale`` flags as gradient masking, else ``None``):
    ``attack``'s mean loss and sharpness against the step, ``sweep-scale``'s robust accuracy and median
    sharpness against the scale."""
    names = short_names([run.checkpoint for run in many.runs])
    panels: dict[str, dict] = {}
    for index, (name, run) in enumerate(zip(names, many.runs)):
        if run.result is None:
            continue
        summary = run.result.summary
        if many.command == "sweep-scale":
            scales = sorted(summary.get("scales") or [], key=lambda s: s["scale"])
            xs = [s["scale"] for s in scales]
            lines = {("robust accuracy", "robust_accuracy"): [bool(s.get("masking")) for s in scales],
                     ("sharpness median", "sharpness_median"): None}
            for (panel, key), masked in lines.items():
                ys = [s.get(key) for s in scales]
                if any(y is not None for y in ys):
                    panels.setdefault(panel, {"x": "scale s", "log_x": True, "lines": []})["lines"].append(
                        (index, name, xs, ys, masked))
            continue
        for panel, (label, key) in CURVES.get(many.command, {}).items():
            ys = summary.get(key)
            if isinstance(ys, list) and ys:
                panels.setdefault(panel, {"x": label, "log_x": False, "lines": []})["lines"].append(
                    (index, name, list(range(len(ys))), ys, None))
    return panels
