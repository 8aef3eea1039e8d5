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

The numbers depend on the images, not only on the labels and indices the manifest hashes: every batch
file records the sha256 of its images as read (:func:`inputs_digest`, the float32 batch), and a batch
whose images differ now (the data file changed) is recomputed, never reused.

The store is an output like any other: its directory is checked against every input of the run (not an
input, not inside an input folder: :func:`flatcli.outputs.plan.check_output_directory`), and every file
in it is opened without following links: a symbolic link, a device, a pipe or a file with a second hard
link in the directory is refused naming it, so no file outside the store is read, replaced or appended to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from flatcli.errors import OptionError, literal
from flatcli.inputs.text import size_text
from flatcli.outputs.files import temporary_beside, write_errors
from flatcli.outputs.plan import check_output_directory

KIND = "flatrob-resume"
VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "batches.sha256"
#: The largest manifest read (it holds the settings: a few KB).
MAX_MANIFEST_BYTES = 1024 * 1024
#: The largest checksum list read (88 bytes a batch: 760,000 batches).
MAX_CHECKSUMS_BYTES = 64 * 1024 * 1024
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (batch-\d{6}\.safetensors)")
#: The batch-file metadata key holding the sha256 of the batch's images as read.
INPUTS_KEY = "flatrob.inputs_sha256"



def refusal(directory, problem: str) -> OptionError:
    """The error ``resume DIR<problem>``, naming the option (the directory and problem are shown as they are)."""
    return OptionError("resume", "{}" + literal(f" {directory}{problem}"))

