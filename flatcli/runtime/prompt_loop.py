"""The loop over a language model's prompts: sharded over torchrun ranks, resumable, stopped at prompt boundaries.

A language-model run measures one prompt at a time (:mod:`flatcli.runs.lm_sharpness`,
:mod:`flatcli.runs.lm_attack`), so a prompt plays the part a batch plays for images
(:func:`flatcli.runtime.loop.each_batch`): under ``torchrun --nproc-per-node N`` rank r takes prompts
``r, r + N, ...``; after each round (one prompt per rank) the results are gathered in rank order, which is prompt
order, so rank 0 sees exactly what one process would have computed. With a resume store
(:class:`flatcli.runtime.resume.ResumeStore`, one "batch" file per prompt) a finished prompt is read instead of
computed, and every new one is saved before it is used. SIGINT/SIGTERM stop the loop at the next
prompt boundary (:mod:`flatcli.runtime.interrupts`); a prompt interrupted half-way is computed again by the rerun.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, TypeVar

import torch

from flatcli.runtime import interrupts
from flatcli.runtime.distributed import SINGLE, Dist
from flatcli.runtime.loop import NO_RESUME_HINT
from flatcli.runtime.resume import ResumeStore, hint_for

R = TypeVar("R")


def each_prompt(count: int, compute: Callable[[int], R], *, dist: Dist = SINGLE, device=torch.device("cpu"),
                store: ResumeStore | None = None, resume: str | None = None,
                resumable: bool = False) -> Iterator[tuple[int, R]]:
    """``(i, compute(i))`` for every prompt ``i < count``, in prompt order, on rank 0 (other ranks compute their
    share and yield nothing).

    ``store`` (rank 0's; ``resume`` its directory, known to every rank; its settings hold what the prompts are)
    supplies the prompts an earlier run finished, and receives every new one (other ranks compute theirs again,
    as for images). ``resumable``: the command offers ``resume`` (the interrupt line says how). Results must be
    picklable under torchrun.
    """
    if resume is not None:
        interrupts.set_hint("no output file was written; " + hint_for(resume))
    elif resumable:
        interrupts.set_hint(NO_RESUME_HINT)
    with interrupts.deferring():
        for round_ in range(math.ceil(count / dist.world)):
            dist.check_interrupt(device)
            i = round_ * dist.world + dist.rank
            result = None
            if i < count:
                result = store.load(i, torch.tensor([i])) if store is not None else None
                if result is None:
                    result = compute(i)
            for j, r in enumerate(dist.gather(result)):
                number = round_ * dist.world + j
                if store is not None:
                    store.save(number, r)  # finished: persisted before it is used
                yield number, r
        dist.check_interrupt(device)
