"""Summary statistics: the batched path equals the per-column one, non-finite values are counted;
ranks, Spearman (against scipy) and the censored median."""

import numpy as np
import pytest

from flatcli.core.statistics import censored_median, describe, describe_columns, rankdata, spearman


def test_columns_at_once_equal_one_by_one():
    rng = np.random.default_rng(0)
    cols = {f"c{i}": rng.normal(size=361) * 10**i for i in range(8)}
    assert describe_columns(cols) == {k: describe(v) for k, v in cols.items()}


def test_nonfinite_values_are_counted_not_averaged():
    cols = {"a": np.array([1.0, np.nan, 3.0]), "b": np.array([1.0, 2.0, 3.0])}
    out = describe_columns(cols)
    assert out["a"] == {"mean": 2.0, "std": 1.0, "median": 2.0, "min": 1.0, "max": 3.0, "nonfinite": 1}
    assert out["b"] == describe(cols["b"])




def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]
    assert rankdata([3.0]).tolist() == [1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a * 0.5 + rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    c = rng.normal(size=25)
    d = -np.exp(c) + 0.01 * rng.normal(size=25)
    assert spearman(c, d) == pytest.approx(stats.spearmanr(c, d).statistic, abs=1e-12)


def test_spearman_degenerate_is_nan():
    assert np.isnan(spearman([1, 2], [2, 1]))
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)


def test_censored_median_is_not_a_number_when_half_are_censored():
    w = np.array([0.1, 0.2, 0.3, np.nan])
    assert censored_median(w, np.array([False, False, False, True])) == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert censored_median(w[:3], np.array([False, False, False])) == pytest.approx(0.2)
    assert censored_median(np.array([0.1, np.nan, np.nan]), np.array([False, True, True])) is None
    assert censored_median(np.zeros(0), np.zeros(0, dtype=bool)) is None


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
