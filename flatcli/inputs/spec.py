"""The layer spec: which architecture a checkpoint holds, which layer is the head, how inputs look.

A spec is a small YAML (or JSON) mapping, read from ``--spec FILE`` or from the safetensors metadata
key ``flatrob.spec``. Every key is optional; command-line options override it::

    arch: resnet18              # built-in name, torchvision:NAME, or module.path:ClassName
    arch_kwargs: {}             # keyword arguments for the builder
    layer: fc                   # the head: an nn.Linear, named relative to the network
    num_classes: 10             # default: rows of the head's weight
    input_shape: [3, 32, 32]    # C, H, W of one input in [0, 1]
    mean: [0.4914, 0.4822, 0.4465]   # normalisation applied inside the model
    std: [0.2470, 0.2435, 0.2616]
    strip_prefix: "module."     # removed from every state-dict key that has it
    layers: [layer4.1.conv2]    # earlier layers for Hutchinson traces
    data: cifar10:~/data        # default --data
    resize: 256                 # images read from files: shorter side resized to this many pixels,
    crop: 224                   # then centre-cropped to this square (default: input_shape's H, W)
    interpolation: bilinear     # bilinear, bicubic or nearest (resizing only)

Documents are read with YAML's safe loader, size-limited (files too: at most :data:`MAX_SPEC_BYTES` are
ever read, whatever ``stat`` says), anchors/aliases are refused before loading (no "billion laughs"), and
a key given twice in one mapping is refused naming both lines (YAML would keep the last silently).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flatcli.errors import SpecError
from flatcli.inputs.text import read_text

MAX_SPEC_BYTES = 64 * 1024
#: ``interpolation:`` values (torchvision's ``InterpolationMode`` names).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: The largest ``resize:`` / ``crop:`` side in pixels.
MAX_SIDE = 65536
METADATA_KEY = "flatrob.spec"


@dataclass(frozen=True)
class Spec:
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    strip_prefix: str | None = None
    layers: tuple[str, ...] = ()
    data: str | None = None
    resize: int | None = None
    crop: int | None = None
    interpolation: str | None = None

    def merged(self, **overrides: Any) -> "Spec":
        """A copy with every override that is not ``None`` applied (command-line options win)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return validate(dataclasses.replace(self, **given))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML output; ``None`` and empty fields left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == () or value == {}:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


FIELDS = [f.name for f in dataclasses.fields(Spec)]


