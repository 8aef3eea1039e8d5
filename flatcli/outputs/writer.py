"""The result of a command in one format: the versioned JSON document, or rows streamed as jsonl/csv.

Nothing here knows about terminals: tables are rendered by the CLI layer (``render_table``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from flatcli.outputs.plan import output_path

SCHEMA_VERSION = 1
FORMATS = ("table", "json", "jsonl", "csv")


def jsonable(value: Any) -> Any:
    """Plain JSON data: numpy/torch scalars and arrays to Python, non-finite floats to ``null``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def document(command: str, config: dict, summary: dict | None, samples: list[dict] | None = None, *,
             summaries: list[dict] | None = None) -> dict:
    """The ``--format json`` document every command writes; with several checkpoints ``summaries`` (one
    entry per checkpoint) takes the place of ``summary``."""
    doc = {"schema_version": SCHEMA_VERSION, "command": command, "config": config}
    if summaries is None:
        doc["summary"] = summary
    else:
        doc["summaries"] = summaries
    if samples is not None:
        doc["samples"] = samples
    return jsonable(doc)


class ResultWriter:
    """Writes one command's result, in one format, to a file (committed with the run's other outputs,
    :mod:`flatcli.outputs.plan`) or to stdout.

    ``jsonl``/``csv`` rows are written and flushed as soon as :meth:`rows` receives them (streamed per
    batch); ``json``/``table`` keep rows only when ``per_sample`` is set. Call :meth:`finish` with the
    summary; on an exception inside the ``with`` block the target file is never created. A disabled
    writer (torchrun ranks other than 0) writes nothing.
    ``render_table(stream, summary, samples)`` draws the table format (the CLI supplies it).
    """

    def __init__(
        self,
        fmt: str,
        path: str | None,
        *,
        command: str,
        per_sample: bool = False,
        render_table: Callable[[TextIO, dict, list[dict] | None], None] | None = None,
        enabled: bool = True,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        self.fmt = fmt
        self.enabled = enabled
        self.path = None if path in (None, "-") else path
        self.command = command
        self.keep_rows = per_sample and fmt in ("json", "table")
        self.render_table = render_table
        self.samples: list[dict] = []
        self._csv: csv.DictWriter | None = None
        self._stack = contextlib.ExitStack()
        self.stream: TextIO = sys.stdout

    def __enter__(self) -> "ResultWriter":
        if not self.enabled:
            self.stream = open(os.devnull, "w")
            self._stack.callback(self.stream.close)
        elif self.path is not None:
            tmp = self._stack.enter_context(output_path(self.path))
            self.stream = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def rows(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        if self.keep_rows:
            self.samples.extend(jsonable(rows))
        elif self.fmt == "jsonl":
            self.stream.write("".join(json.dumps(jsonable(r)) + "\n" for r in rows))
            self.stream.flush()
        elif self.fmt == "csv" and rows:
            if self._csv is None:
                self._csv = csv.DictWriter(self.stream, fieldnames=list(rows[0]), lineterminator="\n")
                self._csv.writeheader()
            self._csv.writerows(jsonable(rows))
            self.stream.flush()

    def finish(self, config: dict, summary: dict | None, *, summaries: list[dict] | None = None) -> None:
        """Write the document (json) or the table; ``summaries`` for several checkpoints (see :func:`document`;
        the table then gets the list of entries)."""
        if not self.enabled:
            return
        samples = self.samples if self.keep_rows else None
        if self.fmt == "json":
            json.dump(document(self.command, config, summary, samples, summaries=summaries), self.stream, indent=2)
            self.stream.write("\n")
        elif self.fmt == "table" and self.render_table is not None:
            self.render_table(self.stream, jsonable(summary if summaries is None else summaries), samples)
        self.stream.flush()
