"""The public Python API: every command as a function, on a checkpoint or an in-memory ``nn.Module``.

    import flatcli.api as fr
    result = fr.sharpness(net, (x, y), mean=[0.5], std=[0.25])    # net: an nn.Module, x in [0, 1]
    result.summary["relative_sharpness"]["mean"]; result.samples[0]; print(result.to_json())

``model`` is an ``nn.Module`` (normalised inside by ``mean``/``std``; the head is ``layer``, or the
network's last ``nn.Linear``), a checkpoint path, ``example:NAME``, or what :func:`load` returned.
``data`` is an ``(x, y)`` pair of tensors (or arrays; x float NCHW in [0, 1]), a torch ``Dataset`` or
``DataLoader`` yielding ``(x, y)``, a ``--data`` string (``digits``, ``cifar10:ROOT``, ...), or, for a
checkpoint, ``None`` (its spec's data, else digits). Keyword arguments mirror the command-line options
(``--batch-size`` is ``batch_size``). Every function returns a :class:`~flatcli.runs.result.Result`
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

import functools
import inspect as _inspect
from typing import Any

import torch
from torch import nn

from flatcli.core.head_scaling import Scaling
from flatcli.errors import DataError, UsageError
from flatcli.inputs.data import FILE_FORMS, IMAGE_FILE_FORMS, DataSource, check_compatible, load_data, preprocessing
from flatcli.inputs.data.source import refuse_resizing
from flatcli.models.loading import LoadedModel, from_module, load_model
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

#: Seeds every command accepts: what torch, numpy's RandomState and scikit-learn all take.
SEED_RANGE = (0, 2**32 - 1)


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
                raise UsageError(f"--plot draws the measures of several checkpoints; {name} of one has no figure")
            return command(model, data, **kwargs)
        kwargs.pop("plot", None)
        return many.each_checkpoint(name, command, many.checkpoint_list(model, checkpoints_from),
                                    kwargs=dict(kwargs, data=data), checkpoints_from=checkpoints_from,
                                    fail_fast=fail_fast, plot=plot, on_error=on_error)

    return each


def load(model: Any, *, spec: str | None = None, arch: str | None = None, layer: str | None = None,
         mean=None, std=None, device: str | torch.device = "auto", channels_last: bool = False,
         trust_embedded_code: bool = False) -> LoadedModel:
    """The model every function measures: a checkpoint (path or ``example:NAME``, with an optional
    ``spec`` file and overrides) or an ``nn.Module``; already loaded models pass through.

    ``trust_embedded_code`` (``--trust-embedded-code``) lets the checkpoint's embedded spec name a
    ``module.path:Class`` to import; without it only ``arch=`` or the ``spec`` file may name code."""
    dev = device_for(device)
    if isinstance(model, LoadedModel):
        loaded = model
        loaded.model.to(dev)
    elif isinstance(model, nn.Module):
        if spec is not None or arch is not None:
            raise UsageError("spec and arch describe a checkpoint; an nn.Module is used as it is")
        loaded = from_module(model, layer=layer, mean=mean, std=std, device=dev)
    elif isinstance(model, str) or hasattr(model, "__fspath__"):
        from flatcli.inputs.checkpoint import locate

        located = locate(str(model))  # a hub checkpoint: its config.json and model.safetensors (fetched if need be)
        plan_inputs(checkpoint=located[0], hub_config=located[1], spec=spec)
        overrides = {"arch": arch, "layer": layer, "mean": _floats(mean), "std": _floats(std)}
        loaded = load_model(str(model), spec_file=spec, overrides=overrides, device=dev,
                            trust_embedded_code=trust_embedded_code, located=located)
    else:
        raise UsageError(f"model must be an nn.Module, a checkpoint path or example:NAME, got {type(model).__name__}")
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    return loaded


def check_seed(seed) -> None:
    """``--seed`` is a whole number in :data:`SEED_RANGE` (torch, numpy and scikit-learn all take it)."""
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise UsageError(f"--seed must be a whole number from {low} to {high} (2^32 - 1), got {seed!r}")


def device_for(device: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, ``cuda`` is this rank's GPU)."""
    return local_device(resolve_device(device) if isinstance(device, str) else torch.device(device))


