"""From a checkpoint (or an in-memory ``nn.Module``), a spec and overrides to a ready model and its head.

Resolution order for every setting of a checkpoint: command-line option, then ``--spec FILE``, then
the spec embedded in the checkpoint metadata (``flatrob.spec``), then a hub checkpoint's ``config.json``,
then what the architecture's own data config gives (timm's, torchvision's weights transforms: mean, std,
resize, crop, interpolation), then what the state dict itself tells (architecture by matching keys and
shapes, classes from the head's weight, channels from the first convolution). An in-memory network
(:func:`from_module`, the Python API) brings its own weights; its head is the layer named, or its last
``nn.Linear``.

Pretrained data configs (timm's, torchvision's weights, a hub config's ``pretrained_cfg``) describe the
architecture's *pretrained* weights, not necessarily this checkpoint: their mean/std are used only where no
source the user wrote (option, ``--spec``, embedded spec) sets them, with a note saying so; their
resize/crop/interpolation only for image files of any size (``folder:``, ``hf:``; :attr:`LoadedModel.image_defaults`),
and not at all once the user gives ``input_shape`` (it sets the crop) or arch_kwargs that adapt the stem.
:attr:`LoadedModel.sources` says where each preprocessing value came from.

Trust: code is named only by the person running the command (``--arch module.path:Class``, or a
``--spec`` file they pass). An embedded spec whose ``arch`` names a module to import is refused before
anything is imported (a hub config names a timm model, never a module), unless ``trust_embedded_code``
(``--trust-embedded-code``) says the checkpoint's author is trusted. Code allowed so is imported from the
current directory (the user's project) first, then ``PYTHONPATH`` and the installed packages
(:func:`flatcli.models.registry._import_attr`); :attr:`LoadedModel.arch_file` records the file its class came
from. Resources: the network is first built on the ``meta`` device (nothing allocated) and its keys and shapes
compared with the state dict, and its buffers beyond the state dict capped (:data:`MAX_EXTRA_BYTES`), so a few-KB
spec cannot make flatrob allocate gigabytes.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli.core.classifier import Classifier
from flatcli.errors import CheckpointError, LayerError, OptionError, SpecError
from flatcli.inputs import checkpoint as ckpt
from flatcli.inputs.spec import METADATA_KEY, Spec, parse_spec, read_spec_file
from flatcli.models import stems
from flatcli.models.arch_forms import names_code
from flatcli.models.builtins import BUILTINS
from flatcli.models.matching import (check_fits, describe_candidates, detect, load_state, strip_prefix,
                                     torchvision_resnets)
from flatcli.models.registry import (class_file, data_defaults, default_head, infer_in_channels,
                                     infer_num_classes, known_head, kwargs_naming_code)

#: What a network may allocate beyond its state dict (non-persistent buffers and the like): the larger of
#: this and the checkpoint's own tensors.
MAX_EXTRA_BYTES = 64 * 1024 * 1024
#: Layers a "no such layer" error names when none is close to the name given.
MAX_NAMED = 20
#: Spec keys of image preprocessing (see :attr:`LoadedModel.image_defaults`).
IMAGE_KEYS = ("resize", "crop", "interpolation")
#: Spec keys a pretrained data config gives (they describe pretrained weights, not necessarily this checkpoint).
PRETRAINED_KEYS = ("mean", "std", *IMAGE_KEYS)
#: Spec keys of how inputs are prepared, whose sources :attr:`LoadedModel.sources` records.
PREPROCESSING_KEYS = ("mean", "std", "input_shape", *IMAGE_KEYS)
#: Sources the user wrote (as opposed to a data config describing pretrained weights).
USER_SOURCES = ("option", "spec file", "embedded spec")


@dataclass
class LoadedModel:
    """A classifier ready to measure: the wrapped network, its head, and where it came from.

    ``checkpoint`` is the file it was read from, or ``None`` for an in-memory network (then
    ``weights_sha256`` identifies its weights instead of the file's hash).
    """

    model: Classifier  # on the chosen device
    head: nn.Linear
    layer: str  # head name, relative to the network
    spec: Spec  # the effective spec (every resolved value filled in)
    #: "option", "spec", "config" (a hub config.json), "detected" (the one network with these keys and shapes),
    #: "keys" (a built-in whose keys other networks share: see ``candidates``) or "module"
    arch_source: str
    checkpoint: ckpt.Checkpoint | None = None
    weights_sha256: str | None = None
    #: resize/crop/interpolation from the architecture's own data config (timm's, torchvision's weights): they
    #: describe its pretrained weights, not this checkpoint, so only files of any size (``folder:``, ``hf:``) use
    #: them; a data set with its own fixed size (CIFAR, MNIST, tensors) is resized only when the spec says so.
    image_defaults: dict = field(default_factory=dict)
    #: With ``arch_source`` "keys": the other networks (``{"arch", "arch_kwargs"}``) the checkpoint's keys and
    #: shapes fit as well, which compute different functions.
    candidates: list[dict] = field(default_factory=list)
    #: Lines for people about what loading assumed (every run passes them on as notes).
    notes: list[str] = field(default_factory=list)
    #: Where each preprocessing value (:data:`PREPROCESSING_KEYS`) came from: "option", "spec file", "embedded
    #: spec", "hub config", "<arch> data config" (pretrained weights') or "default" (mean 0, std 1).
    sources: dict[str, str] = field(default_factory=dict)
    #: For a ``module.path:Class`` (or ``path/to/file.py:Class``) architecture: the file its class was read from.
    arch_file: str | None = None

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def features(self) -> int:
        return self.head.in_features

    @property
    def name(self) -> str:
        """The checkpoint as the user named it, or ``in-memory <class>`` for a network."""
        return self.checkpoint.name if self.checkpoint is not None else f"in-memory {self.spec.arch}"

    @property
    def fingerprint(self) -> dict:
        """What identifies the weights: ``{"checkpoint_sha256": ...}`` of the file, else ``{"weights_sha256": ...}``."""
        if self.checkpoint is not None:
            return {"checkpoint_sha256": self.checkpoint.sha256}
        return {"weights_sha256": self.weights_sha256}

    def describe(self) -> dict:
        """Provenance for the ``config`` section of every output."""
        return {
            "checkpoint": self.checkpoint.name if self.checkpoint is not None else None,
            **self.fingerprint,
            "arch": self.spec.arch,
            "arch_source": self.arch_source,
            "layer": self.layer,
            "classes": self.num_classes,
            "features": self.features,
            **({"arch_file": self.arch_file} if self.arch_file else {}),
            **({"arch_candidates": self.candidates} if self.candidates else {}),
            **({"preprocessing_sources": self.sources} if self.pretrained_data else {}),
        }

    @property
    def pretrained_data(self) -> bool:
        """Whether some preprocessing value comes from a data config describing pretrained weights."""
        return any(source not in (*USER_SOURCES, "default") for source in self.sources.values())


def effective_spec(checkpoint: ckpt.Checkpoint, spec_file: str | None, overrides: dict, *,
                   trust_embedded_code: bool = False) -> tuple[Spec, str]:
    """Hub config, then embedded spec, then ``--spec`` file, then options; returns the spec and where ``arch``
    came from (``config``, ``spec`` or ``option``); see :func:`resolve_spec`."""
    return resolve_spec(checkpoint, spec_file, overrides, trust_embedded_code=trust_embedded_code)[:2]


def resolve_spec(checkpoint: ckpt.Checkpoint, spec_file: str | None, overrides: dict, *,
                 trust_embedded_code: bool = False) -> tuple[Spec, str, dict[str, str], dict]:
    """Hub config, then embedded spec, then ``--spec`` file, then options (``input_shape`` three whole
    numbers); returns the spec, where ``arch`` came from (``config``, ``spec`` or ``option``), where each
    preprocessing value came from, and the hub config's pretrained data values (:data:`PRETRAINED_KEYS`) that
    no other source sets, which stay out of the spec (:func:`load_model` weighs them).

    An ``arch`` that names code (``module.path:Class``) and comes from the embedded spec is refused, before
    anything is imported, unless ``trust_embedded_code``; so are ``arch_kwargs`` naming classes to import
    (``block: module:Name``) that reach such an arch from the checkpoint rather than a ``--spec`` file.
    """
    overrides = _option_values(overrides)
    embedded = checkpoint.metadata.get(METADATA_KEY)
    spec = parse_spec(embedded, f"the spec embedded in {checkpoint.name}") if embedded else Spec()
    sources = _set_by(spec, "embedded spec", {})
    source = "spec" if spec.arch else ""
    hub_data = {k: v for k, v in checkpoint.config.items() if k in PRETRAINED_KEYS}
    if checkpoint.config:
        source = source or ("config" if checkpoint.config.get("arch") else "")
        given = {k: v for k, v in vars(spec).items() if v not in (None, (), {})}
        spec = Spec().merged(**{k: v for k, v in checkpoint.config.items() if k not in PRETRAINED_KEYS}).merged(**given)
        sources = {**_set_by(spec, "hub config", {}), **sources}
    from_embedded = bool(spec.arch)
    if spec_file:
        from_file = read_spec_file(spec_file)
        spec = spec.merged(**{k: v for k, v in vars(from_file).items() if v not in (None, (), {})})
        sources = _set_by(from_file, "spec file", sources)
        source = "spec" if from_file.arch else source
        from_embedded = from_embedded and not from_file.arch
    if overrides.get("arch"):
        source = "option"
        from_embedded = False
    if from_embedded and names_code(spec.arch) and not trust_embedded_code:
        raise SpecError(
            f"the spec embedded in {checkpoint.name} names code to import (arch: {spec.arch}), and flatrob imports "
            f"only code you name: pass --arch {spec.arch} if you trust it, or --trust-embedded-code "
            "(API: trust_embedded_code=True) to let the checkpoint's own spec name it"
        )
    spec = spec.merged(**overrides)
    sources = _set_by(Spec(**{k: v for k, v in overrides.items() if k in PREPROCESSING_KEYS}), "option", sources)
    if names_code(spec.arch) and not trust_embedded_code and not (spec_file and from_file.arch_kwargs):
        # the user named the class; kwargs naming classes to import must come from them too
        named = kwargs_naming_code(spec.arch_kwargs)
        if named:
            raise SpecError(
                f"{checkpoint.name} (its embedded spec or config.json) gives arch_kwargs naming code to import "
                f"({named[0]}), and "
                "flatrob imports only code you name: put those arch_kwargs in a --spec file, or pass "
                "--trust-embedded-code (API: trust_embedded_code=True)"
            )
    return spec, source, sources, {k: v for k, v in hub_data.items() if getattr(spec, k) is None}


def _option_values(overrides: dict) -> dict:
    """Options as spec values: ``input_shape`` (numbers from the option group) as three whole numbers."""
    shape = overrides.get("input_shape")
    if shape is None:
        return overrides
    values = tuple(shape)
    if len(values) != 3 or any(isinstance(v, bool) or v != int(v) or v < 1 for v in values):
        raise OptionError("input_shape", f"{{}} must be three whole numbers C,H,W, got {','.join(str(v) for v in values)}")
    return {**overrides, "input_shape": tuple(int(v) for v in values)}


def _set_by(spec: Spec, name: str, sources: dict[str, str]) -> dict[str, str]:
    """``sources`` with every preprocessing key ``spec`` sets attributed to ``name``."""
    return {**sources, **{k: name for k in PREPROCESSING_KEYS if getattr(spec, k) is not None}}


def load_model(
    ref: str,
    *,
    spec_file: str | None = None,
    overrides: dict | None = None,
    device: torch.device | str = "cpu",
    trust_embedded_code: bool = False,
    located: tuple | None = None,
) -> LoadedModel:
    """Read the checkpoint, resolve the spec, build the network, load weights, find the head.

    ``located``: what :func:`flatcli.inputs.checkpoint.locate` returned for ``ref``, if the caller has it."""
    checkpoint = ckpt.read(ref, located)
    spec, arch_source, sources, hub_data = resolve_spec(checkpoint, spec_file, overrides or {},
                                                        trust_embedded_code=trust_embedded_code)
    state = strip_prefix(checkpoint.state_dict, spec.strip_prefix or "module.")
    kwargs = dict(spec.arch_kwargs)
    if spec.arch:
        arch = spec.arch
        info = BUILTINS.get(arch)
        if info is not None and not kwargs:
            kwargs = info.infer_kwargs(state) or {}  # sizes (width, hidden, ...) read off the weights
    else:
        arch, detected_kwargs, others = detect(state)
        kwargs = {**detected_kwargs, **kwargs}
        arch_source = "keys" if others else "detected"
    in_channels = spec.input_shape[0] if spec.input_shape else infer_in_channels(state)
    head_name = spec.layer or known_head(arch)
    num_classes = spec.num_classes
    if num_classes is None:
        head_name = head_name or _skeleton_head(arch, in_channels, kwargs)
        if head_name is None:
            raise SpecError(f"cannot tell the number of classes of {ref}; add num_classes: or layer: to the spec")
        num_classes = infer_num_classes(state, head_name)
    try:
        net = build_fitting(arch, state, num_classes=num_classes, in_channels=in_channels, kwargs=kwargs)
    except CheckpointError as exc:
        raise _with_stems(exc, arch, state) from None
    load_state(net, state)
    if head_name is None:
        head_name = default_head(arch, net)
    head = find_linear(net, head_name)
    defaults, given_by = _pretrained(arch, net, kwargs, hub_data, spec, sources, in_channels)
    image_defaults = {key: defaults.pop(key) for key in IMAGE_KEYS if key in defaults}
    spec = spec.merged(**defaults)
    sources = {"mean": "default", "std": "default", **sources, **{k: given_by[k] for k in (*defaults, *image_defaults)}}
    mean, std = per_channel(spec.mean, spec.std, in_channels)
    model = Classifier(net, mean, std).to(device).eval()
    spec = spec.merged(
        arch=arch, arch_kwargs=kwargs or None, layer=head_name, num_classes=num_classes, mean=tuple(mean), std=tuple(std)
    )
    loaded = LoadedModel(model=model, head=head, layer=head_name, spec=spec, arch_source=arch_source,
                         checkpoint=checkpoint, image_defaults=image_defaults, sources=sources,
                         arch_file=class_file(net) if names_code(arch) else None)
    loaded.notes += _normalisation_note(defaults, given_by)
    if arch_source == "keys":
        loaded.candidates = [{"arch": name, "arch_kwargs": kw} for name, kw in others]
        loaded.notes.append(
            f"note: the architecture comes from the checkpoint's keys alone: they fit {arch} "
            f"({BUILTINS[arch].description}) and equally {describe_candidates(others)}, which compute other functions; "
            f"measured as {arch}: if another was trained, name it (arch: and arch_kwargs: in a spec, or --arch)"
        )
    return loaded


def _with_stems(error: CheckpointError, arch: str, state: dict) -> CheckpointError:
    """``error`` (the checkpoint does not fit ``arch``), naming the stem ``arch_kwargs`` with which it does when
    ``arch`` is a torchvision ResNet whose stem was replaced for small images (:mod:`flatcli.models.stems`)."""
    fitting = [(name, kwargs) for name, kwargs in torchvision_resnets(state) if name == arch and kwargs]
    if not fitting:
        return error
    which = "the one trained" if len(fitting) > 1 else "it"
    return CheckpointError(f"{error}; it fits {describe_candidates(fitting)}: name {which} with arch_kwargs: in a "
                           "spec (--spec FILE)")


def _pretrained(arch: str, net: nn.Module, kwargs: dict, hub_data: dict, spec: Spec, sources: dict[str, str],
                channels: int) -> tuple[dict, dict[str, str]]:
    """The pretrained data config's values no source of ``spec`` sets (the hub config's over the
    architecture's), and which config gave each. Nothing when arch_kwargs adapt the stem (another network than the
    one the config describes); no resize/crop once the user gave ``input_shape`` (it sets the crop)."""
    own = {} if stems.split(kwargs)[1] else data_defaults(arch, net)
    given_by = {**{k: f"{arch} data config" for k in own}, **{k: "hub config" for k in hub_data}}
    defaults = _unset(spec, {**own, **hub_data}, channels)
    if sources.get("input_shape") in USER_SOURCES:
        defaults.pop("resize", None)
        defaults.pop("crop", None)
    return defaults, given_by


def _normalisation_note(defaults: dict, given_by: dict[str, str]) -> list[str]:
    """One line for a pretrained config's normalisation, saying where it came from (none when the spec set it)."""
    if "mean" not in defaults and "std" not in defaults:
        return []
    used = ", ".join(f"{k} {list(defaults[k])}" for k in ("mean", "std") if k in defaults)
    where = given_by.get("mean", given_by.get("std"))
    return [f"note: normalisation {used} comes from the {where}, which describes pretrained weights; if this "
            "checkpoint was trained with another, give mean/std (options or spec)"]


