"""The public Python API: every command as a function, on a checkpoint or an in-memory ``nn.Module``.

    import flatcli.api as fr
    result = fr.sharpness(net, (x, y), mean=[0.5], std=[0.25])    # net: an nn.Module, x in [0, 1]
    result.summary["relative_sharpness"]["mean"]; result.samples[0]; print(result.to_json())

``model`` is an ``nn.Module`` (normalised inside by ``mean``/``std``; the head is ``layer``, or the
network's last ``nn.Linear``), a checkpoint path, ``example:NAME``, or what :func:`load` returned.
``data`` is an ``(x, y)`` pair of tensors (or arrays; x float NCHW in [0, 1], or uint8 pixels 0..255 in NCHW,
NHWC or NHW, divided by 255 as ``npz:`` reads them), a torch ``Dataset`` or
``DataLoader`` yielding ``(x, y)``, a ``--data`` string (``digits``, ``cifar10:ROOT``, ...), or, for a
checkpoint, ``None`` (its spec's data, else digits). Keyword arguments mirror the command-line options
(``--batch-size`` is ``batch_size``); the shared ones may also come as option groups
(:mod:`flatcli.options`: ``fr.attack(net, data, AttackOptions(steps=5), DataOptions(batch_size=64))``), and
an out-of-range one raises :class:`~flatcli.errors.OptionError` naming it (``steps=``). Every function returns a :class:`~flatcli.runs.result.Result`
with ``.summary`` and ``.config`` (the JSON document's), ``.samples`` (the per-sample rows, a list of
dicts; ``samples=False`` keeps none) and ``.to_json()``. The CLI calls these same functions, so both
give the same numbers. ``on_rows`` receives each batch's rows as they are ready and ``progress(done,
total)`` is called after every batch. An in-memory network is moved to ``device`` (``auto``: CUDA when
available); its train/eval mode is restored after each call.

``sharpness``, ``attack``, ``sweep_scale``, ``bound`` and ``detect`` also take a list of checkpoints as ``model``
(or ``checkpoints_from``, a file listing them) and return a :class:`ManyResult`, one summary per checkpoint
(:mod:`flatcli.runs.many`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect as _inspect
import os
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from flatcli.errors import CheckpointError, DataError, OptionError, UsageError
from flatcli.inputs.data import DataSource, check_compatible, load_data
from flatcli.inputs.data.images import resolve_preprocessing
from flatcli.inputs.data.forms import DEFAULT as DEFAULT_DATA
from flatcli.inputs.data.forms import parse as parse_data
from flatcli.inputs.data.source import refuse_resizing
from flatcli.models.loading import LoadedModel, from_module, load_model, pretrained_sizes_note
from flatcli.options import (
    AttackOptions, DataOptions, HeadOptions, PGDOptions, LayerOptions, ModelOptions, RunOptions, ScalingOptions, SpeedOptions,
    TakeoffOptions, WeightNormOptions,
)
from flatcli.options.bound import BoundChecks
from flatcli.options.calls import Chosen, accepts
from flatcli.options.detect import DetectOptions
from flatcli.core.gcg import KIND as GCG_KIND
from flatcli.options.lm import GCGOptions, LanguageModelOptions, PositionOptions, PromptOptions, TokenHeadOptions
from flatcli.options.sweep import SweepOptions
from flatcli.outputs.plan import check_outputs, output_plan, plan_inputs
from flatcli.runs import attack as attack_run
from flatcli.runs import bound as bound_run
from flatcli.runs import bound_numbers
from flatcli.runs import detect as detect_run
from flatcli.runs import inspect as inspect_run
from flatcli.runs import many
from flatcli.runs import sharpness as sharpness_run
from flatcli.runs import sweep as sweep_run
from flatcli.runs.many import ManyResult
from flatcli.runs.result import OnRows, Result
from flatcli.runtime.device import local_device, resolve_device
from flatcli.runtime.distributed import from_environment
from flatcli.runtime.loop import Progress, RunContext

__all__ = ["Result", "ManyResult", "load", "sharpness", "attack", "sweep_scale", "bound", "detect", "inspect", "convert"]

def _one_plan(command):
    """Run ``command`` inside one output plan: its files are checked against its inputs before any work and
    committed together when it returns (none is left if it fails); inside the CLI's plan it joins that one."""
    @functools.wraps(command)
    def planned(*args, **kwargs):
        with output_plan():
            return command(*args, **kwargs)

    return planned


