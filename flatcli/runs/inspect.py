"""``flatrob inspect``: what a checkpoint holds and how flatrob reads it."""

from __future__ import annotations

from flatcli.inputs.spec import METADATA_KEY
from flatcli.models.loading import LoadedModel, linear_layers
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
        "parameters": sum(p.numel() for p in net.parameters()),
        "layer": loaded.layer,
        "classes": loaded.num_classes,
        "features": loaded.features,
        "linear_layers": heads,
        "embedded_spec": ck.metadata.get(METADATA_KEY),
        "hub_config": str(ck.config_path) if ck.config_path is not None else None,
        "effective_spec": loaded.spec.to_dict(),
        "image_defaults": loaded.image_defaults or None,
    }


def inspect(loaded: LoadedModel, *, options: dict) -> Result:
    """The description of a loaded checkpoint; ``options`` (checkpoint, spec, arch, layer as given) go to the config."""
    summary = describe_checkpoint(loaded)
    return Result("inspect", {**options, "versions": versions()}, summary, summary["linear_layers"])
