"""``timm:NAME`` architectures: built by ``timm.create_model`` without weights, their head and data config.

``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=..., **arch_kwargs)`` builds any
model of timm's registry (``timm.list_models()``); the keyword arguments that would read weights
(``pretrained``, ``checkpoint_path``, ``pretrained_cfg_overlay`` naming a file) are refused, so the
checkpoint alone supplies the weights. A registry name names no code beyond the installed timm: like
``torchvision:NAME`` it may stand in a checkpoint's embedded spec. The head is timm's own
(``pretrained_cfg["classifier"]``: ``fc``, ``head``, ``head.fc``, ``classifier``); the data config
(``timm.data.model_config.resolve_input_data_config``, which sees ``img_size=``) gives the spec's
mean, std, resize, crop and interpolation (:mod:`flatcli.inputs.preprocessing`).
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from torch import nn

from flatcli.errors import SpecError
from flatcli.inputs.preprocessing import from_timm

#: Keyword arguments of ``timm.create_model`` that would load weights (from the hub, a URL or a file).
FETCHING = ("pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm():
    try:
        import timm
    except ImportError:
        raise SpecError("timm: architectures need timm: pip install 'flatrob[timm]'") from None
    return timm


def check_name(name: str) -> None:
    """:class:`SpecError` unless ``name`` is a model in timm's registry (with the closest names)."""
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}? " if close else ""
        raise SpecError(f"timm has no model {name!r}; {hint}see timm.list_models()")


def build(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)``."""
    fetching = sorted(key for key in kwargs if key in FETCHING)
    if fetching:
        raise SpecError(
            f"timm:{name} with {', '.join(fetching)} would load pretrained weights; flatrob never downloads: remove "
            f"{', '.join(fetching)} from arch_kwargs (the checkpoint supplies the weights)"
        )
    check_name(name)
    call = {"num_classes": num_classes, "in_chans": in_channels, **kwargs}
    try:
        return _timm().create_model(name, pretrained=False, **call)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise SpecError(f"cannot build timm:{name} with kwargs {kwargs}: {' '.join(str(exc).split())[:200]}; "
                        "fix arch_kwargs in the spec") from None


def registered_head(name: str) -> str | None:
    """The classifier timm's registry names for ``name`` before it is built (``None`` if not one layer)."""
    check_name(name)
    cfg = _timm().models.get_pretrained_cfg(name)
    classifier = getattr(cfg, "classifier", None)
    return classifier if isinstance(classifier, str) else None


def head_name(net: nn.Module) -> str | None:
    """timm's classifier for ``net`` (``pretrained_cfg["classifier"]``) when it is one ``nn.Linear``, else ``None``."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    if isinstance(name, (list, tuple)):
        raise SpecError(
            f"this timm model has {len(name)} heads ({', '.join(name)}) whose outputs it combines; flatrob measures "
            "one final linear layer: build it with distilled=False or name a model with one head"
        )
    if isinstance(name, str):
        try:
            if isinstance(net.get_submodule(name), nn.Linear):
                return name
        except AttributeError:
            return None
    return None


def data_defaults(net: nn.Module) -> dict[str, Any]:
    """The spec keys timm's data config gives for ``net`` as built (``img_size=`` included)."""
    from timm.data.model_config import get_model_input_config, resolve_input_data_config

    fixed = bool(get_model_input_config(net).get("fixed_input_size"))
    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)  # "Pretrained mean does not match 1 channels": the config says what is used
    try:
        config = resolve_input_data_config(net)
    finally:
        timm_log.setLevel(level)
    return from_timm(config, fixed_input_size=fixed)