def _each_checkpoint(command):
    """``model`` may also be a list of checkpoints, or ``checkpoints_from`` a file (``-``: stdin) listing them:
    the command runs on each in turn and returns a :class:`ManyResult` (:mod:`flatcli.runs.many`; ``fail_fast``
    stops at the first failure, ``on_error(checkpoint, message)`` hears of each, ``plot`` draws the trend)."""
    name = command.__name__.replace("_", "-")
    has_plot = "plot" in _inspect.signature(command).parameters

    @functools.wraps(command)
    def each(model=None, data=None, *, checkpoints_from=None, fail_fast=False, on_error=None, plot=None, **kwargs):
        if has_plot:
            kwargs["plot"] = plot
        if not many.is_many(model, checkpoints_from):
            if plot is not None and not has_plot:
                raise OptionError("plot", f"{{}} draws the measures of several checkpoints; {name} of one has no figure")
            return command(model, data, **kwargs)
        kwargs.pop("plot", None)
        return many.each_checkpoint(name, command, many.checkpoint_list(model, checkpoints_from),
                                    kwargs=dict(kwargs, data=data), checkpoints_from=checkpoints_from,
                                    fail_fast=fail_fast, plot=plot, on_error=on_error)

    own = _inspect.signature(command).parameters
    extra = [_inspect.Parameter(n, _inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in
             (("checkpoints_from", None), ("fail_fast", False), ("on_error", None), ("plot", None)) if n not in own]
    each.__signature__ = _inspect.Signature([*own.values(), *extra])
    return each


@accepts(ModelOptions)
def load(model: Any, *, chosen: Chosen, device: str | torch.device = "auto", channels_last: bool = False) -> LoadedModel:
    """The model every function measures: a checkpoint (path or ``example:NAME``, with an optional
    ``spec`` file and overrides) or an ``nn.Module``; already loaded models pass through.

    ``trust_embedded_code`` lets the checkpoint's embedded spec name a ``module.path:Class`` to import;
    without it only ``arch=`` or the ``spec`` file may name code."""
    return _load(model, chosen.model, device_for(device), channels_last)


def _load(model: Any, options: ModelOptions, dev: torch.device, channels_last: bool) -> LoadedModel:
    if isinstance(model, LoadedModel):
        loaded = model
        loaded.model.to(dev)
    elif isinstance(model, nn.Module):
        if options.spec is not None or options.arch is not None:
            raise OptionError(("spec", "arch"), "{} and {} describe a checkpoint; an nn.Module is used as it is")
        loaded = from_module(model, layer=options.layer, mean=options.mean, std=options.std, device=dev)
    elif isinstance(model, str) or hasattr(model, "__fspath__"):
        from flatcli.inputs.checkpoint import locate

        located = locate(str(model))  # a hub checkpoint: its config.json and model.safetensors (fetched if need be)
        plan_inputs(checkpoint=located[0], hub_config=located[1], spec=options.spec)
        overrides = {"arch": options.arch, "layer": options.layer, "mean": options.mean, "std": options.std,
                     "num_classes": options.num_classes, "input_shape": options.input_shape}
        loaded = load_model(str(model), spec_file=options.spec, overrides=overrides, device=dev,
                            trust_embedded_code=options.trust_embedded_code, located=located)
    else:
        raise UsageError(f"model must be an nn.Module, a checkpoint path or example:NAME, got {type(model).__name__}")
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    return loaded


def device_for(device: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, ``cuda`` is this rank's GPU)."""
    return local_device(resolve_device(device) if isinstance(device, str) else torch.device(device))


def _data(data: Any, loaded: LoadedModel, split: str | None, limit: int | None, *, role: str = "data",
          reading: dict | None = None, first: bool = False) -> DataSource:
    """``data`` as a checked :class:`DataSource` (see the module docstring for the accepted forms); the file or
    directory a ``--data`` string names is an input of the run under ``role`` (``data``, ``fit_data``).
    ``reading`` holds :meth:`DataOptions.reading` (resize, crop, interpolation, columns)."""
    from torch.utils.data import DataLoader, Dataset

    if data is None:
        if loaded.checkpoint is None:
            raise UsageError("pass data=: (x, y) tensors, a Dataset, a DataLoader or a --data string")
        data = loaded.spec.data or DEFAULT_DATA
    if isinstance(data, str):
        form, argument = parse_data(data)
        refuse_resizing(form, **{k: (reading or {}).get(k) for k in ("resize", "crop", "interpolation")})
        if form.metavar:
            plan_inputs(**{role: argument})
        reading = reading or {}
        pretrained = loaded.image_defaults if form.image_files else {}  # files of any size only
        preprocess = resolve_preprocessing(reading, loaded.spec, pretrained)
        if pretrained and preprocess != resolve_preprocessing(reading, loaded.spec, {}):  # their sizes were used
            note = pretrained_sizes_note(loaded)
            loaded.notes += [note] if note not in loaded.notes else []
        columns = (reading.get("image_column"), reading.get("label_column"))
        ds = many.shared(  # read once for many checkpoints: keyed by everything that shapes the tensors
            ("data", role, data, split, limit, first, loaded.num_classes, preprocess, columns),
            lambda: load_data(data, split or "test", limit, num_classes=loaded.num_classes, preprocess=preprocess,
                              image_column=columns[0], label_column=columns[1], first=first))
    else:
        given = [k for k, v in (reading or {}).items() if v is not None]
        if given:
            raise OptionError(tuple(given), ", ".join("{}" for _ in given) +
                              f" apply to a --data string; {type(data).__name__} data is used as it is")
        if isinstance(data, DataSource):
            ds = data
        elif isinstance(data, DataLoader):
            from flatcli.inputs.data.pytorch import from_loader

            ds = from_loader(data)
        elif isinstance(data, Dataset):
            from flatcli.inputs.data.pytorch import from_dataset

            ds = from_dataset(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and _uint8(data[0]):
            from flatcli.inputs.data.npz import from_arrays  # npz:'s rule: NCHW, NHWC or NHW, divided by 255

            ds = from_arrays(np.asarray(data[0]), np.asarray(data[1]), None, name="arrays")
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            from flatcli.inputs.data.tensors import from_tensors

            ds = from_tensors(data[0], data[1])
        else:
            raise UsageError(f"data must be (x, y) tensors, a Dataset, a DataLoader or a --data string, "
                             f"got {type(data).__name__}")
        if limit is not None:
            ds = ds.limited(limit, first=first)
        if len(ds) == 0:
            raise DataError(f"data source {ds.name} holds no samples")
    check_compatible(ds, loaded.spec.input_shape, loaded.num_classes)
    return ds


def _uint8(x) -> bool:
    """Whether ``x`` holds uint8 pixels (a numpy array or a tensor), which ``npz:``'s rule reads."""
    return getattr(x, "dtype", None) in (np.uint8, torch.uint8)


def _context(model, data, chosen: Chosen, *, resume=None, layer=None, progress: Progress | None = None) -> RunContext:
    """Model, data, device and torchrun placement of one call, checked before any work (``layer``: the head
    when the model options name none)."""
    run, options, reading = chosen.run, chosen.model, chosen.data
    speed = getattr(chosen, "speed", SpeedOptions())
    torch.manual_seed(run.seed)
    dev = device_for(run.device)
    if layer is not None and options.layer is None:
        options = dataclasses.replace(options, layer=layer)
    loaded = _load(model, options, dev, speed.channels_last)
    many.track(loaded)  # released before the next checkpoint of a many-checkpoint call
    ds = _data(data, loaded, reading.split, reading.limit, reading=reading.reading(), first=reading.first)
    return RunContext(loaded=loaded, data=ds, device=dev, dist=from_environment(dev), batch_size=reading.batch_size,
                      seed=run.seed, split=reading.split, limit=reading.limit, resume=resume, progress=progress,
                      strict=run.strict)


def _spec_layers(chosen: Chosen, ctx: RunContext) -> tuple[str, ...]:
    """The earlier layers to measure: those given, else the spec's."""
    given = chosen.layers.layers
    return tuple(given) if given is not None else tuple(ctx.loaded.spec.layers or ())


COMMON = (ModelOptions, DataOptions, RunOptions)
#: What a causal language model reads beyond the common options (:mod:`flatcli.options.lm`).
LANGUAGE = (PromptOptions, PositionOptions, LanguageModelOptions)


def _language_model(model, data) -> bool:
    """Whether a call measures a causal language model (the model-kind seam, :mod:`flatcli.models.kinds`):
    ``prompts:`` data, a Hugging Face causal-LM folder or ``hf-hub:`` reference, a ``.safetensors`` file holding
    a causal LM's weights, or an in-memory transformers model."""
    if isinstance(data, str) and data.strip().startswith("prompts:"):
        return True
    if isinstance(model, nn.Module):
        transformers = sys.modules.get("transformers")
        return transformers is not None and isinstance(model, transformers.PreTrainedModel)
    if isinstance(model, (str, os.PathLike)):
        from flatcli.models.kinds.hf_folder import holds_lm_weights, is_causal_lm_folder

        return is_causal_lm_folder(model) or holds_lm_weights(model)
    return False


def _only_for(chosen: Chosen, kinds: tuple, what: str, but: tuple[str, ...] = ()) -> None:
    """Refuse the options of groups ``kinds`` that were given (except ``but``): they do not apply to ``what``."""
    given = [name for kind in kinds if hasattr(chosen, kind.key) and isinstance(getattr(chosen, kind.key), kind)
             for name in getattr(chosen, kind.key).given() if name not in but]
    if given:
        raise OptionError(tuple(given), ", ".join("{}" for _ in given) + f" do not apply to {what}; drop them")


def _open_language_model(model, data, chosen: Chosen, tokenizer):
    """The causal language model and the prompts of a call, the options for images refused; every file read is
    an input of the output plan. ``tokenizer`` (the API's: an object or a path) and ``chosen.lm.tokenizer`` (the
    option, a path) are one setting."""
    from flatcli.inputs.data.prompts import prompts_path
    from flatcli.models.kinds.hf_folder import model_files
    from flatcli.runs.lm_sharpness import open_run

    _only_for(chosen, (ModelOptions, DataOptions, SpeedOptions, LayerOptions, HeadOptions, TakeoffOptions),
              "a language model", but=("trust_embedded_code", "limit", "data", "weight_norm"))
    if tokenizer is not None and chosen.lm.tokenizer is not None:
        raise OptionError("tokenizer", "{} is given twice (as a keyword and in the language-model options); "
                          "give it once")
    tokenizer = tokenizer if tokenizer is not None else chosen.lm.tokenizer
    if isinstance(model, (str, os.PathLike)):
        path = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
        for role, file in model_files(model, chosen.lm.config, path):
            plan_inputs(**{role: file})
    plan_inputs(data=prompts_path(data) if isinstance(data, str) else None)
    torch.manual_seed(chosen.run.seed)
    return open_run(model, data, tokenizer=tokenizer, config=chosen.lm.config, dtype=chosen.lm.dtype,
                    device=device_for(chosen.run.device), trust_embedded_code=chosen.model.trust_embedded_code,
                    limit=chosen.data.limit)


def _token_head(chosen: Chosen) -> TokenHeadOptions:
    return TokenHeadOptions(positions=chosen.positions.positions, weight_norm=chosen.head.weight_norm)


@_one_plan
@accepts(*COMMON, SpeedOptions, HeadOptions, LayerOptions, *LANGUAGE)
@_each_checkpoint
def sharpness(model, data=None, *, chosen: Chosen, tokenizer=None, samples: bool = True,
              on_rows: OnRows | None = None, progress: Progress | None = None) -> Result:
    """``flatrob sharpness``: the closed-form relative sharpness of the head, per sample and per data set.

    ``layers`` (names, or a comma-separated string; default the spec's) adds the traces of earlier
    layers, measured by ``layer_method`` (``auto``: exact per sample where the network is piecewise linear
    in the layer, else Hutchinson; see :mod:`flatcli.runs.layers`); ``hutchinson`` probes the head too.

    A causal language model (a Hugging Face folder, ``hf-hub:`` reference, or an in-memory transformers
    model with its ``tokenizer``) on ``prompts:FILE`` data gets one row per prompt: the head's curvature per
    token, averaged over the ``positions`` that predict the target (:mod:`flatcli.runs.lm_sharpness`).
    """
    if _language_model(model, data):
        from flatcli.runs.lm_sharpness import lm_sharpness

        kind, prompts = _open_language_model(model, data, chosen, tokenizer)
        return lm_sharpness(kind, prompts, data=data, prompt=chosen.prompt, head=_token_head(chosen),
                            seed=chosen.run.seed, dist=from_environment(kind.device), on_rows=on_rows,
                            keep_samples=samples, progress=progress)
    _only_for(chosen, LANGUAGE, "an image classifier (they are for language models and prompts: data)")
    settings = sharpness_run.SharpnessSettings.from_groups(chosen)
    ctx = _context(model, data, chosen, progress=progress)
    settings.layers = _spec_layers(chosen, ctx)
    return sharpness_run.sharpness(ctx, settings, on_rows=on_rows, keep_samples=samples)


@_one_plan
@accepts(*COMMON, SpeedOptions, AttackOptions, HeadOptions, LayerOptions, TakeoffOptions, *LANGUAGE, GCGOptions)
@_each_checkpoint
def attack(model, data=None, *, chosen: Chosen, targeted=None, trajectory=None, save_adv=None, plot=None,
           resume=None, tokenizer=None, samples: bool = True, on_rows: OnRows | None = None,
           progress: Progress | None = None) -> Result:
    """``flatrob attack``: PGD recording loss and sharpness along every trajectory (uncanny valley, take-off).

    ``attack`` is ``"pgd"`` (default), ``"apgd"`` or ``"square"`` (``queries`` its budget), ``loss`` the loss it
    ascends (``"ce"``, ``"cw"``, ``"dlr"``; default ce, cw for square).

    ``result.artifacts["adversarials"]`` holds the adversarials ``(x_adv, y, index)``: CPU tensors in data order,
    ``x_adv`` float NCHW in [0, 1], ``index`` the source indices; kept with ``samples`` (the default) when they take
    at most 1 GiB (beyond, a note: ``save_adv`` names a file to write them to), and always with ``save_adv``.
    ``layers`` (default: the spec's) records the traces of earlier layers at every step too (``layer_method``,
    ``fisher_samples`` and ``hutchinson`` probes as for :func:`sharpness`).

    On a causal language model with ``prompts:FILE`` data the attack is GCG (``attack="gcg"``, the GCG options;
    :mod:`flatcli.runs.lm_attack`): one trajectory row per prompt and step, streamed to ``trajectory``.
    """
    if _language_model(model, data) or chosen.attack.attack == GCG_KIND:
        return _gcg(model, data, chosen, tokenizer, trajectory=trajectory, plot=plot, resume=resume, refused={
            "targeted": targeted, "save_adv": save_adv}, samples=samples, on_rows=on_rows, progress=progress)
    _only_for(chosen, (*LANGUAGE, GCGOptions), "an image classifier (they are for language models and prompts: data)")
    settings = attack_run.AttackSettings.from_groups(chosen, targeted=targeted)
    attack_run.trajectory_format(trajectory)
    if save_adv == "-":
        raise OptionError("save_adv", "{} needs a file name (stdout carries the result)")
    _check_plot(plot)
    check_outputs(trajectory=trajectory, save_adv=save_adv, plot=plot)
    ctx = _context(model, data, chosen, resume=resume, progress=progress)
    settings.layers = _spec_layers(chosen, ctx)
    return attack_run.attack(ctx, settings, trajectory=trajectory, save_adv=save_adv, plot=plot, on_rows=on_rows,
                             keep_samples=samples, keep_adv=samples)


def _gcg(model, data, chosen: Chosen, tokenizer, *, trajectory, plot, resume, refused: dict, samples, on_rows,
         progress) -> Result:
    """GCG on a causal language model's prompts, its trajectory rows streamed to ``trajectory`` (and ``on_rows``);
    ``plot``: the paper's Fig. 15 (:mod:`flatcli.outputs.figures.language`); ``resume``: finished prompts kept in
    that directory."""
    from flatcli.outputs.writer import ResultWriter
    from flatcli.runs.lm_attack import lm_attack

    _check_gcg(model, data, chosen, [name for name, value in refused.items() if value is not None],
               "GCG on a language model")
    fmt = attack_run.trajectory_format(trajectory)
    _check_plot(plot)
    check_outputs(trajectory=trajectory, plot=plot)
    kind, prompts = _open_language_model(model, data, chosen, tokenizer)
    dist = from_environment(kind.device)
    writer = ResultWriter(fmt, trajectory, command="attack", enabled=dist.is_main) if trajectory else None
    points: list[dict] = []  # what the figure needs: a few numbers per prompt and step

    def both(rows):
        if writer is not None:
            writer.rows(rows)
        if on_rows is not None:
            on_rows(rows)
        if plot is not None:
            points.extend({k: r[k] for k in ("sample", "step", "loss", "relative_sharpness")} for r in rows)

    with writer if writer is not None else contextlib.nullcontext():
        result = lm_attack(kind, prompts, data=data, attack=chosen.attack, gcg=chosen.gcg, prompt=chosen.prompt,
                           head=_token_head(chosen), seed=chosen.run.seed, dist=dist, resume=resume,
                           on_rows=both if writer is not None or on_rows is not None or plot is not None else None,
                           keep_samples=samples, progress=progress)
        result.config.update(trajectory=trajectory, plot=plot)
        if plot is not None and dist.is_main:
            from flatcli.outputs.figures.language import gcg_figure

            gcg_figure(points, plot, title=f"flatrob attack --attack gcg: {result.config['checkpoint']}, "
                       f"{result.config['steps']} steps")
        if writer is not None:
            writer.finish(result.config, result.summary)
    return result


@_one_plan
@accepts(*COMMON, SpeedOptions, PGDOptions, ScalingOptions, TakeoffOptions, SweepOptions)
@_each_checkpoint
def sweep_scale(model, data=None, *, chosen: Chosen, plot=None, resume=None, samples: bool = True,
                on_rows: OnRows | None = None, progress: Progress | None = None) -> Result:
    """``flatrob sweep-scale``: scale the head by each s; loss increase, basin widths, robust accuracy, transfer.

    ``scales`` is a list or a comma-separated string; ``plot`` a directory for the Fig. 2 / Fig. 13 PNGs.
    ``attack_loss`` drives the per-scale attack (``"ce"``, ``"cw"``, ``"dlr"``); ``square`` adds torchattacks'
    Square per scale (``queries`` per restart); ``masking_threshold`` is the verdict's margin.
    """
    settings = sweep_run.SweepSettings.from_groups(chosen)
    if plot is not None:
        from flatcli.outputs.figures import require_matplotlib
        from flatcli.outputs.figures.sweep import FIGURES

        directory = sweep_run.plot_directory(plot)
        require_matplotlib()
        check_outputs(plot=[directory / name for name in FIGURES])
    ctx = _context(model, data, chosen, resume=resume, progress=progress)
    return sweep_run.sweep_scale(ctx, settings, plot=plot, on_rows=on_rows, keep_samples=samples)


@_one_plan
@accepts(*COMMON, BoundChecks)
@_each_checkpoint
def bound(model=None, data=None, *, chosen: Chosen, epsilon=None, lipschitz=None, kappa=None, r=None, classes=None,
          features=None, grad=None, at_minimum=False, from_json=None, samples: bool = True,
          on_rows: OnRows | None = None, progress: Progress | None = None) -> Result:
    """``flatrob bound``: the certified radius of Prop. 8/9, from numbers (``model=None``; every number may
    be a comma-separated list, giving one row per combination), from sharpness JSON (``from_json``), or
    measured from a model (then ``check`` attacks every sample inside its radius)."""
    given = {"kappa": kappa, "lipschitz": lipschitz, "r": r, "classes": classes, "features": features, "grad": grad,
             "epsilon": epsilon}
    given = {k: _number_text(v) for k, v in given.items()}
    if model is None:
        used = [*chosen.model.given(), *chosen.data.given(), *chosen.checks.given(), *(["data"] if data else [])]
        return bound_numbers.radius(given, from_json=from_json, at_minimum=at_minimum, model_options=used)
    if from_json is not None:
        raise OptionError("from_json", "give either a checkpoint or {}, not both")
    bound_numbers.check_options(epsilon=epsilon, grad=grad, at_minimum=at_minimum)
    conflicting = [k for k in (*bound_numbers.MEASURED, "grad") if given[k] is not None]
    if conflicting:
        them = "them" if len(conflicting) > 1 else "it"
        raise OptionError(tuple(conflicting), ", ".join("{}" for _ in conflicting) +
                          f" cannot be combined with a checkpoint, which measures {them}; drop {them} or leave out "
                          "the checkpoint for numbers-only mode")
    settings = bound_run.BoundSettings.from_options(epsilon, lipschitz=lipschitz, at_minimum=at_minimum,
                                                    **chosen.checks.values())
    ctx = _context(model, data, chosen, progress=progress)
    return bound_run.bound(ctx, settings, on_rows=on_rows, keep_samples=samples)


@_one_plan
@accepts(*COMMON, AttackOptions, WeightNormOptions, DetectOptions, PromptOptions, LanguageModelOptions, GCGOptions)
@_each_checkpoint
def detect(model, data=None, *, chosen: Chosen, adversarial=None, fit_data=None, save=None, save_adv=None, plot=None,
           detector=None, force=False, resume=None, tokenizer=None, samples: bool = True,
           on_rows: OnRows | None = None, progress: Progress | None = None) -> Result:
    """``flatrob detect``: fit and cross-validate a detector of adversarial inputs (paper D.4), or with
    ``detector`` (a file or a fitted :class:`~flatcli.core.detectors.Detector`) apply a saved one.

    ``adversarial`` (a ``tensors:`` file) supplies the adversarials instead of attacking. ``fit_data``
    (the forms of ``data``; a string is read with split ``train``) holds the clean labelled inputs the
    Mahalanobis model is fitted on (``method`` ``mahalanobis``, ``ensemble``, ``all``; default: the
    training split of a ``data`` string). The fitted detector is ``result.artifacts["detector"]``.

    A causal language model (with its ``tokenizer`` when in memory) on ``prompts:FILE`` data: GCG crafts a suffix
    per prompt, and the stump on a label-free curvature score of the prompts is cross-validated beside the
    perplexity filter on the same folds (:mod:`flatcli.runs.lm_detect`); ``detector`` applies one so fitted to
    prompts as they are.
    """
    language = _language_model(model, data) or chosen.attack.attack == GCG_KIND
    if not language:
        _only_for(chosen, (PromptOptions, LanguageModelOptions, GCGOptions),
                  "an image classifier (they are for language models and prompts: data)")
    attack_given = tuple(chosen.attack.given())
    if detector is not None:
        fitting = {"adversarial": adversarial, "fit_data": fit_data, "save": save, "save_adv": save_adv, "plot": plot,
                   "resume": resume}
        clash = (*chosen.detection.given(), *(k for k, v in fitting.items() if v is not None), *attack_given,
                 *chosen.gcg.given())
        if clash:
            raise OptionError(("detector", *clash), "{} applies a saved detector, but " +
                              ", ".join("{}" for _ in clash) + " belong to fitting one; drop them, or drop {} to fit"
                              .replace("drop {} to fit", "drop the detector to fit"))
        if language:
            return _apply_to_prompts(model, data, detector, chosen, tokenizer, force=force, samples=samples,
                                     on_rows=on_rows)
        return _apply(model, data, detector, chosen, force=force, samples=samples, on_rows=on_rows,
                      progress=progress)
    if force:
        raise OptionError(("force", "detector"), "{} only applies with {} (applying a saved detector)")
    if language:
        return _detect_suffixes(model, data, chosen, tokenizer, save=save, refused={
            "adversarial": adversarial, "fit_data": fit_data, "save_adv": save_adv, "plot": plot, "resume": resume},
            samples=samples, on_rows=on_rows, progress=progress)
    if adversarial is not None:
        if attack_given:
            raise OptionError(("adversarial", *attack_given), "{} reads ready adversarials; " +
                              ", ".join("{}" for _ in attack_given) + " would be ignored: drop them")
        if save_adv is not None:
            raise OptionError(("adversarial", "save_adv"), "{} reads ready adversarials; {} would only copy them: "
                              "drop it")
        if adversarial in ("", "-"):
            raise OptionError("adversarial", "{} needs a file name")
        if resume is not None:
            raise OptionError(("resume", "adversarial"), "{} keeps the crafted adversarials of a run; with {} nothing "
                              "is crafted: drop it")
        if chosen.detection.adaptive:
            raise OptionError(("adaptive", "adversarial"), "{} crafts adversarials against the fitted detector; with "
                              "{} nothing is crafted: drop one of them")
    _check_plot(plot)
    check_outputs(save=save, save_adv=save_adv, plot=plot)
    settings = detect_run.DetectSettings.from_groups(chosen, crafted=adversarial is None)
    if fit_data is not None and not settings.uses_mahalanobis:
        raise OptionError(("fit_data", "method"), "{} holds the data of the Mahalanobis model, which {} "
                          f"{settings.method} does not use; drop it or use mahalanobis, ensemble or all")
    plan_inputs(adversarial=adversarial)
    ctx = _context(model, data, chosen, resume=resume, progress=progress)
    adv_ds = None
    if adversarial is not None:
        adv_ds = load_data(f"tensors:{adversarial}", chosen.data.split, chosen.data.limit)
        check_compatible(adv_ds, ctx.loaded.spec.input_shape, ctx.loaded.num_classes)
    fit_ds = _fit_data(fit_data, data, ctx, chosen.data.reading()) if settings.uses_mahalanobis else None
    return detect_run.fit(ctx, settings, adversarial=adv_ds, adversarial_path=adversarial, fit_data=fit_ds, save=save,
                          save_adv=save_adv, plot=plot, on_rows=on_rows, keep_samples=samples)


def _check_gcg(model, data, chosen: Chosen, refused: list[str], what: str) -> None:
    """Refuse GCG on anything but a language model's prompts, another ``attack``, and the options ``refused`` and
    those of the image attacks (all but ``attack`` and ``steps``), which do not apply to ``what``."""
    if not _language_model(model, data):
        raise OptionError(("attack", "data"), "{} gcg attacks a causal language model's prompts: give a language "
                          "model and {} prompts:FILE")
    if chosen.attack.attack not in (None, GCG_KIND):
        raise OptionError("attack", f"{{}} {chosen.attack.attack} attacks images; a language model is attacked by "
                          f"{GCG_KIND}")
    given = [*refused, *(name for name in chosen.attack.given() if name not in ("attack", "steps"))]
    if given:
        raise OptionError(tuple(given), ", ".join("{}" for _ in given) + f" do not apply to {what}; drop them")


def _detect_suffixes(model, data, chosen: Chosen, tokenizer, *, save, refused: dict, samples, on_rows,
                     progress) -> Result:
    """``detect`` on a causal language model's prompts: GCG suffixes, then the detectors
    (:func:`flatcli.runs.lm_detect.lm_detect`); what belongs to images refused first."""
    from flatcli.runs.lm_detect import lm_detect

    _check_gcg(model, data, chosen, [*(name for name, value in refused.items() if value is not None),
                                     *chosen.head.given()], "detecting GCG suffixes of a language model")
    settings = detect_run.DetectSettings.from_groups(chosen, crafted=False, language=True)
    check_outputs(save=save)
    kind, prompts = _open_language_model(model, data, chosen, tokenizer)
    return lm_detect(kind, prompts, settings, data=data, attack=chosen.attack, gcg=chosen.gcg, prompt=chosen.prompt,
                     seed=chosen.run.seed, save=save, on_rows=on_rows, keep_samples=samples, progress=progress)


def _apply_to_prompts(model, data, detector, chosen: Chosen, tokenizer, *, force, samples, on_rows) -> Result:
    """A detector fitted on a language model's prompts applied to prompts as they are; the chat template and system
    prompt default to the detector's (:func:`flatcli.runs.lm_detect.lm_apply`)."""
    from flatcli.core.detectors import Detector
    from flatcli.inputs.detector_file import load_detector
    from flatcli.runs.lm_detect import lm_apply

    if chosen.head.given():
        raise OptionError(tuple(chosen.head.given()), "{} does not apply to a language model's prompts; drop it")
    if not isinstance(detector, Detector):
        plan_inputs(detector=detector)
    det = detector if isinstance(detector, Detector) else load_detector(detector)
    given = chosen.prompt.given()
    prompt = dataclasses.replace(chosen.prompt, **{k: det.meta.get(k, getattr(chosen.prompt, k)) for k in
                                                    ("chat_template", "system") if k not in given})
    kind, prompts = _open_language_model(model, data, chosen, tokenizer)
    return lm_apply(kind, prompts, det, data=data, prompt=prompt, force=force, on_rows=on_rows, keep_samples=samples,
                    detector_path=None if isinstance(detector, Detector) else str(detector))


def _fit_data(fit_data, data, ctx: RunContext, reading: dict) -> DataSource:
    """The Mahalanobis model's clean labelled data: ``fit_data``, or the training split of the ``data`` string;
    never the data being scored."""
    if fit_data is None:
        source = data if data is not None else (ctx.loaded.spec.data or DEFAULT_DATA)
        if not isinstance(source, str):
            raise OptionError("fit_data", "the Mahalanobis model needs clean labelled training data: pass {} (the "
                              "forms of data=) when data is not a --data string")
        fit_data = source
    ds = _data(fit_data, ctx.loaded, "train", None, role="fit_data", reading=reading)
    if ds.name == ctx.data.name:
        raise OptionError("fit_data", f"{{}} would be {ds.name}, the very data the detector is tested on; pass other "
                          "clean labelled inputs (e.g. a training split)")
    return ds


def _apply(model, data, detector, chosen: Chosen, *, force, samples, on_rows, progress) -> Result:
    from flatcli.core.detectors import Detector
    from flatcli.inputs.detector_file import load_detector

    if not isinstance(detector, Detector):
        plan_inputs(detector=detector)
    det = detector if isinstance(detector, Detector) else load_detector(detector)  # garbage fails before loading
    det_wn = det.meta.get("weight_norm", "squared")
    weight_norm = chosen.head.weight_norm
    if weight_norm is not None and weight_norm != det_wn:
        raise OptionError("weight_norm", f"{{}} {weight_norm} conflicts with the detector, fitted with {det_wn}; "
                          "drop it")
    ctx = _context(model, data, chosen, layer=det.meta.get("layer"), progress=progress)
    path = None if isinstance(detector, Detector) else str(detector)
    return detect_run.apply(ctx, det, detector_path=path, force=force, on_rows=on_rows, keep_samples=samples)


@_one_plan
@accepts(ModelOptions, LanguageModelOptions)
def inspect(model, *, chosen: Chosen) -> Result:
    """``flatrob inspect``: what a checkpoint holds (architecture, parameters, linear layers, specs); for a causal
    language model (a folder, or a single ``.safetensors`` file with ``config`` and ``tokenizer``) its head."""
    options = chosen.model
    described = {"checkpoint": str(model), "spec": options.spec, "arch": options.arch, "layer": options.layer}
    if _language_model(model, None):
        from flatcli.models.kinds.causal_lm import CausalLM
        from flatcli.models.kinds.hf_folder import model_files
        from flatcli.runtime.loop import versions

        lm = chosen.lm
        for role, file in model_files(model, lm.config, lm.tokenizer):
            plan_inputs(**{role: file})
        summary = CausalLM.open(model, lm.tokenizer, config=lm.config, dtype=lm.dtype,
                                trust_embedded_code=options.trust_embedded_code).inspect()
        return Result("inspect", {"checkpoint": str(model), "versions": versions()}, summary, [])
    _only_for(chosen, (LanguageModelOptions,), "an image classifier (they are for language models)")
    if isinstance(model, nn.Module):
        raise UsageError("inspect describes a checkpoint file; pass its path or example:NAME")
    try:
        loaded = _load(model, options, torch.device("cpu"), False)
    except CheckpointError as exc:  # an unknown or wrong architecture: still show what the file holds
        return inspect_run.inspect_file(str(model), exc, options=described)
    return inspect_run.inspect(loaded, options=described)


def _number_text(value) -> str | None:
    """A number or a list of numbers as the option text ``"0.1,1"`` (``None`` stays)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


@_one_plan
def convert(source, dest, *, key: str | None = None, spec: str | None = None, force: bool = False,
            weights: str = "model", strip_prefix: str | None = None) -> Result:
    """``flatrob convert``: a ``.pt``/``.pth``/``.ckpt`` state dict to safetensors, through
    ``torch.load(weights_only=True)``; ``weights="ema"`` takes the EMA weights, ``strip_prefix`` the keys
    under that prefix (see :mod:`flatcli.inputs.convert`)."""
    from flatcli.inputs.convert import convert_pickle
    from flatcli.runtime.loop import versions

    summary = convert_pickle(source, dest, key=key, spec_file=spec, force=force, weights=weights,
                             strip_prefix=strip_prefix)
    config = {"source": str(source), "dest": str(dest), "key": key, "spec": spec, "weights": weights,
              "strip_prefix": strip_prefix, "versions": versions()}
    notes = []
    if summary["other_weights"]:
        other = "ema" if weights == "model" else "model"
        notes.append(f"note: took the {weights} weights ({summary['key']}); the file also holds "
                     f"{', '.join(summary['other_weights'])}: --weights {other} takes those")
    return Result("convert", config, summary, notes=notes)


def _check_plot(plot) -> None:
    """A ``--plot FILE`` is a .png/.pdf/.svg in an existing directory, and matplotlib is there."""
    if plot is not None:
        from flatcli.outputs.figures import check_plot_path, require_matplotlib

        check_plot_path(plot)
        require_matplotlib()
