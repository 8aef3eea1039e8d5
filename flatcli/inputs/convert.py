"""``flatrob convert``: a PyTorch pickle (``.pt``/``.pth``) to a safetensors checkpoint, executing nothing.

The one place flatrob opens a pickle, and only through ``torch.load(weights_only=True)``: PyTorch's
restricted unpickler, which builds tensors and plain containers and refuses every other global, so a
malicious file cannot run code. The state dict is the file itself when it maps names to tensors, else
the entry named by ``key`` (default: the first of :data:`STATE_KEYS` that maps names to tensors).
The result is checked as every checkpoint is (dtypes, NaN/Inf) and written atomically; it may not be the
source (nor the spec) under any name or link.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

from flatcli.inputs.checkpoint import check_tensors
from flatcli.errors import CheckpointError, UsageError
from flatcli.outputs.plan import check_outputs, output_path, plan_inputs

STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "ema")


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj, key: str | None, name: str) -> tuple[dict, str | None]:
    """The state dict inside a loaded pickle, and the key it was under (``None``: the file itself)."""
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{name} has no entry {key!r} (it holds: {keys[:200]}); pick one with --key")
        if not _is_state_dict(obj[key]):
            raise CheckpointError(f"{name}: entry {key!r} is not a mapping of names to tensors; pick another --key")
        return obj[key], key
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for k in STATE_KEYS:
            if _is_state_dict(obj.get(k)):
                return obj[k], k
        keys = ", ".join(map(str, obj))
        raise CheckpointError(
            f"{name} holds no state dict (a mapping of names to tensors) at the top or under "
            f"{', '.join(STATE_KEYS)}; its entries: {keys[:200]}; name the right one with --key"
        )
    raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")


def convert_pickle(source: str | os.PathLike, dest: str | os.PathLike, *, key: str | None = None,
                   spec_file: str | None = None, force: bool = False) -> dict:
    """Convert ``source`` (a torch pickle) into the safetensors file ``dest``; returns a summary.

    ``spec_file`` (a layer spec, validated before anything is written) is embedded in the metadata.
    """
    import torch
    from safetensors.torch import save

    from flatcli.inputs.spec import METADATA_KEY, read_spec_text

    spec_text = None
    if spec_file is not None:
        spec_text = read_spec_text(spec_file)[1]  # validated before anything is written

    src = Path(source).expanduser()
    dst = Path(dest).expanduser()
    if not src.is_file():
        raise CheckpointError(f"{src} does not exist or is not a file")
    if dst.suffix.lower() != ".safetensors":
        raise UsageError(f"the converted file must end in .safetensors, got {dst.name}")
    plan_inputs(source=src, spec=spec_file)
    if dst.exists() and not force:
        raise UsageError(f"{dst} exists; pass --force to replace it")
    check_outputs(dest=dst)
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if not found:
            raise CheckpointError(
                f"{src} is not a readable PyTorch file: its pickle stream is not one torch.load(weights_only=True) "
                "accepts (nothing in it was executed)"
            ) from None
        what = f" (it references {found.group(1)})"
        raise CheckpointError(
            f"{src} holds more than tensors and plain containers{what}, so it was not unpickled and nothing in it "
            "was executed; save model.state_dict() in a trusted environment instead"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the restricted unpickler fails in many ways on a malformed file
        # (struct.error, zipfile.BadZipFile, RuntimeError, ...); none of them ran anything.
        raise CheckpointError(f"{src} is not a readable PyTorch file: {' '.join(str(exc).split())[:300]}") from None
    state, used = find_state_dict(obj, key, str(src))
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # clone: no shared storage
    check_tensors(src, tensors)
    metadata = None if spec_text is None else {METADATA_KEY: spec_text}
    blob = save(tensors, metadata=metadata)
    with output_path(dst) as tmp, open(tmp, "wb") as handle:
        handle.write(blob)
    digest = hashlib.sha256(blob).hexdigest()
    return {
        "source": str(src),
        "output": str(dst),
        "key": used,
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "embedded_spec": spec_text is not None,
        "sha256": digest,
    }
