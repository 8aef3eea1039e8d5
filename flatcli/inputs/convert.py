"""``flatrob convert``: a PyTorch pickle (``.pt``/``.pth``/``.ckpt``) to a safetensors checkpoint, executing nothing.

The one place flatrob opens a pickle, and only through ``torch.load(weights_only=True)``: PyTorch's
restricted unpickler, which builds tensors and plain containers and refuses every other global, so a
malicious file cannot run code. Training scripts also store a few harmless objects beside the weights;
:data:`SAFE_GLOBALS` allow-lists those (numpy scalars and dtypes, ``argparse.Namespace``: they only hold
values and call nothing of the file's).

Which weights: the file itself when it maps names to tensors; else ``key``; else, for ``weights="model"``,
the first of :data:`MODEL_KEYS` (Lightning's and RobustBench's ``state_dict``, RobustBench's ``last``,
...), for ``weights="ema"`` the first of :data:`EMA_KEYS` (timm's ``state_dict_ema``, ``model_ema``, ...),
looking one level down too (``last`` -> ``state_dict``). The summary says which entry was taken and
which other weights the file holds. Then wrappers are unwrapped, each named in the summary:
``AveragedModel``/EMA (``n_averaged`` dropped), DataParallel (``module.``), ``torch.compile``
(``_orig_mod.``) and a ``model.`` shared by every key, each removed with ``startswith`` when every key
has it; in a Lightning checkpoint the LightningModule's other keys (losses, metrics) are dropped and
the ``model.`` ones kept; ``strip_prefix`` keeps the keys under another prefix (``net.``) instead.
The result is checked as every checkpoint is (dtypes, NaN/Inf) and written atomically; it may not be
the source (nor the spec) under any name or link. Sizes are bounded by the file's before anything is
materialised: compressed records in the zip container are refused (:func:`check_container`), and so is a
tensor larger than the data it views (:func:`check_sizes`). torch's warnings while loading are not shown.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path

from flatcli.inputs.checkpoint import check_tensors
from flatcli.errors import CheckpointError, UsageError
from flatcli.outputs.plan import check_outputs, output_path, plan_inputs

MODEL_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "last")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema_model", "ema")
WEIGHTS = ("model", "ema")
#: Key prefixes a wrapper adds (DataParallel/AveragedModel, torch.compile, a wrapping module), stripped when
#: every key has one.
WRAPPERS = ("module.", "_orig_mod.", "model.")


def safe_globals() -> list:
    """What ``torch.load(weights_only=True)`` may build besides tensors: numpy scalars (under numpy 1's and
    numpy 2's module names) and dtypes, and ``argparse.Namespace`` (training scripts' ``args``)."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtypes, argparse.Namespace]


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find(obj, keys: tuple[str, ...]) -> tuple[dict, str] | None:
    """The first state dict under ``keys`` in ``obj``, or one level further down (``last.state_dict``)."""
    for k in keys:
        if _is_state_dict(obj.get(k)):
            return obj[k], k
    for k in keys:
        inner = obj.get(k)
        if isinstance(inner, dict):
            for k2 in MODEL_KEYS:
                if _is_state_dict(inner.get(k2)):
                    return inner[k2], f"{k}.{k2}"
    return None


def find_state_dict(obj, key: str | None, name: str, weights: str = "model") -> tuple[dict, str | None, list[str]]:
    """The state dict inside a loaded pickle, the entry it was under (``None``: the file itself), and the
    entries holding the other weights (EMA when the model's were taken, and the reverse)."""
    if weights not in WEIGHTS:
        raise UsageError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{name} has no entry {key!r} (it holds: {keys[:200]}); pick one with --key")
        if not _is_state_dict(obj[key]):
            raise CheckpointError(f"{name}: entry {key!r} is not a mapping of names to tensors; pick another --key")
        return obj[key], key, []
    if _is_state_dict(obj):
        if weights == "ema":
            raise CheckpointError(f"{name} is one state dict, with no EMA weights beside it; drop --weights ema")
        return obj, None, []
    if isinstance(obj, dict):
        wanted, other = (MODEL_KEYS, EMA_KEYS) if weights == "model" else (EMA_KEYS, MODEL_KEYS)
        found = _find(obj, wanted)
        others = [k for k in other if k in obj and _find({k: obj[k]}, (k,)) is not None] if found else []
        if found is not None:
            return found[0], found[1], others
        keys = ", ".join(map(str, obj))
        kind = "EMA weights" if weights == "ema" else "state dict (a mapping of names to tensors)"
        raise CheckpointError(
            f"{name} holds no {kind} at the top or under {', '.join(wanted)}; its entries: {keys[:200]}; "
            "name the right one with --key"
        )
    raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")


