"""The numerical core of ``flatrob bound``: the cubic's positive root and the certified radius."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flatcli.core.radius as bound
from flatcli.core.radius import BoundInputError, certified_radius, positive_root
from flatcli.errors import UsageError

# Log-uniform magnitudes 1e-12..1e12, optionally exactly zero.
MAG = st.floats(-12.0, 12.0).map(lambda e: 10.0**e)
MAG_OR_ZERO = st.one_of(st.just(0.0), MAG)
COUNT = st.integers(1, 10_000)
RTOL = 1e-12  # monotonicity: "equal" only within float rounding

settings.register_profile("bound", deadline=None, max_examples=300)
settings.load_profile("bound")


def relative_residual(a3, a2, a1, eps, d):
    """|cubic(d)| over the largest of its terms (and eps): 0 for an exact root, ~1e-16 at rounding."""
    terms = np.stack(np.broadcast_arrays(a3 * d**3, a2 * d**2, a1 * d))
    return np.abs(terms.sum(axis=0) - eps) / np.maximum(terms.max(axis=0), eps)


def one_term_roots_min(a3, a2, a1, eps):
    eps = np.float64(eps)
    with np.errstate(divide="ignore"):
        return min(np.cbrt(eps / a3), np.sqrt(eps / a2), eps / a1)


# ---------------------------------------------------------------- positive_root


@given(a3=MAG, a2=MAG_OR_ZERO, a1=MAG_OR_ZERO, eps=MAG)
def test_root_is_positive_bracketed_and_solves_the_cubic(a3, a2, a1, eps):
    d = positive_root(a3, a2, a1, eps)
    assert isinstance(d, float) and d > 0
    s = one_term_roots_min(a3, a2, a1, eps)
    assert s / 3 < d <= s * (1 + 1e-14)
    assert relative_residual(a3, a2, a1, eps, d) <= 1e-9


def test_pure_cubic_and_one_term_equations_are_exact():
    assert positive_root(2.0, 0.0, 0.0, 16.0) == pytest.approx(2.0, rel=1e-15)
    assert positive_root(1e-12, 0.0, 0.0, 1e12) == pytest.approx(1e8, rel=1e-15)
    # a1 = a3 = tiny: essentially the quadratic term alone
    assert positive_root(1e-300, 4.0, 0.0, 1.0) == pytest.approx(0.5, rel=1e-15)


@pytest.mark.parametrize(
    "coefficients",
    [
        (1.0, 1.0, 1.0, 1.0),
        (1.0, 3.0, 3.0, 7.0),  # (D + 1)^3 = 8: D = 1
        (1e-12, 1e12, 1e-12, 1e-12),
        (1e12, 1e-12, 1e12, 1e12),
        (1e12, 0.0, 1e-12, 1e-12),
        (3.7e-5, 2.2e6, 0.0, 4.1e-9),
        (24.0 / 1000.0, 0.5, 1e-3, 0.1),
        (1e-12, 1e-12, 1e-12, 1e12),
    ],
)
def test_root_matches_an_independent_high_precision_oracle(coefficients):
    mpmath = pytest.importorskip("mpmath")
    a3, a2, a1, eps = coefficients
    with mpmath.workdps(60):
        roots = mpmath.polyroots([a3, a2, a1, -eps], maxsteps=500, extraprec=400)
        oracle = max(float(mpmath.re(x)) for x in roots if abs(mpmath.im(x)) < 1e-30 and mpmath.re(x) > 0)
    assert positive_root(a3, a2, a1, eps) == pytest.approx(oracle, rel=4e-16)


def test_root_matches_numpy_roots_on_moderate_coefficients():
    rng = np.random.default_rng(7)
    for a3, a2, a1, eps in 10.0 ** rng.uniform(-3, 3, size=(200, 4)):
        roots = np.roots([a3, a2, a1, -eps])
        real = roots[np.abs(roots.imag) <= 1e-9 * np.abs(roots)].real
        assert positive_root(a3, a2, a1, eps) == pytest.approx(real[real > 0].max(), rel=1e-10)


def test_known_root_is_recovered():
    rng = np.random.default_rng(3)
    a3, a2, a1, d0 = 10.0 ** rng.uniform(-12, 12, size=(4, 10_000))
    eps = a3 * d0**3 + a2 * d0**2 + a1 * d0
    np.testing.assert_allclose(positive_root(a3, a2, a1, eps), d0, rtol=1e-14)


def test_vectorised_1e5_samples_is_fast_broadcasts_and_needs_six_passes(monkeypatch):
    rng = np.random.default_rng(0)
    n = 100_000
    a3, a2, a1, eps = 10.0 ** rng.uniform(-12, 12, size=(4, n))
    a2[rng.random(n) < 0.2] = 0.0
    a1[rng.random(n) < 0.2] = 0.0
    positive_root(a3[:10], a2[:10], a1[:10], eps[:10])  # warm-up
    start = time.perf_counter()
    d = positive_root(a3, a2, a1, eps)
    assert time.perf_counter() - start < 0.3
    assert d.shape == (n,) and np.all(d > 0)
    assert relative_residual(a3, a2, a1, eps, d).max() <= 1e-14
    # the docstring's claim: six passes reach the fixed point, even far outside 1e-12..1e12
    wide = 10.0 ** rng.uniform(-100, 100, size=(4, n))
    monkeypatch.setattr(bound, "_MAX_ITER", 6)
    np.testing.assert_array_equal(positive_root(a3, a2, a1, eps), d)
    six = positive_root(*wide)
    monkeypatch.undo()
    np.testing.assert_array_equal(six, positive_root(*wide))
    # broadcasting: a column of a3 against a row of eps
    grid = positive_root(a3[:5, None], 0.0, 1.0, eps[None, :7])
    assert grid.shape == (5, 7)
    assert grid[2, 3] == positive_root(a3[2], 0.0, 1.0, eps[3])


def test_extreme_magnitudes_neither_overflow_nor_produce_nan():
    rng = np.random.default_rng(1)
    coefficients = 10.0 ** rng.uniform(-300, 300, size=(4, 100_000))
    with np.errstate(over="raise", invalid="raise"):
        d = positive_root(*coefficients)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    # eps / a1 below the float range: so is the root, which underflows to 0 instead of NaN
    assert positive_root(1e-47, 1e-38, 1e300, 1e-272) == 0.0


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0.0, 1.0, 1.0, 1.0), "a3"),
        ((-1.0, 1.0, 1.0, 1.0), "a3"),
        ((1.0, -1e-9, 1.0, 1.0), "a2"),
        ((1.0, 1.0, -1.0, 1.0), "a1"),
        ((1.0, 1.0, 1.0, 0.0), "eps"),
        ((1.0, 1.0, 1.0, -2.0), "eps"),
        ((np.nan, 1.0, 1.0, 1.0), "a3"),
        ((1.0, np.inf, 1.0, 1.0), "a2"),
        ((1.0, 1.0, [1.0, np.nan], 1.0), "a1"),
        ((1.0, 1.0, 1.0, "much"), "eps"),
    ],
)
def test_positive_root_rejects_bad_coefficients(args, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        positive_root(*args)


def test_shapes_that_do_not_broadcast_are_rejected():
    with pytest.raises(ValueError, match="do not broadcast"):
        positive_root(np.ones(3), np.ones(4), 0.0, 1.0)


# ---------------------------------------------------------------- certified_radius


PARAMS = {
    "kappa": MAG_OR_ZERO,
    "lipschitz": MAG,
    "r": MAG,
    "classes": COUNT,
    "features": COUNT,
    "epsilon": MAG,
    "grad": MAG_OR_ZERO,
}


@given(**PARAMS)
def test_terms_sum_to_epsilon_and_radius_is_consistent(kappa, lipschitz, r, classes, features, epsilon, grad):
    rad = certified_radius(
        kappa=kappa, lipschitz=lipschitz, r=r, classes=classes, features=features, epsilon=epsilon, grad=grad
    )
    d = rad.feature_step
    assert d > 0 and rad.delta > 0
    assert rad.delta == pytest.approx(r * d / lipschitz, rel=1e-15)
    assert rad.first_order == pytest.approx(grad * d, rel=1e-15)
    assert rad.second_order == pytest.approx(kappa / 2 * d * d, rel=1e-14)
    assert rad.third_order == pytest.approx(classes * features * lipschitz**3 / 24 * d**3, rel=1e-13)
    total = rad.first_order + rad.second_order + rad.third_order
    assert total == pytest.approx(epsilon, rel=1e-13)
    assert rad.delta <= rad.saturation * (1 + RTOL)


@pytest.mark.parametrize(
    ("name", "direction"),
    [("kappa", -1), ("lipschitz", -1), ("grad", -1), ("epsilon", +1), ("r", +1)],
)
@settings(max_examples=150)
@given(data=st.data())
def test_delta_is_monotone(name, direction, data):
    base = {key: data.draw(strategy, label=key) for key, strategy in PARAMS.items()}
    low, high = sorted(data.draw(st.tuples(PARAMS[name], PARAMS[name]), label=name))
    d_low = certified_radius(**{**base, name: low}).delta
    d_high = certified_radius(**{**base, name: high}).delta
    if direction < 0:
        assert d_low >= d_high * (1 - RTOL)
    else:
        assert d_high >= d_low * (1 - RTOL)
    if low < high * (1 - 1e-6) and name in ("lipschitz", "epsilon", "r"):
        assert d_low != d_high  # these enter every term: strictly monotone


@given(
    lipschitz=st.floats(-3.0, 6.0).map(lambda e: 10.0**e),
    r=MAG,
    classes=COUNT,
    features=COUNT,
    epsilon=st.floats(-6.0, 6.0).map(lambda e: 10.0**e),
)
def test_flat_limit_saturates(lipschitz, r, classes, features, epsilon):
    kwargs = dict(lipschitz=lipschitz, r=r, classes=classes, features=features, epsilon=epsilon)
    rad = certified_radius(kappa=1e-30, **kwargs)
    assert rad.delta == pytest.approx(rad.saturation, rel=1e-9)
    expected = (r / lipschitz) * (24 * epsilon / (classes * features * lipschitz**3)) ** (1 / 3)
    assert rad.saturation == pytest.approx(expected, rel=1e-13)
    # approached from below as kappa falls
    deltas = [certified_radius(kappa=k, **kwargs).delta for k in 10.0 ** np.arange(6.0, -31.0, -3.0)]
    assert all(b >= a * (1 - RTOL) for a, b in zip(deltas, deltas[1:]))
    assert deltas[-1] <= rad.saturation * (1 + RTOL)


def test_worked_example_against_hand_computation():
    # k m L^3 / 24 = 10 * 24 * 1 / 24 = 10; kappa/2 = 1; g = 0; epsilon = 11: 10 D^3 + D^2 = 11 at D = 1
    rad = certified_radius(kappa=2.0, lipschitz=1.0, r=0.5, classes=10, features=24, epsilon=11.0)
    assert rad.feature_step == pytest.approx(1.0, rel=1e-15)
    assert rad.delta == pytest.approx(0.5, rel=1e-15)
    assert (rad.first_order, rad.second_order, rad.third_order) == pytest.approx((0.0, 1.0, 10.0), rel=1e-15)
    assert rad.saturation == pytest.approx(0.5 * 1.1 ** (1 / 3), rel=1e-15)
    json.dumps({"delta": rad.delta})  # scalar inputs give plain (numpy) floats


def test_per_sample_arrays_broadcast():
    rng = np.random.default_rng(5)
    n = 100_000
    kappa = 10.0 ** rng.uniform(-6, 3, n)
    r = rng.uniform(0.5, 20.0, n)
    grad = np.where(rng.random(n) < 0.5, 0.0, 10.0 ** rng.uniform(-6, 1, n))
    start = time.perf_counter()
    rad = certified_radius(kappa=kappa, lipschitz=3.0, r=r, classes=10, features=512, epsilon=0.1, grad=grad)
    assert time.perf_counter() - start < 0.3
    assert rad.delta.shape == rad.saturation.shape == rad.third_order.shape == (n,)
    i = 1234
    one = certified_radius(kappa=kappa[i], lipschitz=3.0, r=r[i], classes=10, features=512, epsilon=0.1, grad=grad[i])
    assert rad.delta[i] == one.delta


def test_astronomical_lipschitz_bounds_do_not_overflow():
    # a sound product-of-norms bound through a deep network can exceed the cube root of float max
    rad = certified_radius(kappa=1.0, lipschitz=1e150, r=1.0, classes=10, features=512, epsilon=0.1)
    assert 0 < rad.delta <= rad.saturation * (1 + RTOL)
    assert rad.third_order == pytest.approx(0.1, rel=1e-13)


GOOD = dict(kappa=1.0, lipschitz=1.0, r=1.0, classes=10, features=64, epsilon=0.1, grad=0.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kappa", -1e-3),
        ("kappa", np.nan),
        ("lipschitz", 0.0),
        ("lipschitz", -2.0),
        ("lipschitz", np.inf),
        ("r", 0.0),
        ("r", np.array([1.0, -1.0])),
        ("classes", 0),
        ("classes", 2.5),
        ("features", 0),
        ("epsilon", 0.0),
        ("epsilon", -0.1),
        ("grad", -1.0),
        ("grad", np.array([0.0, 1.0, np.nan])),
        ("kappa", "sharp"),
        ("kappa", None),
    ],
)
def test_certified_radius_rejects_bad_arguments_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be") as info:
        certified_radius(**{**GOOD, name: value})
    assert isinstance(info.value, UsageError)  # the CLI maps it to exit code 2
    assert isinstance(info.value, BoundInputError)


def test_bad_array_entry_is_located():
    with pytest.raises(ValueError, match=r"-1\.0 at index 2 \(1 bad of 4\)"):
        certified_radius(**{**GOOD, "r": np.array([1.0, 2.0, -1.0, 3.0])})


def test_single_class_is_allowed():
    assert certified_radius(**{**GOOD, "classes": 1}).delta > 0