def _refuse_aliases(text: str | bytes) -> None:
    """Scan the YAML event stream first: anchors and aliases are refused before anything is built."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecError(f"YAML anchors and aliases are not allowed in a spec (line {event.start_mark.line + 1})")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: yaml.Mark, second: yaml.Mark):
        where = (f"lines {first.line + 1} and {second.line + 1}" if first.line != second.line else
                 f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}")
        super().__init__(f"key {key!r} appears twice in one mapping ({where})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key that appears twice in one mapping (instead of keeping the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first:
                        raise _DuplicateKey(key, first[key], key_node.start_mark)
                    first[key] = key_node.start_mark
                except TypeError:  # an unhashable key: the base loader reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def parse_spec(text: str | bytes, origin: str = "spec") -> Spec:
    """Parse a YAML/JSON spec document; ``origin`` names it in error messages."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{origin} is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few lines")
    try:
        _refuse_aliases(text)
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except SpecError:
        raise
    except _DuplicateKey as e:
        raise SpecError(f"{origin}: {e}; keep one") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise SpecError(f"{origin} is not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise SpecError(f"{origin} is not valid YAML: {e}") from None
    if doc is None:
        return Spec()
    if not isinstance(doc, dict):
        raise SpecError(f"{origin} must be a mapping of keys ({', '.join(FIELDS)}), got {type(doc).__name__}")
    return from_mapping(doc, origin)


def read_spec_text(path: str | Path) -> tuple[Spec, str]:
    """The spec in the file ``path`` (at most :data:`MAX_SPEC_BYTES` read) and its text."""
    p = Path(path).expanduser()
    text = read_text(p, limit=MAX_SPEC_BYTES, what="spec", error=SpecError)
    return parse_spec(text, f"spec {p}"), text


def read_spec_file(path: str | Path) -> Spec:
    """The spec in the file ``path`` (:class:`SpecError` naming it if unreadable or invalid)."""
    return read_spec_text(path)[0]


def from_mapping(doc: dict, origin: str = "spec") -> Spec:
    unknown = [k for k in doc if k not in FIELDS]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(FIELDS)}"
        raise SpecError(f"{origin}: unknown key {key!r}{hint}")
    try:
        spec = Spec(
            arch=_opt(doc, "arch", str),
            arch_kwargs=_kwargs(doc.get("arch_kwargs")),
            layer=_opt(doc, "layer", str),
            num_classes=_opt(doc, "num_classes", int),
            input_shape=_tuple(doc.get("input_shape"), int),
            mean=_tuple(doc.get("mean"), float),
            std=_tuple(doc.get("std"), float),
            strip_prefix=_opt(doc, "strip_prefix", str),
            layers=_tuple(doc.get("layers"), str) or (),
            data=_opt(doc, "data", str),
            resize=_opt(doc, "resize", int),
            crop=_opt(doc, "crop", int),
            interpolation=_opt(doc, "interpolation", str),
        )
    except SpecError as e:
        raise SpecError(f"{origin}: {e}") from None
    try:
        return validate(spec)
    except SpecError as e:
        raise SpecError(f"{origin}: {e}") from None


def validate(spec: Spec) -> Spec:
    """Check ranges and consistency; returns the spec unchanged."""
    if spec.num_classes is not None and spec.num_classes < 1:
        raise SpecError(f"num_classes must be at least 1, got {spec.num_classes}")
    if spec.input_shape is not None:
        if len(spec.input_shape) != 3 or min(spec.input_shape) < 1 or max(spec.input_shape) > MAX_SIDE:
            raise SpecError(f"input_shape must be [C, H, W] with positive sizes, got {list(spec.input_shape)}")
    for name in ("resize", "crop"):
        side = getattr(spec, name)
        if side is not None and not 1 <= side <= MAX_SIDE:
            raise SpecError(f"{name} must be a side in pixels from 1 to {MAX_SIDE}, got {side}")
    if spec.interpolation is not None and spec.interpolation not in INTERPOLATIONS:
        raise SpecError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {spec.interpolation!r}")
    if spec.std is not None and any(not (s > 0) for s in spec.std):
        raise SpecError(f"std must be positive, got {list(spec.std)}")
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if values is not None:
            if any(v != v or v in (float("inf"), float("-inf")) for v in values):
                raise SpecError(f"{name} must be finite, got {list(values)}")
            if spec.input_shape is not None and len(values) not in (1, spec.input_shape[0]):
                raise SpecError(
                    f"{name} has {len(values)} values but input_shape has {spec.input_shape[0]} channels"
                )
    return spec


def _opt(doc: dict, key: str, kind: type):
    value = doc.get(key)
    if value is None:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise SpecError(f"{key} must be {'an integer' if kind is int else 'a string'}, got {value!r}")
    return value


def _tuple(value, kind: type):
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and kind is not str:
        value = [value]
    if isinstance(value, str) and kind is str:
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise SpecError(f"expected a list, got {value!r}")
    out = []
    for v in value:
        if kind is str and not isinstance(v, str):
            raise SpecError(f"expected layer names, got {v!r}")
        if kind in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SpecError(f"expected numbers, got {v!r}")
        if kind is int and v != int(v):
            raise SpecError(f"expected integers, got {v!r}")
        out.append(kind(v))
    return tuple(out)


def _kwargs(value) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"arch_kwargs must be a mapping of names to values, got {value!r}")
    return dict(value)
