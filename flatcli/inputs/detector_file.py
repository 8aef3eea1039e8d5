"""The saved-detector file (``detect --save`` / ``--detector``): JSON of :meth:`Detector.to_json`, atomically.

Floats are written with ``repr`` precision (``json``'s default), so a loaded detector reproduces the
fitted predictions bit for bit; NaN/Inf are refused on writing.
"""

from __future__ import annotations

import json
import os

from flatcli.core.detectors import Detector
from flatcli.errors import DetectorError, UsageError
from flatcli.outputs.files import atomic_path


def save_detector(path: str | os.PathLike, det: Detector) -> None:
    """Write ``det.to_json()`` to ``path`` as JSON, atomically (temporary file, then rename)."""
    text = json.dumps(det.to_json(), indent=2, allow_nan=False) + "\n"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write detector to {os.fspath(path)}: {exc.strerror or exc}; "
            "check that the directory exists and is writable"
        ) from exc


def load_detector(path: str | os.PathLike) -> Detector:
    """Read a detector written by :func:`save_detector`; :class:`DetectorError` if unreadable."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError as exc:
        raise DetectorError(
            f"detector file {name} does not exist; create it with `flatrob detect ... --save {name}`"
        ) from exc
    except OSError as exc:
        raise DetectorError(f"cannot read detector file {name}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DetectorError(
            f"detector file {name} is not valid JSON ({exc}); "
            "re-create it with `flatrob detect ... --save FILE`"
        ) from exc
    try:
        return Detector.from_json(doc)
    except DetectorError as exc:
        raise DetectorError(f"{name}: {exc}") from exc
