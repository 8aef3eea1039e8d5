"""Summary statistics: the batched path equals the per-column one, non-finite values are counted."""

import numpy as np

from flatcli.stats import describe, describe_columns


def test_columns_at_once_equal_one_by_one():
    rng = np.random.default_rng(0)
    cols = {f"c{i}": rng.normal(size=361) * 10**i for i in range(8)}
    assert describe_columns(cols) == {k: describe(v) for k, v in cols.items()}


def test_nonfinite_values_are_counted_not_averaged():
    cols = {"a": np.array([1.0, np.nan, 3.0]), "b": np.array([1.0, 2.0, 3.0])}
    out = describe_columns(cols)
    assert out["a"] == {"mean": 2.0, "std": 1.0, "median": 2.0, "min": 1.0, "max": 3.0, "nonfinite": 1}
    assert out["b"] == describe(cols["b"])
