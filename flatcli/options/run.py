"""The run options: where and how the computation runs, and where finished work is kept."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, integer, switch, text

#: Seeds every command accepts: what torch, numpy's RandomState and scikit-learn all take.
SEED_RANGE = (0, 2**32 - 1)
#: Forward-pass precisions (torch.autocast); the closed forms stay float64.
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RunOptions(Group):
    """Device and seed (same seed, same numbers, on any device), and whether a model read wrong is an error."""

    title = "Run"
    key = "run"

    device: str = text("auto", "auto, cpu, cuda or cuda:N.", completion="device")
    seed: int = integer(0, "Random seed: same seed, same numbers.", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
    strict: bool = switch(False, "Exit 2 instead of a note when the clean accuracy is at or below chance (+ a "
                          "margin): a model read with the wrong normalisation, architecture, preprocessing or label "
                          "order.")


@dataclass(frozen=True)
class SpeedOptions(Group):
    """How fast the network's passes run (the closed-form measures stay float64)."""

    title = "Speed"
    key = "speed"

    precision: str = choice("fp32", "Forward pass precision (torch.autocast); closed-form measures stay float64.",
                            PRECISIONS)
    channels_last: bool = switch(False, "Run convolutions in channels-last memory format (faster on GPUs).")


@dataclass(frozen=True)
class ResumeOptions(Group):
    """Finished batches kept on disk, so an interrupted run continues where it stopped."""

    title = "Resume"
    key = "resume"

    resume: str | None = text(None, "Keep finished batches in DIR (created if missing); rerunning with the same "
                              "settings continues there and gives the same output as an uninterrupted run.",
                              metavar="DIR")


@dataclass(frozen=True)
class CheckpointListOptions(Group):
    """Several checkpoints in one call: one summary each."""

    title = "Checkpoints"
    key = "checkpoints"

    checkpoints_from: str | None = text(None, "More checkpoints, one path per line (blank lines and # comments "
                                        "skipped); - reads stdin.", metavar="FILE")
    fail_fast: bool = switch(False, "With several checkpoints, stop at the first that fails and write nothing.")
