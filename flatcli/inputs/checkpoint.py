"""Reading checkpoints: safetensors state dicts only; pickles are never unpickled.

``example:NAME`` names a checkpoint shipped inside the package (``flatcli/examples/NAME.safetensors``);
a hub folder or ``hf-hub:ORG/NAME[@REV]`` its ``model.safetensors`` and ``config.json``
(:mod:`flatcli.inputs.hub`).
"""

from __future__ import annotations

import hashlib
import json
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flatcli.errors import CheckpointError
from flatcli.inputs import hub

if TYPE_CHECKING:  # torch is imported only when tensors are read: shell completion reads headers only
    import torch

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Endings of PyTorch pickles (``.pth.tar``: timm's training checkpoints).
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt", ".pth.tar")


@dataclass
class Checkpoint:
    path: Path
    name: str  # as the user gave it (``example:digits-cnn`` or a path)
    state_dict: dict[str, "torch.Tensor"]
    metadata: dict[str, str]
    sha256: str
    config: dict = field(default_factory=dict)  # spec keys from a hub config.json (lowest precedence)
    config_path: Path | None = None


def examples() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.safetensors"))


def resolve(ref: str) -> Path:
    """The file behind ``ref``: ``example:NAME`` or a path (``~`` expanded)."""
    if ref.startswith("example:"):
        name = ref.split(":", 1)[1]
        path = EXAMPLES_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"no bundled example {name!r}; available: {', '.join(examples()) or 'none'}")
        return path
    return Path(ref).expanduser()


def locate(ref: str) -> tuple[Path, Path | None]:
    """The safetensors file behind ``ref`` and, for a hub checkpoint, its ``config.json`` (else ``None``);
    an ``hf-hub:`` reference is fetched into the hub's cache if it is not there."""
    if hub.is_hub(ref):
        files = hub.locate(ref)
        return files.weights, files.config
    return resolve(ref), None


def read_header(path: Path) -> dict:
    """Parse and sanity-check the safetensors header without reading the tensors.

    Layout: 8-byte little-endian header length n, then n bytes of JSON, then the tensor data. Only a regular
    file is opened (a named pipe would block, ``/dev/zero`` never end).
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"checkpoint {path} is not a regular file (a device or a named pipe); pass a "
                                  ".safetensors file")
        size = st.st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path} is not a safetensors file (its header claims {n} bytes, the file has {size})"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory; pass a .safetensors file or a hub folder "
                              "(config.json + model.safetensors)") from None
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header


def check_tensors(path, state: dict) -> None:
    """Refuse dtypes flatrob does not read (float8, complex, ...) and NaN/Inf weights, naming the tensor."""
    import torch

    readable = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8,
                torch.int16, torch.int32, torch.int64)
    for key, t in state.items():
        if t.dtype not in readable:
            raise CheckpointError(
                f"{path}: tensor {key!r} has dtype {str(t.dtype).removeprefix('torch.')}, which flatrob does not read; "
                "save the weights as float32 (float16/bfloat16 also load)"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {key!r} contains NaN or Inf; the checkpoint is broken")


def read(ref: str, located: tuple[Path, Path | None] | None = None) -> Checkpoint:
    """Load the state dict and metadata of a safetensors checkpoint (on CPU); ``located`` is what
    :func:`locate` returned for ``ref``, if the caller has it already."""
    path, config_path = located or locate(ref)
    config = hub.read_config(config_path) if config_path is not None else {}
    suffix = next((end for end in PICKLE_SUFFIXES if path.name.lower().endswith(end)), None)
    if suffix is not None:
        raise CheckpointError(
            f"{path} looks like a pickle ({suffix}); flatrob reads only safetensors. Convert it with "
            "`flatrob convert` (weights_only=True) or safetensors.torch.save_file"
        )
    header = read_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the safetensors metadata must map strings to strings")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        data = path.read_bytes()
        state = load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    check_tensors(path, state)
    return Checkpoint(
        path=path,
        name=ref,
        state_dict=state,
        metadata=dict(metadata),
        sha256=hashlib.sha256(data).hexdigest(),
        config=config,
        config_path=config_path,
    )