def inputs_digest(x) -> str:
    """The sha256 of a batch of images as read (float32, on the CPU, in order): what a stored batch was
    computed on."""
    import torch

    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _open_own(directory: Path, path: Path, flags: int = os.O_RDONLY) -> int | None:
    """A descriptor for the file ``path`` of the store (``None`` if there is none), opened without following a
    link or waiting on a pipe; anything but a regular file with one link is refused naming it."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not os.path.islink(path):
            raise refusal(directory, f": cannot open {path.name}: {exc.strerror}") from None
        fd = None
    st = os.fstat(fd) if fd is not None else None
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        if fd is not None:
            os.close(fd)
        what = "a symbolic link" if st is None else "a second name of another file (a hard link)" \
            if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise refusal(directory, f": {path.name} is {what}; a resume directory holds only files flatrob "
                         "wrote there, so it is never followed: remove it, or name another directory")
    os.set_blocking(fd, True)
    return fd


def _read_own(directory: Path, path: Path, limit: int | None = None) -> bytes | None:
    """The bytes of the store's file ``path`` (``None`` if missing), at most ``limit``, as :func:`_open_own`."""
    fd = _open_own(directory, path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        blob = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(blob) > limit:
        raise refusal(directory, f": {path.name} is larger than the {size_text(limit)} it may have; "
                         "remove the directory to start over")
    return blob


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
        check_output_directory("resume", d)
        if d.exists() and not d.is_dir():
            raise refusal(d, " is a file; name a directory (it is created if missing)")
        if not d.exists():
            if not d.parent.is_dir():
                raise refusal(d, f": directory {d.parent} does not exist; create it first")
            try:
                d.mkdir()
            except OSError as e:
                raise refusal(d, f": cannot create the directory: {e.strerror}") from None
        manifest = d / MANIFEST
        if not manifest.exists() and not manifest.is_symlink():
            if any(d.iterdir()):
                raise refusal(
                    d, f" is not empty and holds no {MANIFEST}: it is not a flatrob resume directory; "
                    "name a new or empty directory"
                )
            doc = {"kind": KIND, "version": VERSION, "command": self.command, "settings": self.settings}
            self._replace(manifest, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            return
        blob = _read_own(d, manifest, MAX_MANIFEST_BYTES)
        try:
            doc = json.loads(blob.decode("utf-8"))
        except (ValueError, RecursionError):
            raise refusal(d, f": {MANIFEST} is unreadable; remove the directory to start over") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("settings"), dict):
            raise refusal(d, f": {MANIFEST} is not a flatrob resume manifest; name another directory")
        if doc.get("command") != self.command:
            raise refusal(
                d, f" holds batches of `flatrob {doc.get('command')}`, not `flatrob {self.command}`; "
                "name another directory"
            )
        old = doc["settings"]
        for key in [*self.settings, *(k for k in old if k not in self.settings)]:
            if old.get(key) != self.settings.get(key):
                raise refusal(
                    d, f" was made with different settings: {key} was {_show(old.get(key))}, "
                    f"this run has {_show(self.settings.get(key))}; rerun with the same settings or name another directory"
                )
        self.checksums = self._read_checksums()

    def _read_checksums(self) -> dict[str, str]:
        """File name -> sha256 as recorded when written (the last line for a name wins; damaged lines are
        ignored, so their batches count as unrecorded)."""
        blob = _read_own(self.dir, self.dir / CHECKSUMS, MAX_CHECKSUMS_BYTES)
        if blob is None:
            return {}
        text = blob.decode("utf-8", "replace")
        found = (_CHECKSUM_LINE.fullmatch(line) for line in text.splitlines())
        return {m.group(2): m.group(1) for m in found if m}

    # -- batches -------------------------------------------------------------------------------

    def path(self, number: int) -> Path:
        return self.dir / f"batch-{number:06d}.safetensors"

    def load(self, number: int, index, inputs: str | None = None) -> dict | None:
        """The saved results of batch ``number`` (``None``: not finished, or to be recomputed because its file
        does not have its recorded checksum, or was computed on images other than those whose
        :func:`inputs_digest` is ``inputs``); ``index`` must match its samples."""
        path = self.path(number)
        blob = _read_own(self.dir, path)
        if blob is None:
            return None
        import torch

        if self.checksums.get(path.name) != hashlib.sha256(blob).hexdigest():
            self.recomputed.append(path.name)  # damaged, tampered with, or written before checksums were kept
            return None
        try:
            tensors, meta = _read_batch(blob)
            if inputs is not None and meta.get(INPUTS_KEY) != inputs:
                self.recomputed.append(path.name)  # computed on other images: the data changed since
                return None
            layout = json.loads(meta.get("flatrob.layout", "{}"))
            result = _unflatten(tensors, list(layout.get("none", [])), dict(layout.get("classes", {})),
                                list(layout.get("arrays", [])), self.factories)
            saved = torch.as_tensor(self.index_of(result))
        except Exception as exc:  # noqa: BLE001 - whatever a forged file makes the readers raise
            raise refusal(
                self.dir, f": {path.name} has its recorded checksum but is not a batch flatrob wrote "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); remove the directory to start over"
            ) from None
        if not isinstance(saved, torch.Tensor) or not torch.equal(saved.cpu(), index.detach().cpu()):
            raise refusal(
                self.dir, f": {path.name} holds other samples than batch {number} of this run; "
                "remove the directory to start over"
            )
        self.reused += 1
        self._loaded.add(number)
        return result

    def save(self, number: int, result: dict, inputs: str | None = None) -> None:
        """Persist batch ``number`` atomically with ``inputs`` (the :func:`inputs_digest` of its images) and
        record its checksum (a batch read from the directory in this run is left as it is; one that was damaged
        is written again)."""
        if number in self._loaded:
            return
        from safetensors.torch import save

        tensors: dict = {}
        nones: list = []
        classes: dict = {}
        arrays: list = []
        _flatten(result, "", tensors, nones, classes, arrays)
        layout = json.dumps({"none": nones, "classes": classes, "arrays": arrays}, sort_keys=True)
        meta = {"flatrob.layout": layout, **({} if inputs is None else {INPUTS_KEY: inputs})}
        blob = save(tensors, metadata=meta)
        path = self.path(number)
        self._replace(path, blob)
        digest = hashlib.sha256(blob).hexdigest()
        checksums = self.dir / CHECKSUMS
        fd = _open_own(self.dir, checksums, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with write_errors(checksums), os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(f"{digest}  {path.name}\n")
        self.checksums[path.name] = digest

    def _replace(self, path: Path, blob: bytes) -> None:
        """Write ``blob`` as the store's file ``path`` in one step: a temporary file beside it, renamed onto the
        name (a link there is replaced itself, never written through)."""
        tmp = temporary_beside(path)
        try:
            with write_errors(path):
                tmp.write_bytes(blob)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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
