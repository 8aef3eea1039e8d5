"""The output options of every command: the format, where it goes, and what else is said."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, switch, text

FORMATS = ("table", "json", "jsonl", "csv")


@dataclass(frozen=True)
class OutputOptions(Group):
    """The result: stdout carries only it; notes and progress go to stderr."""

    title = "Output"
    key = "output"

    format: str = choice("table", "Output format: table, json, jsonl or csv.", FORMATS, short="-f")
    output: str | None = text(None, "Write the result to FILE (atomically); - is stdout.", metavar="FILE", short="-o")
    quiet: bool = switch(False, "No progress or notes on stderr.", short="-q")
    per_sample: bool = switch(False, "Include per-sample rows in json/table output.")
