"""``robustbench:DATASET/THREAT/NAME`` architectures: RobustBench's model zoo entries, built without downloading.

``robustbench.model_zoo.model_dicts[dataset][threat][name]["model"]()`` is the constructor
``robustbench.utils.load_model`` calls before it downloads the weights; flatrob calls only it, so the
network comes with its own normalisation (``mu``/``sigma`` buffers or a ``normalize`` layer inside its
forward: inputs stay in [0, 1], and the spec's mean/std default to none) and its own activation (a
``DMWideResNet`` with Swish), and the checkpoint supplies the weights. A zoo entry names no code beyond
the installed robustbench: it may stand in a checkpoint's embedded spec.

Entries whose forward returns probabilities (ensembles averaging softmaxes, such as
``cifar10/Linf/Chen2020Adversarial``) are refused: the closed forms need logits. The test is on the
network's output, not its class name: one forward pass on two inputs of the data set's size, and rows
that all lie in [0, 1] and sum to 1 (to 1e-4) are probabilities. Random or trained weights alike, a
softmax output passes that test and logits do not.

robustbench 1.1.1 imports ``autoattack``, which its dependency ``pyautoattack`` installs as
``pyautoattack``: when ``autoattack`` is missing, :func:`zoo` registers ``pyautoattack`` under that name
before importing robustbench (docs/models.md, "Installing RobustBench", says how to install it).
"""

from __future__ import annotations

import difflib
import importlib
import sys
import warnings

import torch
from torch import nn

from flatcli.errors import SpecError

#: Input size of one image of each RobustBench data set (C, H, W).
INPUT_SIZES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
INSTALL = ("robustbench: architectures need robustbench 1.1.1, whose published requirements do not install: "
           "pip install 'flatrob[robustbench]' && pip install --no-deps robustbench==1.1.1")


def zoo():
    """``robustbench.model_zoo.model_dicts``, imported quietly (``autoattack`` provided by ``pyautoattack``)."""
    try:
        importlib.import_module("autoattack")
    except ImportError:
        try:
            sys.modules["autoattack"] = importlib.import_module("pyautoattack")
            sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
        except ImportError:
            raise SpecError(INSTALL) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecated module paths, pkg_resources
        try:
            from robustbench.model_zoo import model_dicts
        except ImportError as exc:
            raise SpecError(f"{INSTALL} ({exc})") from None
    return model_dicts


def parse(ref: str) -> tuple[str, str, str]:
    """``DATASET/THREAT/NAME`` -> its three parts (:class:`SpecError` naming the form otherwise)."""
    parts = ref.split("/")
    if len(parts) != 3 or not all(parts):
        raise SpecError(f"robustbench:{ref} must look like robustbench:DATASET/THREAT/NAME, "
                        "e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled")
    return parts[0], parts[1], parts[2]


def entry(ref: str) -> dict:
    """The zoo entry (``{"model": constructor, "gdrive_id": ...}``) that ``ref`` names."""
    dataset, threat, name = parse(ref)
    dicts = zoo()
    datasets = {d.value: d for d in dicts}
    if dataset not in datasets:
        raise SpecError(f"RobustBench has no data set {dataset!r}; data sets: {', '.join(datasets)}")
    threats = {t.value: t for t in dicts[datasets[dataset]]}
    if threat not in threats:
        raise SpecError(f"RobustBench has no threat model {threat!r} for {dataset}; threat models: {', '.join(threats)}")
    models = dicts[datasets[dataset]][threats[threat]]
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SpecError(f"RobustBench's {dataset}/{threat} zoo has no model {name!r}; {hint}"
                        f"see robustbench.model_zoo.model_dicts")
    return models[name]


def build(ref: str) -> nn.Module:
    """The zoo entry's network (its constructor only: nothing downloaded), refused if it returns probabilities."""
    dataset = parse(ref)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = entry(ref)["model"]()
        except (RuntimeError, NotImplementedError, TypeError, ValueError, AssertionError) as exc:
            raise SpecError(f"cannot build robustbench:{ref}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(net, nn.Module):
        raise SpecError(f"robustbench:{ref} builds a {type(net).__name__}, not a network")
    if not any(p.is_meta for p in net.parameters()):
        check_logits(net, INPUT_SIZES.get(dataset, (3, 32, 32)), f"robustbench:{ref}")
    return net


def check_logits(net: nn.Module, input_size: tuple[int, int, int], what: str) -> None:
    """:class:`SpecError` when ``net``'s output on two random inputs in [0, 1] are probabilities (rows in
    [0, 1] summing to 1): the closed forms need logits. The network's train/eval mode is kept."""
    mode = net.training
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2, *input_size), generator=generator)
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SpecError(f"{what} fails on inputs of shape {input_size}: {' '.join(str(exc).split())[:200]}") from None
    finally:
        net.train(mode)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(f"{what} returns {shape}, not logits of shape (batch, classes)")
    out = out.double()
    if bool(((out >= 0) & (out <= 1)).all()) and bool(((out.sum(dim=1) - 1).abs() <= 1e-4).all()):
        raise SpecError(
            f"{what} returns probabilities (every row in [0, 1], summing to 1: an ensemble averaging softmaxes), "
            "not logits; the closed forms of flatrob need the logits: pick another zoo entry"
        )
