"""``--resume DIR``: finished batches persisted so an interrupted run continues where it stopped.

Layout of ``DIR``::

    manifest.json                  {"kind": "flatrob-resume", "version": 1, "command": ..., "settings": {...}}
    batches.sha256                 the sha256 of every batch file as written (``sha256sum -c`` reads it)
    batch-000000.safetensors       one finished batch's results (tensors only; never a pickle)
    batch-000001.safetensors
    ...

``settings`` holds everything the numbers depend on (checkpoint hash, data, batch size, seed, attack
options, ...). A rerun with the same settings reads the finished batches instead of recomputing them
and so writes output byte-identical to an uninterrupted run; different settings are refused with a
message that names the first differing setting. Every file is written atomically (temporary file,
then rename), so an interruption never leaves a half-written batch. The directory is kept after a
successful run: rerunning the same command reproduces the output from it without recomputing.

A batch file is trusted only if its bytes have the checksum recorded when it was written (one line
appended to ``batches.sha256`` per batch, so recording costs the same for every batch): a damaged,
tampered or unrecorded batch is recomputed and written again (:attr:`ResumeStore.recomputed`). A
batch that has its recorded checksum but still cannot be read (the checksums were edited too) is an
error naming the file, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from flatcli.errors import UsageError
from flatcli.inputs.text import read_text
from flatcli.outputs.files import atomic_path

KIND = "flatrob-resume"
VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "batches.sha256"
#: The largest manifest read (it holds the settings: a few KB).
MAX_MANIFEST_BYTES = 1024 * 1024
#: The largest checksum list read (88 bytes a batch: 760,000 batches).
MAX_CHECKSUMS_BYTES = 64 * 1024 * 1024
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (batch-\d{6}\.safetensors)")


def _flatten(value: Any, prefix: str, tensors: dict, nones: list, classes: dict, arrays: list) -> None:
    """Tensors (and numpy arrays, listed in ``arrays``) under dotted keys; containers named in ``classes``."""
    import numpy as np
    import torch

    def key(k) -> str:
        return f"{prefix}.{k}" if prefix else str(k)

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous().clone()
    elif isinstance(value, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(value).copy())
        arrays.append(prefix)
    elif value is None:
        nones.append(prefix)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, key(k), tensors, nones, classes, arrays)
    elif isinstance(value, tuple):
        classes[prefix] = "tuple"
        for i, v in enumerate(value):
            _flatten(v, key(i), tensors, nones, classes, arrays)
    elif is_dataclass(value):
        classes[prefix] = type(value).__name__
        for f in fields(value):
            _flatten(getattr(value, f.name), key(f.name), tensors, nones, classes, arrays)
    else:
        raise TypeError(f"cannot persist {type(value).__name__} at {prefix!r}")


def _unflatten(tensors: dict, nones: list, classes: dict, arrays: list, factories: dict[str, Callable]) -> Any:
    arrays = set(arrays)
    tensors = {k: v.numpy() if k in arrays else v for k, v in tensors.items()}
    factories = {**factories, "tuple": lambda **parts: tuple(parts[str(i)] for i in range(len(parts)))}
    root: dict = {}
    for key, value in [*tensors.items(), *((k, None) for k in nones)]:
        node = root
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def build(node: dict, prefix: str):
        out = {k: build(v, f"{prefix}.{k}" if prefix else k) if isinstance(v, dict) else v for k, v in node.items()}
        name = classes.get(prefix)
        return factories[name](**out) if name else out

    return build(root, "")


class ResumeStore:
    """One run's resume directory: the manifest check on opening, then per-batch load/save."""

    def __init__(self, directory: str | os.PathLike, command: str, settings: dict, factories: dict[str, Callable],
                 index_of: Callable[[Any], Any] = lambda result: result["index"]):
        self.dir = Path(directory).expanduser()
        self.command = command
        self.settings = json.loads(json.dumps(settings))  # plain JSON data, as read back; order kept for messages
        self.factories = factories
        self.index_of = index_of  # the source indices of a batch result (checked on loading)
        self.reused = 0
        self.recomputed: list[str] = []  # batch files that were damaged or unrecorded, computed again
        self._loaded: set[int] = set()  # batches read from the directory in this run (not written again)
        self.checksums: dict[str, str] = {}
        self._open()

    # -- the manifest --------------------------------------------------------------------------

    def _open(self) -> None:
        d = self.dir
        if d.exists() and not d.is_dir():
            raise UsageError(f"--resume {d} is a file; name a directory (it is created if missing)")
        if not d.exists():
            if not d.parent.is_dir():
                raise UsageError(f"--resume {d}: directory {d.parent} does not exist; create it first")
            try:
                d.mkdir()
            except OSError as e:
                raise UsageError(f"--resume {d}: cannot create the directory: {e.strerror}") from None
        manifest = d / MANIFEST
        if not manifest.exists():
            if any(d.iterdir()):
                raise UsageError(
                    f"--resume {d} is not empty and holds no {MANIFEST}: it is not a flatrob resume directory; "
                    "name a new or empty directory"
                )
            doc = {"kind": KIND, "version": VERSION, "command": self.command, "settings": self.settings}
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            return
        try:
            doc = json.loads(read_text(manifest, limit=MAX_MANIFEST_BYTES, what="manifest", error=UsageError))
        except (UsageError, ValueError, RecursionError):
            raise UsageError(f"--resume {d}: {MANIFEST} is unreadable; remove the directory to start over") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("settings"), dict):
            raise UsageError(f"--resume {d}: {MANIFEST} is not a flatrob resume manifest; name another directory")
        if doc.get("command") != self.command:
            raise UsageError(
                f"--resume {d} holds batches of `flatrob {doc.get('command')}`, not `flatrob {self.command}`; "
                "name another directory"
            )
        old = doc["settings"]
        for key in [*self.settings, *(k for k in old if k not in self.settings)]:
            if old.get(key) != self.settings.get(key):
                raise UsageError(
                    f"--resume {d} was made with different settings: {key} was {_show(old.get(key))}, "
                    f"this run has {_show(self.settings.get(key))}; rerun with the same settings or name another directory"
                )
        self.checksums = self._read_checksums()

    def _read_checksums(self) -> dict[str, str]:
        """File name -> sha256 as recorded when written (the last line for a name wins; damaged lines are
        ignored, so their batches count as unrecorded)."""
        path = self.dir / CHECKSUMS
        if not path.exists():
            return {}
        text = read_text(path, limit=MAX_CHECKSUMS_BYTES, what="checksum list", error=UsageError)
        found = (_CHECKSUM_LINE.fullmatch(line) for line in text.splitlines())
        return {m.group(2): m.group(1) for m in found if m}

    # -- batches -------------------------------------------------------------------------------

    def path(self, number: int) -> Path:
        return self.dir / f"batch-{number:06d}.safetensors"

    def load(self, number: int, index) -> dict | None:
        """The saved results of batch ``number`` (``None``: not finished, or to be recomputed because its file
        does not have its recorded checksum); ``index`` must match its samples."""
        path = self.path(number)
        if not path.is_file():
            return None
        import torch

        blob = path.read_bytes()
        if self.checksums.get(path.name) != hashlib.sha256(blob).hexdigest():
            self.recomputed.append(path.name)  # damaged, tampered with, or written before checksums were kept
            return None
        try:
            tensors, meta = _read_batch(blob)
            layout = json.loads(meta.get("flatrob.layout", "{}"))
            result = _unflatten(tensors, list(layout.get("none", [])), dict(layout.get("classes", {})),
                                list(layout.get("arrays", [])), self.factories)
            saved = torch.as_tensor(self.index_of(result))
        except Exception as exc:  # noqa: BLE001 - whatever a forged file makes the readers raise
            raise UsageError(
                f"--resume {self.dir}: {path.name} has its recorded checksum but is not a batch flatrob wrote "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); remove the directory to start over"
            ) from None
        if not isinstance(saved, torch.Tensor) or not torch.equal(saved.cpu(), index.detach().cpu()):
            raise UsageError(
                f"--resume {self.dir}: {path.name} holds other samples than batch {number} of this run; "
                "remove the directory to start over"
            )
        self.reused += 1
        self._loaded.add(number)
        return result

    def save(self, number: int, result: dict) -> None:
        """Persist batch ``number`` atomically and record its checksum (a batch read from the directory in this
        run is left as it is; one that was damaged is written again)."""
        if number in self._loaded:
            return
        from safetensors.torch import save

        tensors: dict = {}
        nones: list = []
        classes: dict = {}
        arrays: list = []
        _flatten(result, "", tensors, nones, classes, arrays)
        layout = json.dumps({"none": nones, "classes": classes, "arrays": arrays}, sort_keys=True)
        blob = save(tensors, metadata={"flatrob.layout": layout})
        path = self.path(number)
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
        digest = hashlib.sha256(blob).hexdigest()
        with open(self.dir / CHECKSUMS, "a", encoding="utf-8") as handle:
            handle.write(f"{digest}  {path.name}\n")
        self.checksums[path.name] = digest

    def hint(self) -> str:
        return hint_for(self.dir)


def _read_batch(blob: bytes) -> tuple[dict, dict]:
    """The tensors and the metadata of a safetensors file held in memory."""
    from safetensors.torch import load

    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return load(blob), meta or {}


def hint_for(directory) -> str:
    """The resume half of the one line an interrupted run prints."""
    return f"finished batches are saved in {directory}: rerun the same command (with --resume {directory}) to continue"


def run_identity(loaded, ds, device, **settings) -> dict:
    """What a command's per-batch numbers depend on: code version, checkpoint, data, device, ``settings``."""
    import hashlib

    from flatcli import __version__

    samples = hashlib.sha256(ds.y.numpy().tobytes() + ds.index.numpy().tobytes()).hexdigest()
    return {
        "flatrob": __version__,
        **loaded.fingerprint,
        "arch": loaded.spec.arch,
        "layer": loaded.layer,
        "data": ds.name,
        "preprocess": None if ds.preprocess is None else ds.preprocess.describe(),
        "samples": len(ds),
        "labels_and_indices_sha256": samples,
        **settings,
        "device": getattr(device, "type", str(device)),
    }


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)
