"""A model's data config (timm's, a hub ``config.json``'s, torchvision's weights transforms) as spec defaults.

timm describes how a model's inputs are prepared with ``input_size`` (C, H, W), ``mean``, ``std``,
``interpolation`` and ``crop_pct``: evaluation resizes the shorter side to ``floor(crop / crop_pct)``
and centre-crops ``crop`` (= H), as ``timm.data.create_transform(..., is_training=False)`` does.
torchvision's ``weights.transforms()`` names the same with ``resize_size`` and ``crop_size``. Either
becomes the spec keys ``mean``, ``std``, ``resize``, ``crop`` and ``interpolation``; ``input_shape``
only when the model takes one size alone (timm's ``fixed_input_size``: a ViT), since other networks
run on the data's own size (a timm ResNet on 32x32 tensors). These values describe the *pretrained*
weights: :mod:`flatcli.models.loading` uses them only where no source the user wrote sets them, and says so.
"""

from __future__ import annotations

import math
from typing import Any

from flatcli.inputs.spec import INTERPOLATIONS


def from_timm(cfg: dict[str, Any], *, fixed_input_size: bool = False) -> dict[str, Any]:
    """Spec keys from a timm data config (``resolve_data_config``'s dict, or a hub config's ``pretrained_cfg``).

    ``resize = floor(crop / crop_pct)`` (timm's eval transform), ``crop`` the config's H; values timm
    does not give, or that flatrob does not use (``interpolation: random``), are left out.
    """
    out: dict[str, Any] = {}
    size = cfg.get("input_size")
    if _ints(size, 3):
        channels, height, width = (int(s) for s in size)
        if height == width:
            out["crop"] = height
            crop_pct = cfg.get("crop_pct")
            if _number(crop_pct) and 0 < crop_pct <= 1:
                out["resize"] = int(math.floor(height / crop_pct))
        if fixed_input_size:
            out["input_shape"] = (channels, height, width)
    for key in ("mean", "std"):
        values = cfg.get(key)
        if isinstance(values, (list, tuple)) and values and all(_number(v) for v in values):
            out[key] = tuple(float(v) for v in values)
    if cfg.get("interpolation") in INTERPOLATIONS:
        out["interpolation"] = cfg["interpolation"]
    return out


def from_torchvision(transform) -> dict[str, Any]:
    """Spec keys from a torchvision ``weights.transforms()`` object (``ImageClassification``)."""
    out: dict[str, Any] = {}
    for key, attr in (("resize", "resize_size"), ("crop", "crop_size")):
        value = getattr(transform, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    for key in ("mean", "std"):
        values = getattr(transform, key, None)
        if isinstance(values, (list, tuple)) and values:
            out[key] = tuple(float(v) for v in values)
    mode = getattr(getattr(transform, "interpolation", None), "value", None)
    if mode in INTERPOLATIONS:
        out["interpolation"] = mode
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ints(value, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
