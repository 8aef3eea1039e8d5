"""Plumbing every command shares: model and data loading from options, config, progress, output."""

from __future__ import annotations

import contextlib
import platform
import sys
from typing import Callable, Iterator

from flatcli import __version__
from flatcli.errors import UsageError
from flatcli.output import ResultWriter, check_writable


def check_common(*, limit: int | None = None, batch_size: int | None = None, output: str | None = None) -> None:
    """Reject out-of-range shared options (and an output path that cannot be written) before any work."""
    if output not in (None, "-"):
        check_writable(output)
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def check_outputs(**paths: str | None) -> None:
    """Every output file named by an option is writable, and no two options name the same file.

    Keyword names are option names (``save_adv`` is ``--save-adv``); ``None`` and ``-`` (stdout) pass.
    """
    import os

    seen: dict[str, str] = {}
    for option, path in paths.items():
        if path in (None, "-"):
            continue
        flag = "--" + option.replace("_", "-")
        if path == "":
            raise UsageError(f"{flag} needs a file name")
        if option != "plot":  # --plot checks its suffix and directory itself
            check_writable(path)
        key = os.path.abspath(os.path.expanduser(path))
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} name the same file {path}; give each its own file")
        seen[key] = flag


def load(
    checkpoint: str, *, spec: str | None, arch: str | None, layer: str | None, device: str, channels_last: bool = False
):
    """Resolve device and model from the shared options."""
    from flatcli.model import load_model, resolve_device

    from flatcli.distributed import local_device

    dev = local_device(resolve_device(device))
    loaded = load_model(checkpoint, spec_file=spec, overrides={"arch": arch, "layer": layer}, device=dev)
    if channels_last:
        import torch

        loaded.model.to(memory_format=torch.channels_last)
    return loaded, dev


def load_data_for(loaded, data: str | None, split: str, limit: int | None):
    """The data source named by ``--data`` (else the spec's, else digits), checked against the model."""
    from flatcli import data as datamod

    source = data or loaded.spec.data or "digits"
    ds = datamod.load_data(source, split, limit)
    datamod.check_compatible(ds, loaded.spec.input_shape, loaded.num_classes)
    return ds


def versions() -> dict:
    import numpy
    import torch

    return {"flatrob": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def base_config(loaded, ds, *, device, seed: int, batch_size: int, split: str, limit: int | None) -> dict:
    return {
        **loaded.describe(),
        "data": ds.name,
        "split": split,
        "limit": limit,
        "batch_size": batch_size,
        "device": str(device),
        "seed": seed,
        "versions": versions(),
    }


@contextlib.contextmanager
def progress_bar(total: int, label: str, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when stderr is a terminal (and not --quiet); else nothing."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def note(message: str, quiet: bool) -> None:
    """A line for people on stderr (never stdout)."""
    if not quiet:
        print(message, file=sys.stderr)


def distributed(device):
    """This process's place under torchrun (single process otherwise)."""
    from flatcli.distributed import from_environment

    return from_environment(device)


def writer(fmt, output: str | None, *, command: str, per_sample: bool, render_table, enabled: bool = True) -> ResultWriter:
    """The result writer; ``enabled=False`` (torchrun ranks other than 0) writes nothing anywhere."""
    return ResultWriter(
        fmt.value, output, command=command, per_sample=per_sample, render_table=render_table, enabled=enabled
    )