def pretrained_sizes_note(loaded: "LoadedModel") -> str:
    """The line said when image files are read with a pretrained config's sizes
    (:attr:`LoadedModel.image_defaults`; the data reader adds it only when it used them)."""
    used = [k for k in IMAGE_KEYS if k in loaded.image_defaults]
    sizes = ", ".join(f"{k} {loaded.image_defaults[k]}" for k in used)
    where = loaded.sources.get(used[0], "pretrained data config")
    return (f"note: image files are read with {sizes} from the {where}, which describes pretrained weights; if this "
            "checkpoint was trained on other sizes, give input_shape (it sets the crop) or resize/crop")


def _unset(spec: Spec, defaults: dict, channels: int) -> dict:
    """The ``defaults`` whose keys no source of ``spec`` set; mean/std only if they have ``channels`` values
    (a timm model built with ``in_chans=1`` keeps ImageNet's three in its config)."""
    out = {key: value for key, value in defaults.items() if getattr(spec, key) is None}
    if len(out.get("mean", ())) not in (0, channels) or len(out.get("std", ())) not in (0, channels):
        out.pop("mean", None)
        out.pop("std", None)
    if out.get("input_shape") and out["input_shape"][0] != channels:
        out.pop("input_shape")
    return out


def build_fitting(arch: str, state: dict, *, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    """The network, built for real only once its meta-device twin has the state dict's keys and shapes and
    allocates at most :data:`MAX_EXTRA_BYTES` (or the checkpoint's size) beyond them.

    A ``module.path:Class`` that cannot be built on the meta device (it computes with its tensors in
    ``__init__``) is built directly: it is code the user named.
    """
    try:
        with torch.device("meta"):
            skeleton = stems.build(arch, num_classes=num_classes, in_channels=in_channels, kwargs=kwargs)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        if not names_code(arch):
            raise SpecError(f"cannot build {arch} with kwargs {kwargs}: {' '.join(str(exc).split())[:200]}") from None
        skeleton = None
    if skeleton is not None:
        check_fits(skeleton, state)
        state_bytes = sum(t.numel() * t.element_size() for t in state.values())
        net_bytes = sum(t.numel() * t.element_size() for t in (*skeleton.parameters(), *skeleton.buffers()))
        allowed = state_bytes + max(MAX_EXTRA_BYTES, state_bytes)
        if net_bytes > allowed:
            raise SpecError(
                f"{arch} with kwargs {kwargs} would allocate {net_bytes / 2**20:.0f} MiB, more than its checkpoint's "
                f"{state_bytes / 2**20:.1f} MiB of tensors allows ({allowed / 2**20:.0f} MiB); fix arch_kwargs in the spec"
            )
    return stems.build(arch, num_classes=num_classes, in_channels=in_channels, kwargs=kwargs)


def per_channel(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation with one value per input channel (default mean 0, std 1; one value is repeated)."""
    mean = tuple(mean) if mean else (0.0,) * channels
    std = tuple(std) if std else (1.0,) * channels
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise SpecError(f"mean/std need {channels} values (one per input channel), got {len(mean)}/{len(std)}")
    return mean, std


def from_module(net: nn.Module, *, layer: str | None = None, mean=None, std=None, in_channels: int | None = None,
                device: torch.device | str = "cpu") -> LoadedModel:
    """An in-memory network as a :class:`LoadedModel` (the Python API's ``model=nn.Module``).

    ``layer`` names the head (an ``nn.Linear``); without it the head is the network's last ``nn.Linear``
    (the first batch then checks that it really is the last linear map). ``mean``/``std`` normalise the
    [0, 1] inputs inside the model (default none), one value per channel or one for all; ``in_channels``
    (default: the channels of the first convolution, else as many as ``mean``/``std`` give, else 1) sizes them.
    An already wrapped :class:`~flatcli.core.classifier.Classifier` is used as it is. The weights are
    identified by ``weights_sha256``, a hash of every tensor of the state dict (names, dtypes, shapes, bytes).
    """
    if not isinstance(net, nn.Module):
        raise SpecError(f"model must be an nn.Module, a checkpoint path or example:NAME, got {type(net).__name__}")
    if isinstance(net, Classifier):
        model, net = net, net.net
    else:
        state = net.state_dict()
        if in_channels is None and any(v.dim() == 4 for v in state.values()):
            in_channels = infer_in_channels(state)
        channels = in_channels or max(len(mean or ()), len(std or ()), 1)
        mean, std = per_channel(mean, std, channels)
        model = Classifier(net, mean, std)
    if layer is None:
        linears = linear_layers(net)
        if not linears:
            raise LayerError(f"{type(net).__name__} has no nn.Linear layer to use as the head; pass layer=")
        layer = linears[-1][0]
    head = find_linear(net, layer)
    model = model.to(device)
    arch = f"{type(net).__module__}:{type(net).__qualname__}"
    spec = Spec(arch=arch, layer=layer, num_classes=head.out_features,
                mean=tuple(float(v) for v in model.normalize.mean.flatten()),
                std=tuple(float(v) for v in model.normalize.std.flatten()))
    return LoadedModel(model=model, head=head, layer=layer, spec=spec, arch_source="module",
                       weights_sha256=weights_sha256(net))


def weights_sha256(net: nn.Module) -> str:
    """sha256 over the state dict, key by key in sorted order: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _skeleton_head(arch: str, in_channels: int, kwargs: dict) -> str | None:
    """The default head of ``arch`` built on the meta device (nothing allocated) with one class, or ``None``
    when it cannot be built that way (the classes are then needed to build it); a bad name is its error."""
    try:
        with torch.device("meta"):
            skeleton = stems.build(arch, num_classes=1, in_channels=in_channels, kwargs=kwargs)
        return default_head(arch, skeleton)
    except (LayerError, RuntimeError, NotImplementedError, TypeError, ValueError):
        return None


def find_module(net: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``net``; LayerError with the closest names when absent."""
    names = [n for n, _ in net.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        more = f" (+{len(names) - MAX_NAMED} more: inspect lists them)" if len(names) > MAX_NAMED else ""
        hint = f"; closest: {', '.join(close)}" if close else f"; layers: {', '.join(names[:MAX_NAMED])}{more}"
        raise LayerError(f"the network has no layer {name!r}{hint}")
    return net.get_submodule(name)


def find_linear(net: nn.Module, name: str) -> nn.Linear:
    module = find_module(net, name)
    if not isinstance(module, nn.Linear):
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise LayerError(
            f"layer {name!r} is a {type(module).__name__}, not nn.Linear; linear layers: {', '.join(linears) or 'none'}"
        )
    return module


def linear_layers(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of the network: the candidates for the head."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
