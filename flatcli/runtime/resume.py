"""``--resume DIR``: finished batches persisted so an interrupted run continues where it stopped.

Layout of ``DIR``::

    manifest.json                  {"kind": "flatrob-resume", "version": 1, "command": ..., "settings": {...}}
    batch-000000.safetensors       one finished batch's results (tensors only; never a pickle)
    batch-000001.safetensors
    ...

``settings`` holds everything the numbers depend on (checkpoint hash, data, batch size, seed, attack
options, ...). A rerun with the same settings reads the finished batches instead of recomputing them
and so writes output byte-identical to an uninterrupted run; different settings are refused with a
message that names the first differing setting. Every file is written atomically (temporary file,
then rename), so an interruption never leaves a half-written batch. The directory is kept after a
successful run: rerunning the same command reproduces the output from it without recomputing.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from flatcli.errors import UsageError
from flatcli.outputs.files import atomic_path

KIND = "flatrob-resume"
VERSION = 1
MANIFEST = "manifest.json"


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
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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

    # -- batches -------------------------------------------------------------------------------

    def path(self, number: int) -> Path:
        return self.dir / f"batch-{number:06d}.safetensors"

    def load(self, number: int, index) -> dict | None:
        """The saved results of batch ``number`` (``None`` if not finished); ``index`` must match its samples."""
        path = self.path(number)
        if not path.is_file():
            return None
        import torch
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            layout = json.loads(meta.get("flatrob.layout", "{}"))
            result = _unflatten(tensors, list(layout.get("none", [])), dict(layout.get("classes", {})),
                                list(layout.get("arrays", [])), self.factories)
            saved = torch.as_tensor(self.index_of(result))
        except Exception:  # noqa: BLE001 - a damaged batch file is simply recomputed
            return None
        if not isinstance(saved, torch.Tensor) or not torch.equal(saved.cpu(), index.detach().cpu()):
            raise UsageError(
                f"--resume {self.dir}: {path.name} holds other samples than batch {number} of this run; "
                "remove the directory to start over"
            )
        self.reused += 1
        return result

    def save(self, number: int, result: dict) -> None:
        """Persist batch ``number`` atomically (a batch already saved is left as it is)."""
        path = self.path(number)
        if path.exists():
            return
        from safetensors.torch import save_file

        tensors: dict = {}
        nones: list = []
        classes: dict = {}
        arrays: list = []
        _flatten(result, "", tensors, nones, classes, arrays)
        layout = json.dumps({"none": nones, "classes": classes, "arrays": arrays}, sort_keys=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"flatrob.layout": layout})

    def hint(self) -> str:
        return hint_for(self.dir)


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
        "samples": len(ds),
        "labels_and_indices_sha256": samples,
        **settings,
        "device": getattr(device, "type", str(device)),
    }


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)
