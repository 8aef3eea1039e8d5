"""The one batch loop every command's pass over a data set runs in, and the run context it needs.

A :class:`RunContext` holds what a pass needs besides the command's own settings: the loaded model, the
data, the device, the place of this process under torchrun, the ``--resume`` directory and a progress
callback. :func:`each_batch` iterates the data in rounds (one batch per rank, :meth:`Dist.rounds`),
takes finished batches from the resume store, computes the others with the command's ``compute``,
gathers the results to rank 0 in data order, saves each new one to the store before it is used, and
reports progress; the model is in eval mode throughout (each submodule's mode is restored afterwards).
Results are yielded as they are gathered and nothing is kept, so memory is bounded by the batch.
SIGINT/SIGTERM stop the loop at the next batch boundary (:mod:`flatcli.runtime.interrupts`) with a line
that says how to resume.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

from flatcli.core.classifier import eval_mode
from flatcli.inputs.data import DataSource
from flatcli.models.loading import LoadedModel
from flatcli.runtime import interrupts
from flatcli.runtime.distributed import SINGLE, Dist
from flatcli.runtime.resume import ResumeStore, hint_for, inputs_digest, run_identity

R = TypeVar("R")

#: ``progress(done, total)``: samples finished so far and samples this run will go through.
Progress = Callable[[int, int], None]

NO_RESUME_HINT = "no output file was written; rerun with --resume DIR to keep finished batches across interruptions"


@dataclass(frozen=True)
class Batch:
    """One batch of the data, on the run's device: images, labels, source indices, and where it lies.

    ``number`` is its position in data order, ``start`` the data position of its first sample, and
    ``first`` says it is this process's first batch (commands verify the head split on it).
    """

    x: Tensor
    y: Tensor
    index: Tensor
    number: int
    start: int
    first: bool


@dataclass
class RunContext:
    """Model, data, device and placement of one run; ``split``/``limit`` record how the data was asked for."""

    loaded: LoadedModel
    data: DataSource
    device: torch.device
    dist: Dist = SINGLE
    batch_size: int = 256
    seed: int = 0
    split: str | None = "test"
    limit: int | None = None
    resume: str | None = None  # the --resume directory (every rank knows it; the store lives on rank 0)
    strict: bool = False  # a clean accuracy at chance is an error, not a note (flatcli.runs.sanity)
    progress: Progress | None = None
    _done: int = 0
    _total: int = 0

    def with_data(self, data: DataSource) -> "RunContext":
        """The same run on other data (e.g. a file of adversarials); progress continues."""
        return dataclasses.replace(self, data=data)

    def expect(self, samples: int) -> None:
        """Declare how many samples the passes of this run go through (the progress total)."""
        self._total = samples

    def advance(self, samples: int) -> None:
        self._done += samples
        if self.progress is not None:
            self.progress(self._done, max(self._total, self._done))

    def batches_in(self, number: int) -> int:
        """Samples in batch ``number`` (the last batch may be short)."""
        return min(self.batch_size, len(self.data) - number * self.batch_size)

    def store(self, command: str, settings: dict, factories: dict[str, Callable] | None = None,
              index_of: Callable[[Any], Any] | None = None) -> ResumeStore | None:
        """The ``--resume`` store of ``command`` (rank 0 only; ``None`` without ``--resume``), checked
        against everything the per-batch numbers depend on: code version, weights, data, ``settings``."""
        if self.resume is None or not self.dist.is_main:
            return None
        identity = run_identity(self.loaded, self.data, self.device, batch_size=self.batch_size, seed=self.seed,
                                **settings)
        extra = {} if index_of is None else {"index_of": index_of}
        return ResumeStore(self.resume, command, identity, factories or {}, **extra)

    def describe(self) -> dict:
        """The ``config`` entries every command shares: provenance, data, batching, device, seed, versions."""
        return {
            **self.loaded.describe(),
            "data": self.data.name,
            "preprocess": None if self.data.preprocess is None else self.data.preprocess.describe(),
            "split": self.split,
            "limit": self.limit,
            **({"limit_order": self.data.metadata["limit_order"]} if "limit_order" in self.data.metadata else {}),
            "batch_size": self.batch_size,
            "device": str(self.device),
            "seed": self.seed,
            "versions": versions(),
        }


def each_batch(ctx: RunContext, compute: Callable[[Batch], R], *, store: ResumeStore | None = None,
               resumable: bool = False, everywhere: bool = False) -> Iterator[R]:
    """``compute(batch)`` for every batch of ``ctx.data``; the results, in data order, on rank 0.

    ``store`` (from :meth:`RunContext.store`) supplies batches an earlier run finished and receives
    every new one before it is yielded. ``resumable`` says the command offers ``--resume`` (the
    interrupt line then says how to use it). Results must be picklable under torchrun; other ranks
    compute their share and yield nothing, unless ``everywhere``: then every rank receives every result.
    """
    if ctx.resume is not None:
        interrupts.set_hint("no output file was written; " + hint_for(ctx.resume))
    elif resumable:
        interrupts.set_hint(NO_RESUME_HINT)
    dist = ctx.dist
    with eval_mode(ctx.loaded.model):
        for i, batch in enumerate(dist.rounds(ctx.data, ctx.batch_size, device=ctx.device)):
            result = None
            if batch is not None:
                x, y, index = batch
                number = dist.batch_number(i)
                inputs = inputs_digest(x) if ctx.resume is not None else None  # what a stored batch must match
                result = store.load(number, index, inputs) if store is not None else None
                if result is None:
                    result = compute(Batch(x, y, index, number, number * ctx.batch_size, first=i == 0))
                result = (result, inputs)
            for j, (r, inputs) in enumerate(dist.gather_all(result) if everywhere else dist.gather(result)):
                number = i * dist.world + j
                if store is not None:
                    store.save(number, r, inputs)  # finished: persisted before it is used
                yield r
                ctx.advance(ctx.batches_in(number))


def resumed_note(store: ResumeStore | None, directory: str | None) -> list[str]:
    """The lines saying how many finished batches a resumed run read, and which damaged ones it recomputed."""
    if store is None:
        return []
    notes = [f"resumed: {store.reused} finished batch(es) read from {directory}"] if store.reused else []
    if store.recomputed:
        more = len(store.recomputed) - 3
        shown = ", ".join(store.recomputed[:3]) + (f" and {more} more" if more > 0 else "")
        notes.append(f"note: --resume {directory}: {shown} did not match the checksum recorded when written "
                     "or the images read now (damaged, changed, the data changed, or from an older flatrob); "
                     "recomputed and written again")
    return notes


def versions() -> dict:
    """The versions a result was computed with (the ``versions`` entry of every ``config``)."""
    import numpy

    from flatcli import __version__

    return {"flatrob": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}
