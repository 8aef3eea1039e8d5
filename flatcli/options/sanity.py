"""The sanity options: what a run does when its clean accuracy says the model is read wrong."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, switch


@dataclass(frozen=True)
class SanityOptions(Group):
    """A clean accuracy at or below chance (+ a margin) on labelled data: a note, or an error when strict."""

    title = "Sanity"

    strict: bool = switch(False, "Exit 2 instead of a note when the clean accuracy is at or below chance (+ a "
                          "margin): a model read with the wrong normalisation, architecture, preprocessing or label "
                          "order.")
