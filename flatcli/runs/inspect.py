"""``flatrob inspect``: what a checkpoint holds and how flatrob reads it, even when its architecture is unknown.

:func:`inspect` describes a loaded checkpoint; :func:`inspect_file` one that could not be loaded (no
architecture fits its keys, or the one named does not): its tensors and shapes, its 2-D weights (the
linear layers, candidates for the head) and the ``arch`` values to try
(:func:`flatcli.models.matching.suggestions`), with the reason it could not be loaded.
"""

from __future__ import annotations

from flatcli.errors import FlatrobError
from flatcli.inputs import checkpoint as ckpt
from flatcli.inputs.spec import METADATA_KEY
from flatcli.models.loading import LoadedModel, linear_layers
from flatcli.models.matching import strip_prefix, suggestions
from flatcli.models.registry import infer_in_channels
from flatcli.runs.result import Result
from flatcli.runtime.loop import versions


def describe_checkpoint(loaded: LoadedModel) -> dict:
    """Architecture (declared or detected), parameter count, candidate heads, embedded spec, a hub checkpoint's config."""
    ck = loaded.checkpoint
    net = loaded.model.net
    heads = [
        {
            "layer": name,
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
            "head": name == loaded.layer,
        }
        for name, m in linear_layers(net)
    ]
    return {
        "checkpoint": ck.name,
        "path": str(ck.path),
        "sha256": ck.sha256,
        "file_bytes": ck.path.stat().st_size,
        "tensors": len(ck.state_dict),
        "arch": loaded.spec.arch,
        "arch_source": loaded.arch_source,
        "arch_candidates": loaded.candidates,
        "parameters": sum(p.numel() for p in net.parameters()),
        "layer": loaded.layer,
        "classes": loaded.num_classes,
        "features": loaded.features,
        "linear_layers": heads,
        "embedded_spec": ck.metadata.get(METADATA_KEY),
        "hub_config": str(ck.config_path) if ck.config_path is not None else None,
        "effective_spec": loaded.spec.to_dict(),
        "image_defaults": loaded.image_defaults or None,
        "preprocessing_sources": loaded.sources,
    }


def inspect(loaded: LoadedModel, *, options: dict) -> Result:
    """The description of a loaded checkpoint; ``options`` (checkpoint, spec, arch, layer as given) go to the config."""
    summary = describe_checkpoint(loaded)
    return Result("inspect", {**options, "versions": versions()}, summary, summary["linear_layers"],
                  notes=list(loaded.notes))


def inspect_file(ref: str, error: FlatrobError, *, options: dict, located: tuple | None = None) -> Result:
    """What the checkpoint ``ref`` holds when loading it failed with ``error`` (an unknown or wrong architecture):
    ``summary`` has ``arch: null``, ``arch_error``, every tensor's name, shape and dtype, the 2-D weights as
    ``linear_layers`` (also the rows) and ``arch_candidates``, all by name; the notes say why and what to try."""
    ck = ckpt.read(ref, located)
    state = strip_prefix(ck.state_dict)
    layers = [
        {"layer": key[: -len(".weight")], "in_features": int(value.shape[1]), "out_features": int(value.shape[0]),
         "bias": f"{key[: -len('.weight')]}.bias" in state, "head": False}
        for key, value in sorted(state.items()) if key.endswith(".weight") and value.dim() == 2
    ]
    candidates = suggestions(state)
    summary = {
        "checkpoint": ck.name,
        "path": str(ck.path),
        "sha256": ck.sha256,
        "file_bytes": ck.path.stat().st_size,
        "tensors": len(ck.state_dict),
        "arch": None,
        "arch_error": str(error),
        "arch_candidates": candidates,
        "parameters": sum(t.numel() for t in ck.state_dict.values()),
        "in_channels": infer_in_channels(state),
        "linear_layers": layers,
        "tensor_shapes": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                          for k, v in sorted(ck.state_dict.items())],
        "embedded_spec": ck.metadata.get(METADATA_KEY),
        "hub_config": str(ck.config_path) if ck.config_path is not None else None,
    }
    fitting = [c["arch"] for c in candidates if c["fits"]]
    hint = (f"fits {', '.join(fitting)}" if fitting else
            f"closest: {candidates[0]['arch']}" if candidates else "no built-in or torchvision ResNet is close")
    notes = [f"note: the architecture is unknown ({error}); shown: the file's tensors and 2-D weights; "
             f"arch to try: {hint}"]
    return Result("inspect", {**options, "versions": versions()}, summary, layers, notes=notes)
