"""Data parallelism under ``torchrun``: shard batches by rank, gather per-batch results to rank 0.

One process needs none of this (``Dist()`` is the single-process default). Under ``torchrun
--nproc-per-node N`` every rank takes batches ``rank, rank + N, ...`` (:func:`flatcli.inputs.data.batches`
with ``shard``); after each *round* (one batch per rank) the per-batch results are gathered in rank
order, which is the original batch order, so rank 0 sees exactly the sequence of batch results one
process would have produced: same per-sample values, same order, same summary. Only rank 0 writes.
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from flatcli.inputs import data as datamod
from flatcli.runtime import interrupts


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rounds(self, data: datamod.DataSource, batch_size: int, *, device, workers: int = 0) -> Iterator[Any]:
        """This rank's batches, one per round, ``None`` in a final round where it has none.

        Every rank yields the same number of rounds, so collective calls stay in step.
        """
        n_batches = math.ceil(len(data) / batch_size)
        it = datamod.batches(data, batch_size, device=device, workers=workers, shard=(self.rank, self.world))
        with interrupts.deferring():  # SIGINT/SIGTERM stop at the next boundary, not inside a batch
            for _ in range(math.ceil(n_batches / self.world)):
                self.check_interrupt(device)
                yield next(it, None)
            self.check_interrupt(device)

    def check_interrupt(self, device) -> None:
        """A batch boundary: raise :class:`~flatcli.errors.Interrupted` if a signal arrived (on any rank)."""
        if self.world == 1:
            interrupts.check()
            return
        flag = torch.tensor([float(interrupts.pending() or 0)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank stops in the same round
        if flag.item() > 0:
            interrupts.stop(int(flag.item()))

    def batch_number(self, round_: int) -> int:
        """Position in data order of the batch this rank takes in round ``round_``."""
        return round_ * self.world + self.rank

    def gather(self, result: Any) -> list[Any]:
        """Results of this round from every rank, in batch order, on rank 0 (``[]`` elsewhere).

        ``result`` must be picklable (CPU tensors, numpy arrays, lists); ``None`` marks no batch.
        """
        if self.world == 1:
            return [] if result is None else [result]
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, result)
        return [p for p in parts if p is not None] if self.is_main else []

    def gather_all(self, result: Any) -> list[Any]:
        """Like :meth:`gather`, but every rank receives the round's results (in batch order)."""
        if self.world == 1:
            return [] if result is None else [result]
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, result)
        return [p for p in parts if p is not None]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (in place; returned for convenience)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor


SINGLE = Dist()


def from_environment(device: torch.device) -> Dist:
    """``Dist`` of this process: single unless launched by torchrun (``WORLD_SIZE`` > 1).

    Initialises the process group once: NCCL for CUDA devices, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # Tear the group down before the interpreter exits: gloo threads left running abort the process
        # ("terminate called without an active exception") at random.
        atexit.register(_destroy)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
