"""Summary statistics of per-sample values (NaN-aware: non-finite values are counted, not averaged), ranks."""

from __future__ import annotations

import math

import numpy as np


def describe(values) -> dict:
    """``mean, std, median, min, max`` of the finite values, plus ``nonfinite`` when any are not."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
    if finite.size:
        out = {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "median": float(np.median(finite)),
            "min": float(finite.min()),
            "max": float(finite.max()),
        }
    if finite.size != v.size:
        out["nonfinite"] = int(v.size - finite.size)
    return out


def describe_columns(columns: dict[str, np.ndarray]) -> dict[str, dict]:
    """:func:`describe` of each column; columns of equal length and all finite go through numpy at once."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        return {k: describe(a) for k, a in arrays.items()}
    stacked = np.stack(list(arrays.values()))
    if not np.isfinite(stacked).all():
        return {k: describe(a) for k, a in arrays.items()}
    stats = {
        "mean": stacked.mean(1),
        "std": stacked.std(1),
        "median": np.median(stacked, axis=1),
        "min": stacked.min(1),
        "max": stacked.max(1),
    }
    return {k: {name: float(v[i]) for name, v in stats.items()} for i, k in enumerate(arrays)}


def quantiles(values, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    """``describe`` plus the given quantiles, keyed ``q05``, ``q25``, ..."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = describe(v)
    for q in qs:
        out[f"q{round(q * 100):02d}"] = float(np.quantile(finite, q)) if finite.size else float("nan")
    return out


#: The quantiles over samples reported at every step of a trajectory (the bands of Fig. 3).
STEP_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def quantiles_by_step(values) -> dict[str, list[float]]:
    """The :data:`STEP_QUANTILES` over samples at every step of ``values`` (steps x samples), keyed ``q10``,
    ``q25``, ...; NaN at every step when there is no sample."""
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, STEP_QUANTILES, axis=1) if v.shape[1] else np.full((len(STEP_QUANTILES), v.shape[0]), np.nan)
    return {f"q{round(level * 100):02d}": row.tolist() for level, row in zip(STEP_QUANTILES, q)}


def rankdata(values) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the average of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0  # mean of ranks ends-counts+1 .. ends
    return average[inverse.reshape(-1)]


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties).

    NaN when fewer than 3 pairs or when either side is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman needs two 1-d sequences of the same length")
    if a.size < 3:
        return float("nan")
    ra = rankdata(a) - (a.size + 1) / 2.0
    rb = rankdata(b) - (b.size + 1) / 2.0
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def censored_median(width: np.ndarray, censored: np.ndarray) -> float | None:
    """Median basin width with censored samples counted as wider than every measured one (their width
    is at least the final distance, which no measured width reaches); ``None`` when the median falls
    on a censored sample, i.e. it is not measured."""
    if width.size == 0:
        return None
    value = float(np.median(np.where(censored, np.inf, width)))
    return value if math.isfinite(value) else None
