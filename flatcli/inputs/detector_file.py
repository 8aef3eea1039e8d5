"""The saved-detector file (``detect --save`` / ``--detector``): JSON of :meth:`Detector.to_json`, atomically.

Floats are written with ``repr`` precision (``json``'s default), so a loaded detector reproduces the
fitted predictions bit for bit; NaN/Inf are refused on writing. Reading treats the file as untrusted: at
most :data:`MAX_DETECTOR_BYTES` are read, integers of more than :data:`MAX_INT_DIGITS` digits, NaN and
Infinity are refused while parsing, and the ``meta`` entries that applying a detector reads
(:data:`META_STRINGS`, ``weight_norm``) must be what ``--save`` writes; every refusal names the file.
"""

from __future__ import annotations

import json
import os

from flatcli.core.curvature import WEIGHT_NORMS
from flatcli.core.detectors import Detector
from flatcli.errors import DetectorError, UsageError
from flatcli.inputs.text import read_text
from flatcli.outputs.plan import output_path

#: The largest detector file read (a threshold detector is a few KB; a Mahalanobis precision matrix over
#: 512 features is about 5 MB of JSON, over 2048 about 80 MB).
MAX_DETECTOR_BYTES = 128 * 1024 * 1024
#: Integers with more digits are refused (a float64 holds about 17).
MAX_INT_DIGITS = 20
#: ``meta`` entries that applying a detector reads, which must be strings (or absent / null).
META_STRINGS = ("checkpoint", "checkpoint_sha256", "weights_sha256", "layer", "arch")


def save_detector(path: str | os.PathLike, det: Detector) -> None:
    """Write ``det.to_json()`` to ``path`` as JSON (committed with the run's other outputs)."""
    text = json.dumps(det.to_json(), indent=2, allow_nan=False) + "\n"
    try:
        with output_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write detector to {os.fspath(path)}: {exc.strerror or exc}; "
            "check that the directory exists and is writable"
        ) from exc


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _constant(text: str):
    raise ValueError(f"{text} (not a finite number)")


def load_detector(path: str | os.PathLike) -> Detector:
    """Read a detector written by :func:`save_detector`; :class:`DetectorError` naming the file if it is not one."""
    name = os.fspath(path)
    text = read_text(name, limit=MAX_DETECTOR_BYTES, what="detector file", error=DetectorError,
                     missing_hint=f"; create it with `flatrob detect ... --save {name}`")
    try:
        doc = json.loads(text, parse_int=_integer, parse_constant=_constant)
    except (ValueError, RecursionError) as exc:
        raise DetectorError(
            f"detector file {name} is not valid JSON ({str(exc)[:100]}); "
            "re-create it with `flatrob detect ... --save FILE`"
        ) from None
    try:
        det = Detector.from_json(doc)
    except DetectorError as exc:
        raise DetectorError(f"{name}: {str(exc)[:300]}") from None
    for key in META_STRINGS:
        if not isinstance(det.meta.get(key), (str, type(None))):
            raise DetectorError(f"{name}: meta.{key} must be a string, got {json.dumps(det.meta[key])[:60]}; "
                                "re-create the detector with `flatrob detect ... --save FILE`")
    if det.meta.get("weight_norm", "squared") not in WEIGHT_NORMS:
        raise DetectorError(f"{name}: meta.weight_norm must be one of {', '.join(WEIGHT_NORMS)}, got "
                            f"{json.dumps(det.meta['weight_norm'])[:60]}; re-create the detector")
    return det
