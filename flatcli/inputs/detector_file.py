"""The saved-detector file (``detect --save`` / ``--detector``): JSON of :meth:`Detector.to_json`, written
atomically, read and validated.

Floats are written with ``repr`` precision (``json``'s default), so a loaded detector reproduces the
fitted predictions bit for bit; NaN/Inf are refused on writing. Reading treats the file as untrusted: at
most :data:`MAX_DETECTOR_BYTES` are read, integers of more than :data:`MAX_INT_DIGITS` digits, NaN and
Infinity are refused while parsing; :func:`detector_from_json` checks the document (kind, schema version,
a registered method and one of its scores, then what the method's class reads through a validating
:class:`~flatcli.core.detectors.ParameterReader`, the probe settings and Mahalanobis model it needs); and the
``meta`` entries that applying a detector reads (:data:`META_STRINGS`, ``weight_norm``) must be what
``--save`` writes. Every refusal is a :class:`~flatcli.errors.DetectorError`; :func:`load_detector` names the file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from flatcli.core.curvature import WEIGHT_NORMS
from flatcli.core.detectors import (
    DETECTOR_KIND,
    MAX_PROBE_STEPS,
    METHODS,
    SCHEMA_VERSION,
    Detector,
    MahalanobisModel,
)
from flatcli.errors import DetectorError, UsageError
from flatcli.inputs.text import read_text
from flatcli.outputs.plan import output_path

#: The largest detector file read (a threshold detector is a few KB; a Mahalanobis precision matrix over
#: 512 features is about 5 MB of JSON, over 2048 about 80 MB).
MAX_DETECTOR_BYTES = 128 * 1024 * 1024
#: Integers with more digits are refused (a float64 holds about 17).
MAX_INT_DIGITS = 20
#: ``meta`` entries that applying a detector reads, which must be strings (or absent / null).
META_STRINGS = ("checkpoint", "checkpoint_sha256", "weights_sha256", "layer", "arch", "chat_template", "system")


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
        det = detector_from_json(doc)
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


# --------------------------------------------------------------------------------------------
# Validating the document
# --------------------------------------------------------------------------------------------


def detector_from_json(doc: Any) -> Detector:
    """The detector of a :meth:`Detector.to_json` document; :class:`DetectorError` if it is malformed."""
    if not isinstance(doc, dict):
        raise DetectorError(
            f"a detector file must hold a JSON object, not {type(doc).__name__}; "
            "create one with `flatrob detect ... --save FILE`"
        )
    kind = doc.get("kind")
    if kind != DETECTOR_KIND:
        raise DetectorError(
            f"not a flatrob detector (kind is {kind!r}, expected {DETECTOR_KIND!r}); "
            "create one with `flatrob detect ... --save FILE`"
        )
    version = doc.get("schema_version")
    if not _is_int(version):
        raise DetectorError("detector file has no integer 'schema_version'; re-create it")
    if version > SCHEMA_VERSION:
        raise DetectorError(
            f"detector file has schema_version {version}, newer than this flatrob understands "
            f"({SCHEMA_VERSION}); upgrade flatrob or re-create the detector"
        )
    if version < 1:
        raise DetectorError(f"detector file has invalid schema_version {version}; re-create it")
    method = doc.get("method")
    cls = METHODS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise DetectorError(f"detector method is {method!r}, expected one of {', '.join(METHODS)}; re-create it")
    score = doc.get("score")
    if not isinstance(score, str):
        raise DetectorError("detector file lacks a string 'score'; re-create it")
    if score not in cls.scores:
        raise DetectorError(f"a {method} detector scores {' or '.join(map(repr, cls.scores))}, not {score!r}; "
                            "re-create it")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise DetectorError("detector 'meta' must be a JSON object; re-create it")
    probe = probe_from_json(doc.get("probe")) if cls.needs_probe else None
    mahalanobis = mahalanobis_from_json(doc.get("mahalanobis")) if cls.needs_mahalanobis else None
    parameters = cls.read_parameters(_Reader(doc, method), cls.columns_for(score, probe))
    return cls(score=score, mahalanobis=mahalanobis, probe=probe, meta=meta, **parameters)


def probe_from_json(p: Any) -> dict:
    """The ``probe`` entry: ``{"norm": "linf", "steps": 1..MAX_PROBE_STEPS, "size": > 0}``."""
    if not isinstance(p, dict) or set(p) != {"norm", "steps", "size"}:
        raise DetectorError("detector 'probe' must be an object with norm, steps and size; re-create it")
    steps, size = p["steps"], p["size"]
    if p["norm"] != "linf" or not _is_int(steps) or not 1 <= steps <= MAX_PROBE_STEPS:
        raise DetectorError(f"detector 'probe' must have norm 'linf' and 1 to {MAX_PROBE_STEPS} steps; re-create it")
    if not _is_number(size) or size <= 0:
        raise DetectorError("detector probe 'size' must be a finite number > 0; re-create it")
    return {"norm": "linf", "steps": int(steps), "size": float(size)}


def mahalanobis_from_json(doc: Any) -> MahalanobisModel:
    """The ``mahalanobis`` entry: at least 2 class means (k, m), an (m, m) precision, k positive counts."""
    if not isinstance(doc, dict):
        raise DetectorError("detector 'mahalanobis' must be a JSON object; re-create it")
    means = _finite_matrix(doc, "class_means")
    precision = _finite_matrix(doc, "precision")
    k, m = means.shape
    if k < 2 or precision.shape != (m, m):
        raise DetectorError(
            f"detector 'mahalanobis' holds {k} class means of dimension {m} and a precision of shape "
            f"{precision.shape}; expected at least 2 means and an (m, m) precision; re-create it"
        )
    counts = doc.get("counts")
    if not isinstance(counts, list) or len(counts) != k or not all(_is_int(c) and c > 0 for c in counts):
        raise DetectorError(f"detector 'mahalanobis' needs 'counts', {k} positive integers; re-create it")
    return MahalanobisModel(means, precision, np.asarray(counts, dtype=np.int64))


class _Reader:
    """The :class:`~flatcli.core.detectors.ParameterReader` over a detector document: each entry checked."""

    def __init__(self, doc: dict, method: str):
        self.doc = doc
        self.method = method

    def number(self, key: str) -> float:
        v = self.doc.get(key)
        if not _is_number(v):
            raise DetectorError(f"detector '{key}' must be a finite number, got {v!r}; re-create it")
        return float(v)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        v = self.doc.get(key)
        if v not in options:
            raise DetectorError(f"{self.method} {key} is {v!r}, expected {' or '.join(map(repr, options))}; "
                                "re-create it")
        return v

    def numbers(self, key: str, n: int, *, positive: bool = False) -> list[float]:
        v = self.doc.get(key)
        if not isinstance(v, list) or len(v) != n or not all(_is_number(e) for e in v):
            raise DetectorError(f"detector '{key}' must be a list of {n} finite numbers, got {v!r}; re-create it")
        if positive and any(e <= 0 for e in v):
            raise DetectorError(f"detector '{key}' entries must be positive; re-create it")
        return [float(e) for e in v]

    def names(self, key: str, expected: tuple[str, ...]) -> list[str]:
        v = self.doc.get(key)
        if v != list(expected):
            raise DetectorError(f"a {self.method} detector with these settings reads the columns "
                                f"{', '.join(expected)}; the file lists {v!r}; re-create it")
        return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite_matrix(doc: dict, key: str) -> np.ndarray:
    """A non-empty list of equally long lists of finite numbers, as a float64 array."""
    v = doc.get(key)
    ok = isinstance(v, list) and v and all(isinstance(r, list) and r and len(r) == len(v[0]) for r in v)
    if not (ok and all(_is_number(e) for r in v for e in r)):
        raise DetectorError(f"detector '{key}' must be a matrix (a list of equal lists) of finite numbers; re-create it")
    return np.asarray(v, dtype=np.float64)