def unwrap(state: dict, *, lightning: bool = False, strip_prefix: str | None = None) -> tuple[dict, list[str], list[str]]:
    """``state`` without its wrappers' prefixes and keys; returns it, the prefixes stripped and the keys dropped.

    ``strip_prefix``: keep only the keys that start with it, without it. Otherwise: ``n_averaged`` of an
    ``AveragedModel`` is dropped; in a Lightning checkpoint with ``model.`` keys the others are dropped; then
    each of :data:`WRAPPERS` shared by every key is stripped, as long as one is.
    """
    dropped: list[str] = []
    stripped: list[str] = []
    if strip_prefix is not None:
        kept = {k[len(strip_prefix):]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not kept:
            raise CheckpointError(f"no key starts with {strip_prefix!r}; keys start with: "
                                  f"{', '.join(sorted({k.split('.')[0] + '.' for k in state})[:10])}")
        return kept, [strip_prefix], [k for k in state if not k.startswith(strip_prefix)]
    if "n_averaged" in state and any(k.startswith("module.") for k in state):
        dropped.append("n_averaged")
        state = {k: v for k, v in state.items() if k != "n_averaged"}
    if lightning and any(k.startswith("model.") for k in state):
        dropped += [k for k in state if not k.startswith("model.")]
        state = {k: v for k, v in state.items() if k.startswith("model.")}
    while True:
        prefix = next((p for p in WRAPPERS if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state, stripped, dropped
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)


def check_container(src: Path) -> None:
    """Refuse a zip-format torch file whose storages are compressed: ``torch.save`` stores them as they are, so
    their sizes are bounded by the file's; a deflated record (a few KB declaring GBs) would be inflated whole."""
    import zipfile

    try:
        if not zipfile.is_zipfile(src):
            return
        with zipfile.ZipFile(src) as archive:
            packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load says what is wrong with it
    if packed:
        raise CheckpointError(f"{src} holds the compressed record {packed[0]}, which torch.save never writes; "
                              "save the weights again with torch.save")


def check_sizes(src: Path, state: dict) -> None:
    """Refuse a tensor larger than the storage it views (a stride-0 view of one number declaring 60000 x 60000),
    before it is materialised: converted tensors are at most as large as the data the file holds."""
    for name, t in state.items():
        need, have = t.numel() * t.element_size(), t.untyped_storage().nbytes()
        if need > have:
            raise CheckpointError(f"{src}: tensor {name!r} of shape {list(t.shape)} would take {need / 2**20:.1f} MiB "
                                  f"but views {have} bytes of data (its strides repeat them); save each tensor whole "
                                  "(tensor.contiguous())")


def convert_pickle(source: str | os.PathLike, dest: str | os.PathLike, *, key: str | None = None,
                   spec_file: str | None = None, force: bool = False, weights: str = "model",
                   strip_prefix: str | None = None) -> dict:
    """Convert ``source`` (a torch pickle) into the safetensors file ``dest``; returns a summary.

    ``spec_file`` (a layer spec, validated before anything is written) is embedded in the metadata;
    ``weights`` (``model`` or ``ema``) and ``strip_prefix`` choose the weights (module docstring).
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
    if key is not None and weights != "model":
        raise UsageError("--key and --weights ema both choose the weights; give one")
    if strip_prefix == "":
        raise UsageError("--strip-prefix needs a prefix, such as net.")
    check_container(src)
    try:
        with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the file (pickle protocol): the outcome says enough
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
    state, used, others = find_state_dict(obj, key, str(src), weights)
    lightning = isinstance(obj, dict) and "pytorch-lightning_version" in obj
    state, stripped, dropped = unwrap(state, lightning=lightning, strip_prefix=strip_prefix)
    check_sizes(src, state)
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
        "weights": weights if key is None else None,
        "other_weights": others,
        "stripped": stripped,
        "dropped": dropped,
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "embedded_spec": spec_text is not None,
        "sha256": digest,
    }
