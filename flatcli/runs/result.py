"""What every run returns (``config``, ``summary``, per-sample rows) and where its rows go meanwhile."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from flatcli.outputs.writer import document, jsonable

#: A callback receiving each batch's per-sample rows as soon as they are ready (streamed output).
OnRows = Callable[[list[dict]], None]


@dataclass
class Result:
    """One command's result: the ``config`` and ``summary`` of its JSON document and, when kept, its rows.

    ``samples`` is the list of per-sample rows (dicts) or ``None`` when they were only streamed;
    ``artifacts`` holds command-specific objects (the fitted detector, the adversarial tensors, ...);
    ``notes`` are lines for people (the CLI prints them on stderr).
    """

    command: str
    config: dict
    summary: dict
    samples: list[dict] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The ``--format json`` document (with ``samples`` when they were kept)."""
        return document(self.command, self.config, self.summary, self.samples)

    def to_json(self, indent: int | None = 2) -> str:
        """The document as JSON text, as ``flatrob ... --format json`` writes it."""
        return json.dumps(self.to_dict(), indent=indent)


class Rows:
    """Where a run sends its per-sample rows: to ``on_rows`` (streamed), into :attr:`kept`, or both."""

    def __init__(self, on_rows: OnRows | None = None, keep: bool = False):
        self.on_rows = on_rows
        self.kept: list[dict] | None = [] if keep else None

    @property
    def wanted(self) -> bool:
        """Whether anyone takes the rows (build them only then: they cost more than the numbers)."""
        return self.on_rows is not None or self.kept is not None

    def __call__(self, rows: list[dict]) -> None:
        if self.kept is not None:
            self.kept.extend(jsonable(rows))
        if self.on_rows is not None:
            self.on_rows(rows)
