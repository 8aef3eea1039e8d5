"""Summary statistics of per-sample values (NaN-aware: non-finite values are counted, not averaged)."""

from __future__ import annotations

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
