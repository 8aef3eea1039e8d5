"""Value completion for the shared options (``autocompletion=`` in :mod:`flatcli.cli.options`).

The completion scripts in ``completions/`` call ``flatrob`` back with ``_FLATROB_COMPLETE`` set on every
<Tab>, so these functions must answer fast: nothing here imports torch (about 2-6 s to import), numpy or
the library's model code. Each function returns ``(value, help)`` pairs; Typer keeps those that start
with what has been typed.

bash splits words at ``:`` (``COMP_WORDBREAKS``), so under bash a value such as ``cifar10:~/data`` reaches
us as three words; :func:`checkpoint_on_line` glues them back where it matters.
"""

from __future__ import annotations

import os

import typer

from flatcli.inputs.data.forms import FORMS
from flatcli.models import arch_forms

SPLITS = (("test", "test split"), ("train", "train split"), ("all", "every sample (digits)"))
MAX_PATHS = 200


def device(incomplete: str) -> list[tuple[str, str]]:
    """``auto``, ``cpu``, and ``cuda``/``cuda:N`` for the NVIDIA GPUs this machine shows."""
    items = [("auto", "CUDA when available, else CPU"), ("cpu", "CPU")]
    n = gpu_count()
    if n:
        items.append(("cuda", "the current CUDA device"))
        items += [(f"cuda:{i}", f"CUDA device {i}") for i in range(n)]
    return items


def gpu_count() -> int:
    """NVIDIA GPUs visible to this process, without importing torch.

    Counted from the driver's ``/proc/driver/nvidia/gpus`` entries, else the ``/dev/nvidiaN`` device
    nodes (containers often have only those), then limited by ``CUDA_VISIBLE_DEVICES``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        present = 0
    if not present:
        try:
            present = sum(1 for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit())
        except OSError:
            present = 0
    if visible is None:
        return present
    ids = [v for v in visible.split(",") if v.strip()]
    if not ids or ids[0].strip().startswith("-"):
        return 0
    return min(len(ids), present) if present else 0


def data(incomplete: str) -> list[tuple[str, str]]:
    """The ``--data`` forms (:data:`~flatcli.inputs.data.forms.FORMS`); after ``form:`` (zsh, fish) the
    paths its completion kind offers (directories, or files and directories)."""
    name, sep, rest = incomplete.partition(":")
    form = FORMS.get(name)
    if sep and form is not None and form.completion != "none":
        return [(f"{name}:{p}", "") for p in paths(rest, files=form.completion == "file")]
    return [(form.prefix, form.help) for form in FORMS.values()]


def arch(incomplete: str) -> list[tuple[str, str]]:
    """The prefixes of the ``--arch`` forms (:data:`~flatcli.models.arch_forms.FORMS`); the names behind
    them (built-ins, timm's and torchvision's registries) are listed by importing torch, which a <Tab> never does."""
    return [(form.prefix, form.help) for form in arch_forms.FORMS.values() if form.prefix]


def split(incomplete: str) -> list[tuple[str, str]]:
    return list(SPLITS)


def paths(partial: str, *, files: bool) -> list[str]:
    """Directories (and with ``files`` also files) starting with ``partial``, spelled as the user began."""
    head, slash, stem = partial.rpartition("/")
    shown = head + slash  # "" or "dir/" ("~/" stays "~/" in what is offered)
    try:
        entries = sorted(os.scandir(os.path.expanduser(shown) if shown else "."), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir or files:
            out.append(f"{shown}{entry.name}{'/' if is_dir else ''}")
        if len(out) >= MAX_PATHS:
            break
    return out


def layer(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """The checkpoint's linear layers (2-D ``*.weight`` tensors), read from its safetensors header only."""
    ref = checkpoint_on_line(ctx)
    if not ref or ref.startswith("hf-hub:"):  # a <Tab> never downloads
        return []
    from flatcli.inputs.checkpoint import read_header, resolve  # header only: no torch

    try:
        header = read_header(resolve(ref) / "model.safetensors" if os.path.isdir(os.path.expanduser(ref)) else resolve(ref))
    except Exception:  # noqa: BLE001 - a <Tab> never prints a traceback; no layers is the answer
        return []
    return linear_layers(header)


def linear_layers(header: dict) -> list[tuple[str, str]]:
    """``(name, "Linear IN -> OUT")`` for each 2-D ``NAME.weight`` of a safetensors header, in file order.

    A ``module.`` prefix shared by every key (DataParallel) is dropped, as loading does by default.
    """
    keys = [k for k in header if k != "__metadata__"]
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    out = []
    for key in keys:
        info = header[key]
        shape = info.get("shape") if isinstance(info, dict) else None
        if key.endswith(".weight") and isinstance(shape, list) and len(shape) == 2:
            name = key[len(strip) : -len(".weight")]
            out.append((name, f"Linear {shape[1]} -> {shape[0]}"))
    return out


def checkpoint_on_line(ctx: typer.Context) -> str | None:
    """The checkpoint argument already typed on the line, if any.

    While an option still lacks its value (``--layer <Tab>``), Click's resilient parse leaves the
    positional words unassigned in ``ctx.args``; the checkpoint is the first of them. Words that bash
    split at ``:`` (``example : digits-cnn``) are joined again.
    """
    ref = ctx.params.get("checkpoint")
    if isinstance(ref, (list, tuple)):  # several checkpoints: the first one's layers
        ref = ref[0] if ref else None
    if isinstance(ref, str) and ref:
        words = [ref]
        if ":" not in ref and os.environ.get("_FLATROB_COMPLETE", "").endswith("_bash"):
            line = os.environ.get("COMP_WORDS", "").split(" ")
            for i in range(len(line) - 2):
                if line[i] == ref and line[i + 1] == ":":
                    words = line[i : i + 3]
                    break
    else:
        words = list(ctx.args)
    if not words:
        return None
    ref = words[0]
    while len(words) >= 3 and words[1] == ":":
        ref += ":" + words[2]
        words = [ref] + words[3:]
    return ref
