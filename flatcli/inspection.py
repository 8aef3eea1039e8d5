"""``flatrob inspect`` as a library call: what a checkpoint holds and how flatrob reads it."""

from __future__ import annotations

from flatcli.model import LoadedModel, linear_layers
from flatcli.spec import METADATA_KEY


def describe_checkpoint(loaded: LoadedModel) -> dict:
    """Architecture (declared or detected), parameter count, candidate heads, embedded spec."""
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
        "effective_spec": loaded.spec.to_dict(),
    }