def _floats(values) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return (float(values),)
    return tuple(float(v) for v in values)


def _data(data: Any, loaded: LoadedModel, split: str | None, limit: int | None, *, role: str = "data",
          reading: dict | None = None) -> DataSource:
    """``data`` as a checked :class:`DataSource` (see the module docstring for the accepted forms); the file or
    directory a ``--data`` string names is an input of the run under ``role`` (``data``, ``fit_data``).
    ``reading`` holds the options of :func:`_reading` (resize, crop, interpolation, columns)."""
    from torch.utils.data import DataLoader, Dataset

    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if data is None:
        if loaded.checkpoint is None:
            raise UsageError("pass data=: (x, y) tensors, a Dataset, a DataLoader or a --data string")
        data = loaded.spec.data or "digits"
    if isinstance(data, str):
        refuse_resizing(data, **{k: (reading or {}).get(k) for k in ("resize", "crop", "interpolation")})
        kind, _, path = data.strip().partition(":")
        if kind in FILE_FORMS and path:
            plan_inputs(**{role: path})
        reading = reading or {}
        spec = loaded.spec
        guessed = loaded.image_defaults if kind in IMAGE_FILE_FORMS else {}  # files of any size only

        def first(key):
            return next((v for v in (reading.get(key), getattr(spec, key), guessed.get(key)) if v is not None), None)

        preprocess = preprocessing(spec.input_shape, *(first(k) for k in ("resize", "crop", "interpolation")))
        columns = (reading.get("image_column"), reading.get("label_column"))
        ds = many.shared(  # read once for many checkpoints: keyed by everything that shapes the tensors
            ("data", role, data, split, limit, loaded.num_classes, preprocess, columns),
            lambda: load_data(data, split or "test", limit, num_classes=loaded.num_classes, preprocess=preprocess,
                              image_column=columns[0], label_column=columns[1]))
    else:
        given = [f"{k}=" for k, v in (reading or {}).items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to a --data string; {type(data).__name__} data is used as it is")
        if isinstance(data, DataSource):
            ds = data
        elif isinstance(data, DataLoader):
            from flatcli.inputs.data.pytorch import from_loader

            ds = from_loader(data)
        elif isinstance(data, Dataset):
            from flatcli.inputs.data.pytorch import from_dataset

            ds = from_dataset(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            from flatcli.inputs.data.tensors import from_tensors

            ds = from_tensors(data[0], data[1])
        else:
            raise UsageError(f"data must be (x, y) tensors, a Dataset, a DataLoader or a --data string, "
                             f"got {type(data).__name__}")
        if limit is not None:
            ds = ds.subset(0, limit)
        if len(ds) == 0:
            raise DataError(f"data source {ds.name} holds no samples")
    check_compatible(ds, loaded.spec.input_shape, loaded.num_classes)
    return ds


def _reading(resize=None, crop=None, interpolation=None, image_column=None, label_column=None) -> dict:
    """How a ``--data`` string's images are read (``--resize``, ``--crop``, ``--interpolation``, ``--image-column``,
    ``--label-column``; ``None``: the spec's, then the defaults of :func:`flatcli.inputs.data.preprocessing`)."""
    return {"resize": resize, "crop": crop, "interpolation": interpolation, "image_column": image_column,
            "label_column": label_column}


def _context(model, data, *, spec=None, arch=None, layer=None, mean=None, std=None, split="test", limit=None,
             batch_size=256, device="auto", seed=0, channels_last=False, resume=None, trust_embedded_code=False,
             progress: Progress | None = None, reading: dict | None = None) -> RunContext:
    """Model, data, device and torchrun placement of one call, checked before any work."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_seed(seed)
    torch.manual_seed(seed)
    dev = device_for(device)
    loaded = load(model, spec=spec, arch=arch, layer=layer, mean=mean, std=std, device=dev,
                  channels_last=channels_last, trust_embedded_code=trust_embedded_code)
    many.track(loaded)  # released before the next checkpoint of a many-checkpoint call
    ds = _data(data, loaded, split, limit, reading=reading)
    return RunContext(loaded=loaded, data=ds, device=dev, dist=from_environment(dev), batch_size=batch_size,
                      seed=seed, split=split, limit=limit, resume=resume, progress=progress)


@_one_plan
@_each_checkpoint
def sharpness(model, data=None, *, spec=None, arch=None, layer=None, mean=None, std=None, split="test", limit=None,
              batch_size=256, device="auto", seed=0,
              resize=None, crop=None, interpolation=None, image_column=None, label_column=None,
              weight_norm="squared", scale=1.0, scale_bias=True,
              hutchinson=0, layers=None, layer_method="auto", fisher_samples=2, precision="fp32",
              channels_last=False, trust_embedded_code=False, samples: bool = True, on_rows: OnRows | None = None,
              progress: Progress | None = None) -> Result:
    """``flatrob sharpness``: the closed-form relative sharpness of the head, per sample and per data set.

    ``layers`` (names, or a comma-separated string; default the spec's) adds the traces of earlier
    layers, measured by ``layer_method`` (``auto``: exact per sample where the network is piecewise linear
    in the layer, else Hutchinson; see :mod:`flatcli.runs.layers`); ``hutchinson`` probes the head too.
    """
    layers = _layer_names(layers)
    settings = sharpness_run.SharpnessSettings(
        scaling=Scaling(scale, scale_bias), weight_norm=weight_norm, hutchinson=hutchinson, layers=layers or (),
        layer_method=layer_method, fisher_samples=fisher_samples, precision=precision, channels_last=channels_last,
    )
    ctx = _context(model, data, reading=_reading(resize, crop, interpolation, image_column, label_column),
                   spec=spec, arch=arch, layer=layer, mean=mean, std=std, split=split, limit=limit,
                   batch_size=batch_size, device=device, seed=seed, channels_last=channels_last, progress=progress,
                   trust_embedded_code=trust_embedded_code)
    if layers is None and ctx.loaded.spec.layers:
        settings.layers = tuple(ctx.loaded.spec.layers)
    return sharpness_run.sharpness(ctx, settings, on_rows=on_rows, keep_samples=samples)


def _layer_names(layers) -> tuple[str, ...] | None:
    """``layers`` as a tuple of names (a comma-separated string is split); ``None`` stays (the spec's)."""
    if isinstance(layers, str):
        return tuple(n.strip() for n in layers.split(",") if n.strip())
    return None if layers is None else tuple(layers)


@_one_plan
@_each_checkpoint
def attack(model, data=None, *, spec=None, arch=None, layer=None, mean=None, std=None, split="test", limit=None,
           batch_size=256, device="auto", seed=0,
           resize=None, crop=None, interpolation=None, image_column=None, label_column=None,
           preset=None, attack=None, loss=None, norm=None, eps=None, alpha=None, steps=None, queries=None,
           random_start=False, restarts=1, targeted=None, takeoff=0.1, trajectory=None, save_adv=None, plot=None,
           weight_norm="squared", scale=1.0, scale_bias=True, precision="fp32", channels_last=False, resume=None,
           layers=None, layer_method="auto", fisher_samples=2, hutchinson=0, trust_embedded_code=False,
           samples: bool = True, on_rows: OnRows | None = None, progress: Progress | None = None) -> Result:
    """``flatrob attack``: PGD recording loss and sharpness along every trajectory (uncanny valley, take-off).

    ``attack`` is ``"pgd"`` (default), ``"apgd"`` or ``"square"`` (``queries`` its budget), ``loss`` the loss it
    ascends (``"ce"``, ``"cw"``, ``"dlr"``; default ce, cw for square).

    The adversarials are in ``result.artifacts["adversarials"]`` (``(x, y, index)``) when ``save_adv``
    names a file to write them to. ``layers`` (default: the spec's) records the traces of earlier layers
    at every step too (``layer_method``, ``fisher_samples`` and ``hutchinson`` probes as for :func:`sharpness`).
    """
    layers = _layer_names(layers)
    settings = attack_run.AttackSettings.from_options(
        preset, attack=attack, loss=loss, norm=norm, eps=eps, alpha=alpha, steps=steps, queries=queries,
        random_start=random_start, restarts=restarts,
        scaling=Scaling(scale, scale_bias), weight_norm=weight_norm, takeoff=takeoff, targeted=targeted,
        precision=precision, channels_last=channels_last, layers=layers or (), layer_method=layer_method,
        fisher_samples=fisher_samples, hutchinson=hutchinson,
    )
    attack_run.trajectory_format(trajectory)
    _check_plot(plot)
    check_outputs(trajectory=trajectory, save_adv=save_adv, plot=plot)
    ctx = _context(model, data, reading=_reading(resize, crop, interpolation, image_column, label_column),
                   spec=spec, arch=arch, layer=layer, mean=mean, std=std, split=split, limit=limit,
                   batch_size=batch_size, device=device, seed=seed, channels_last=channels_last, resume=resume,
                   progress=progress, trust_embedded_code=trust_embedded_code)
    if layers is None and ctx.loaded.spec.layers:
        settings.layers = tuple(ctx.loaded.spec.layers)
    return attack_run.attack(ctx, settings, trajectory=trajectory, save_adv=save_adv, plot=plot, on_rows=on_rows,
                             keep_samples=samples)


@_one_plan
@_each_checkpoint
def sweep_scale(model, data=None, *, scales="0.25,0.5,1,2.5,5,10,50", spec=None, arch=None, layer=None, mean=None,
                std=None, split="test", limit=None, batch_size=256, device="auto", seed=0,
                resize=None, crop=None, interpolation=None, image_column=None, label_column=None,
                preset=None, norm=None,
                eps=None, alpha=None, steps=None, random_start=False, restarts=1, takeoff=0.1,
                attack_each_scale=True, attack_norm=None, attack_eps=None, attack_alpha=None, attack_steps=None,
                attack_loss=None, square=False, queries=None, masking_threshold=0.05, scale_bias=True,
                weight_norm="squared", plot=None, precision="fp32", channels_last=False, resume=None,
                trust_embedded_code=False, samples: bool = True, on_rows: OnRows | None = None,
                progress: Progress | None = None) -> Result:
    """``flatrob sweep-scale``: scale the head by each s; loss increase, basin widths, robust accuracy, transfer.

    ``scales`` is a list or a comma-separated string; ``plot`` a directory for the Fig. 2 / Fig. 13 PNGs.
    ``attack_loss`` drives the per-scale attack (``"ce"``, ``"cw"``, ``"dlr"``); ``square`` adds torchattacks'
    Square per scale (``queries`` per restart); ``masking_threshold`` is the verdict's margin.
    """
    settings = sweep_run.SweepSettings.from_options(
        scales, preset=preset, norm=norm, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
        restarts=restarts, attack_each_scale=attack_each_scale, attack_norm=attack_norm, attack_eps=attack_eps,
        attack_alpha=attack_alpha, attack_steps=attack_steps, attack_loss=attack_loss, square=square, queries=queries,
        masking_threshold=masking_threshold, scale_bias=scale_bias, weight_norm=weight_norm, takeoff=takeoff,
        precision=precision, channels_last=channels_last,
    )
    if plot is not None:
        from flatcli.outputs.figures import require_matplotlib
        from flatcli.outputs.figures.sweep import FIGURES

        directory = sweep_run.plot_directory(plot)
        require_matplotlib()
        check_outputs(plot=[directory / name for name in FIGURES])
    ctx = _context(model, data, reading=_reading(resize, crop, interpolation, image_column, label_column),
                   spec=spec, arch=arch, layer=layer, mean=mean, std=std, split=split, limit=limit,
                   batch_size=batch_size, device=device, seed=seed, channels_last=channels_last, resume=resume,
                   progress=progress, trust_embedded_code=trust_embedded_code)
    return sweep_run.sweep_scale(ctx, settings, plot=plot, on_rows=on_rows, keep_samples=samples)


@_one_plan
@_each_checkpoint
def bound(model=None, data=None, *, epsilon=None, lipschitz=None, kappa=None, r=None, classes=None, features=None,
          grad=None, at_minimum=False, from_json=None, check=False, check_steps=None, local_iters=None, loss=None, spec=None,
          arch=None, layer=None, mean=None, std=None, split=None, limit=None, batch_size=None, device="auto",
          seed=0,
          resize=None, crop=None, interpolation=None, image_column=None, label_column=None,
          trust_embedded_code=False, samples: bool = True, on_rows: OnRows | None = None,
          progress: Progress | None = None) -> Result:
    """``flatrob bound``: the certified radius of Prop. 8/9, from numbers (``model=None``; every number may
    be a comma-separated list, giving one row per combination), from sharpness JSON (``from_json``), or
    measured from a model (then ``check`` attacks every sample inside its radius)."""
    given = {"kappa": kappa, "lipschitz": lipschitz, "r": r, "classes": classes, "features": features, "grad": grad,
             "epsilon": epsilon}
    given = {k: _number_text(v) for k, v in given.items()}
    if model is None:
        model_options = {
            "--check": check, "--check-steps": check_steps is not None, "--local-iters": local_iters is not None,
            "--loss": loss is not None, "--spec": spec, "--arch": arch, "--layer": layer, "--data": data is not None, "--split": split,
            "--limit": limit is not None, "--batch-size": batch_size is not None,
            "--trust-embedded-code": trust_embedded_code, "--resize": resize, "--crop": crop,
            "--interpolation": interpolation, "--image-column": image_column, "--label-column": label_column,
        }
        return bound_numbers.radius(given, from_json=from_json, at_minimum=at_minimum,
                                    model_options={k: bool(v) for k, v in model_options.items()})
    if from_json is not None:
        raise UsageError("give either a checkpoint or --from-json, not both")
    bound_numbers.check_options(epsilon=epsilon, grad=grad, at_minimum=at_minimum)
    conflicting = [f"--{k}" for k in (*bound_numbers.MEASURED, "grad") if given[k] is not None]
    if conflicting:
        them = "them" if len(conflicting) > 1 else "it"
        raise UsageError(f"{', '.join(conflicting)} cannot be combined with a checkpoint, which measures {them}; "
                         f"drop {them} or leave out the checkpoint for numbers-only mode")
    settings = bound_run.BoundSettings.from_options(epsilon, lipschitz=lipschitz, at_minimum=at_minimum, check=check,
                                                    check_steps=check_steps, local_iters=local_iters, loss=loss)
    ctx = _context(model, data, reading=_reading(resize, crop, interpolation, image_column, label_column),
                   spec=spec, arch=arch, layer=layer, mean=mean, std=std, split=split or "test",
                   limit=limit, batch_size=256 if batch_size is None else batch_size, device=device, seed=seed,
                   progress=progress, trust_embedded_code=trust_embedded_code)
    return bound_run.bound(ctx, settings, on_rows=on_rows, keep_samples=samples)


@_one_plan
@_each_checkpoint
def detect(model, data=None, *, spec=None, arch=None, layer=None, mean=None, std=None, split="test", limit=None,
           batch_size=256, device="auto", seed=0,
           resize=None, crop=None, interpolation=None, image_column=None, label_column=None,
           method=None, score=None, folds=None, only_successful=False,
           preset=None, attack=None, loss=None, norm=None, eps=None, alpha=None, steps=None, queries=None,
           random_start=False, restarts=1, adversarial=None, fit_data=None, probe_steps=None, probe_size=None,
           adaptive=False, adaptive_weight=None, save=None, save_adv=None, plot=None, detector=None, force=False,
           weight_norm=None, resume=None, trust_embedded_code=False, samples: bool = True,
           on_rows: OnRows | None = None,
           progress: Progress | None = None) -> Result:
    """``flatrob detect``: fit and cross-validate a detector of adversarial inputs (paper D.4), or with
    ``detector`` (a file or a fitted :class:`~flatcli.core.detectors.Detector`) apply a saved one.

    ``adversarial`` (a ``tensors:`` file) supplies the adversarials instead of attacking. ``fit_data``
    (the forms of ``data``; a string is read with split ``train``) holds the clean labelled inputs the
    Mahalanobis model is fitted on (``method`` ``mahalanobis``, ``ensemble``, ``all``; default: the
    training split of a ``data`` string). The fitted detector is ``result.artifacts["detector"]``.
    """
    attack_given = [k for k, v in {"--preset": preset, "--attack": attack, "--loss": loss, "--queries": queries,
                                   "--norm": norm, "--eps": eps, "--alpha": alpha,
                                   "--steps": steps, "--random-start": random_start or None,
                                   "--restarts": restarts if restarts != 1 else None}.items() if v is not None]
    if detector is not None:
        clash = [k for k, v in {"--method": method, "--score": score, "--folds": folds,
                                "--only-successful": only_successful or None, "--adversarial": adversarial,
                                "--fit-data": fit_data, "--probe-steps": probe_steps, "--probe-size": probe_size,
                                "--adaptive": adaptive or None, "--adaptive-weight": adaptive_weight,
                                "--save": save, "--save-adv": save_adv, "--plot": plot}.items() if v is not None]
        clash += attack_given + (["--resume"] if resume else [])
        if clash:
            raise UsageError(f"--detector applies a saved detector, but {', '.join(clash)} belong to fitting one; "
                             "drop them, or drop --detector to fit")
        return _apply(model, data, detector, reading=_reading(resize, crop, interpolation, image_column, label_column),
                      force=force, weight_norm=weight_norm, spec=spec, arch=arch, layer=layer,
                      mean=mean, std=std, split=split, limit=limit, batch_size=batch_size, device=device, seed=seed,
                      trust_embedded_code=trust_embedded_code, samples=samples, on_rows=on_rows, progress=progress)
    if force:
        raise UsageError("--force only applies with --detector (applying a saved detector)")
    if adversarial is not None:
        if attack_given:
            raise UsageError(f"--adversarial reads ready adversarials; {', '.join(attack_given)} would be ignored: drop them")
        if save_adv is not None:
            raise UsageError("--adversarial reads ready adversarials; --save-adv would only copy them: drop it")
        if adversarial in ("", "-"):
            raise UsageError("--adversarial needs a file name")
        if resume is not None:
            raise UsageError("--resume keeps the crafted adversarials of a run; with --adversarial nothing is crafted: drop it")
        if adaptive:
            raise UsageError("--adaptive crafts adversarials against the fitted detector; with --adversarial nothing "
                             "is crafted: drop one of them")
    _check_plot(plot)
    check_outputs(save=save, save_adv=save_adv, plot=plot)
    settings = detect_run.DetectSettings.from_options(
        crafted=adversarial is None, preset=preset, attack_kind=attack, loss=loss, norm=norm, eps=eps, alpha=alpha,
        steps=steps, queries=queries, random_start=random_start, restarts=restarts, method=method, score=score,
        folds=folds, only_successful=only_successful, weight_norm=weight_norm, probe_steps=probe_steps,
        probe_size=probe_size, adaptive=adaptive, adaptive_weight=adaptive_weight,
    )
    if fit_data is not None and not settings.uses_mahalanobis:
        raise UsageError(f"--fit-data holds the data of the Mahalanobis model, which --method {settings.method} does "
                         "not use; drop it or use --method mahalanobis, ensemble or all")
    plan_inputs(adversarial=adversarial)
    ctx = _context(model, data, reading=_reading(resize, crop, interpolation, image_column, label_column),
                   spec=spec, trust_embedded_code=trust_embedded_code, arch=arch, layer=layer, mean=mean,
                   std=std, split=split, limit=limit, batch_size=batch_size, device=device, seed=seed, resume=resume,
                   progress=progress)
    adv_ds = None
    if adversarial is not None:
        adv_ds = load_data(f"tensors:{adversarial}", split, limit)
        check_compatible(adv_ds, ctx.loaded.spec.input_shape, ctx.loaded.num_classes)
    fit_ds = (_fit_data(fit_data, data, ctx, _reading(resize, crop, interpolation, image_column, label_column))
              if settings.uses_mahalanobis else None)
    return detect_run.fit(ctx, settings, adversarial=adv_ds, adversarial_path=adversarial, fit_data=fit_ds, save=save,
                          save_adv=save_adv, plot=plot, on_rows=on_rows, keep_samples=samples)


def _fit_data(fit_data, data, ctx: RunContext, reading: dict) -> DataSource:
    """The Mahalanobis model's clean labelled data: ``fit_data``, or the training split of the ``data`` string;
    never the data being scored."""
    if fit_data is None:
        source = data if data is not None else (ctx.loaded.spec.data or "digits")
        if not isinstance(source, str):
            raise UsageError("the Mahalanobis model needs clean labelled training data: pass fit_data= (the forms of "
                             "data=) when data is not a --data string")
        fit_data = source
    ds = _data(fit_data, ctx.loaded, "train", None, role="fit_data", reading=reading)
    if ds.name == ctx.data.name:
        raise UsageError(f"--fit-data would be {ds.name}, the very data the detector is tested on; pass --fit-data "
                         "with other clean labelled inputs (e.g. a training split)")
    return ds


def _apply(model, data, detector, *, force, weight_norm, layer, samples, on_rows, progress, reading,
           **common) -> Result:
    from flatcli.core.detectors import Detector
    from flatcli.inputs.detector_file import load_detector

    if not isinstance(detector, Detector):
        plan_inputs(detector=detector)
    det = detector if isinstance(detector, Detector) else load_detector(detector)  # garbage fails before loading
    det_wn = det.meta.get("weight_norm", "squared")
    if weight_norm is not None and weight_norm != det_wn:
        raise UsageError(f"--weight-norm {weight_norm} conflicts with the detector, fitted with --weight-norm {det_wn}; "
                         "drop it")
    ctx = _context(model, data, layer=layer or det.meta.get("layer"), progress=progress, reading=reading, **common)
    path = None if isinstance(detector, Detector) else str(detector)
    return detect_run.apply(ctx, det, detector_path=path, force=force, on_rows=on_rows, keep_samples=samples)


@_one_plan
def inspect(model, *, spec=None, arch=None, layer=None, trust_embedded_code=False) -> Result:
    """``flatrob inspect``: what a checkpoint holds (architecture, parameters, linear layers, specs)."""
    loaded = load(model, spec=spec, arch=arch, layer=layer, device="cpu", trust_embedded_code=trust_embedded_code)
    if loaded.checkpoint is None:
        raise UsageError("inspect describes a checkpoint file; pass its path or example:NAME")
    return inspect_run.inspect(loaded, options={"checkpoint": str(model), "spec": spec, "arch": arch, "layer": layer})


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
