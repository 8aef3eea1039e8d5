"""The certified radius of Proposition 8/9 (appendix C.2-C.3): numbers only, numpy only.

With a feature-space step ``Delta <= L delta / r`` the loss rises by at most

    g Delta + (kappa / 2) Delta^2 + (k m L^3 / 24) Delta^3,

where ``kappa`` is the relative sharpness, ``L`` the Lipschitz constant of the feature map ``phi``,
``r <= ||phi(x)||``, ``k`` the number of classes, ``m`` the feature dimension and
``g = ||W||_F ||grad_W loss||_F`` (zero at a minimum, as the paper assumes). The certified radius is
``delta = r Delta* / L`` with ``Delta*`` the unique positive root of

    (k m L^3 / 24) D^3 + (kappa / 2) D^2 + g D - epsilon = 0.

The root is found numerically (:func:`positive_root`); the Cardano expression printed in C.3 has typos
and, even when corrected, loses all precision when one term dominates. As ``kappa -> 0`` with ``g = 0``
the radius saturates at ``(r / L) (24 epsilon / (k m L^3))^(1/3)``.

This module imports nothing heavier than numpy so that ``flatrob bound`` answers fast in shell loops.
Bad inputs raise :class:`BoundInputError`, which is both a :class:`ValueError` and a
:class:`~flatcli.errors.UsageError` (exit code 2 in the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flatcli.errors import UsageError

__all__ = ["RANGES", "BoundInputError", "Radius", "certified_radius", "positive_root"]

# Newton stops once a step moves t (which lies in [1/3, 1]) by less than this relative amount: the
# convergence is quadratic with constant g''/(2 g') <= 12 on [1/3, 1], so the next error is below
# 12 * 1e-20 relative, i.e. already at rounding level.
_STEP_TOL = 1e-10
# Never reached in practice (at most 6 passes over the whole float64 range, see the tests);
# bisection alone would shrink the bracket [1/3, 1] below one ulp in 53 steps.
_MAX_ITER = 64


#: What each input of the bound must be: (the range in words, a vectorised test, what the input is).
#: The one statement of these ranges: :func:`certified_radius` and the ``bound`` command check with it.
RANGES = {
    "kappa": (">= 0", lambda v: v >= 0, "relative sharpness"),
    "lipschitz": ("positive", lambda v: v > 0, "Lipschitz constant of the feature map"),
    "r": ("positive", lambda v: v > 0, "lower bound on the feature norm ||phi(x)||"),
    "classes": ("a whole number >= 1", lambda v: (v >= 1) & (v == np.floor(v)), "the number of classes k"),
    "features": ("a whole number >= 1", lambda v: (v >= 1) & (v == np.floor(v)), "the feature dimension m"),
    "epsilon": ("positive", lambda v: v > 0, "the allowed loss increase"),
    "grad": (">= 0", lambda v: v >= 0, "||W||_F times the gradient norm"),
}


class BoundInputError(UsageError, ValueError):
    """A coefficient or argument of the bound is non-finite, out of range, or of the wrong shape."""


def _as_float(name: str, value) -> np.ndarray:
    """``value`` as a float64 array, finite everywhere, or :class:`BoundInputError` naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BoundInputError(f"{name} must be a number or an array of numbers, got {value!r}") from exc
    bad = ~np.isfinite(arr)
    if bad.any():
        raise BoundInputError(f"{name} must be finite, got {_first(arr, bad)}")
    return arr


def _first(arr: np.ndarray, bad: np.ndarray) -> str:
    """The first offending entry of ``arr`` (where ``bad``), with its index when ``arr`` is an array."""
    if arr.ndim == 0:
        return repr(float(arr))
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = index[0] if len(index) == 1 else index
    return f"{float(arr[index])!r} at index {where} ({int(bad.sum())} bad of {arr.size})"


def _require(name: str, arr: np.ndarray, bad: np.ndarray, what: str) -> None:
    if bad.any():
        raise BoundInputError(f"{name} must be {what}, got {_first(arr, bad)}")


def _broadcast(**arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return np.broadcast_arrays(*arrays.values())
    except ValueError as exc:
        shapes = ", ".join(f"{n} {a.shape}" for n, a in arrays.items())
        raise BoundInputError(f"argument shapes do not broadcast together: {shapes}") from exc


def _scalar_or_array(arr: np.ndarray):
    """A numpy float for 0-d results (JSON-serialisable), the array otherwise."""
    return arr[()]


def positive_root(a3, a2, a1, eps):
    """The unique positive root ``D`` of ``a3 D^3 + a2 D^2 + a1 D - eps = 0``.

    Requires ``a3 > 0``, ``a2 >= 0``, ``a1 >= 0``, ``eps > 0``, all finite; arrays broadcast. The
    left side is increasing and convex for ``D > 0`` and negative at 0, so the positive root is unique.

    Method. Let ``s = min((eps/a3)^(1/3), (eps/a2)^(1/2), eps/a1)``, the smallest of the roots of the
    one-term equations (a zero coefficient contributes ``inf``). Substituting ``D = s t`` gives

        c3 t^3 + c2 t^2 + c1 t - 1 = 0,   c3 = (s/s3)^3, c2 = (s/s2)^2, c1 = s/s1,

    with every ``c_i`` in ``[0, 1]`` and at least one equal to 1. At ``t = 1`` the left side is
    ``>= 0``; at ``t = 1/3`` it is at most ``1/27 + 1/9 + 1/3 - 1 = -14/27 < 0``. So ``t*`` lies in
    ``(1/3, 1]`` and the derivative there is at least ``1/3``: the scaled problem is well conditioned
    whatever the magnitudes of the original coefficients, and ``s`` is computed from ``cbrt``/``sqrt``
    of each coefficient separately so nothing overflows. Newton's method starts at ``t = 1``; as the
    function is convex and increasing, the iterates decrease monotonically to the root (quadratic
    convergence: at most 6 passes, the last one confirming). As a safeguard against rounding, the
    sign-checked bracket ``[lo, hi]`` is kept and a Newton step that leaves it becomes a bisection.

    Returns a float64 array of the broadcast shape (a numpy float for scalar inputs), accurate to a
    few ulps wherever the root and ``s`` are normal floats (e.g. every coefficient in 1e-100..1e100);
    a root below the float range comes back as 0.
    """
    a3, a2, a1, eps = _broadcast(
        a3=_as_float("a3", a3), a2=_as_float("a2", a2), a1=_as_float("a1", a1), eps=_as_float("eps", eps)
    )
    _require("a3", a3, a3 <= 0, "> 0 (the cubic coefficient)")
    _require("a2", a2, a2 < 0, ">= 0")
    _require("a1", a1, a1 < 0, ">= 0")
    _require("eps", eps, eps <= 0, "> 0")

    with np.errstate(divide="ignore", over="ignore"):
        s3 = np.cbrt(eps) / np.cbrt(a3)
        s2 = np.sqrt(eps) / np.sqrt(a2)  # inf where a2 == 0
        s1 = eps / a1  # inf where a1 == 0 (or past the float range: then c1 is negligible anyway)
    s = np.minimum(np.minimum(s3, s2), s1)
    c3 = (s / s3) ** 3
    c2 = (s / s2) ** 2
    # s3 and s2 never underflow to 0 (float64 cannot hold such coefficients), but s1 = eps/a1 can:
    # then D* < s1 is below the float range, and c1 = 1 makes t* = 1, D* = s t* = 0.
    c1 = np.divide(s, s1, out=np.ones_like(s), where=s1 > 0)

    t = np.ones_like(s)
    lo = np.full_like(s, 1.0 / 3.0)
    hi = np.ones_like(s)
    for _ in range(_MAX_ITER):
        g = ((c3 * t + c2) * t + c1) * t - 1.0
        dg = (3.0 * c3 * t + 2.0 * c2) * t + c1
        hi = np.where(g >= 0.0, t, hi)
        lo = np.where(g < 0.0, t, lo)
        new = t - g / dg
        new = np.where((new < lo) | (new > hi), 0.5 * (lo + hi), new)
        converged = np.abs(new - t) <= _STEP_TOL * new
        t = new
        if converged.all():
            break
    return _scalar_or_array(s * t)


@dataclass(frozen=True)
class Radius:
    """The certified radius and its parts; every field broadcasts to the shape of the inputs.

    ``delta = r D* / L`` is the certified input-space radius, ``feature_step = D*`` the feature-space
    step, ``saturation = (r / L) (24 epsilon / (k m L^3))^(1/3)`` the ``kappa -> 0``, ``g = 0`` limit of
    ``delta``, and ``first_order = g D*``, ``second_order = (kappa / 2) D*^2``,
    ``third_order = (k m L^3 / 24) D*^3`` the three terms of the bound, which sum to ``epsilon``.
    """

    delta: np.ndarray
    feature_step: np.ndarray
    saturation: np.ndarray
    first_order: np.ndarray
    second_order: np.ndarray
    third_order: np.ndarray


def certified_radius(*, kappa, lipschitz, r, classes, features, epsilon, grad=0.0) -> Radius:
    """Largest input radius ``delta`` for which Prop. 8/9 certifies a loss increase of at most ``epsilon``.

    ``delta = r D* / L``, ``D*`` the positive root of
    ``(k m L^3 / 24) D^3 + (kappa / 2) D^2 + g D - epsilon = 0``, with ``kappa`` the relative sharpness
    (``>= 0``), ``L = lipschitz`` (``> 0``), ``r`` the lower bound on ``||phi(x)||`` (``> 0``),
    ``k = classes`` and ``m = features`` (whole numbers ``>= 1``), ``epsilon > 0`` and
    ``g = grad = ||W||_F ||grad_W loss||_F >= 0`` (0 at a minimum). Any argument may be an array
    (e.g. per-sample ``kappa``, ``r``, ``grad``); all broadcast together.

    Internally the cubic is solved for ``x = L D``,
    ``(k m / 24) x^3 + (kappa / (2 L^2)) x^2 + (g / L) x - epsilon = 0``, so that ``L^3`` is never
    formed: sound Lipschitz bounds of deep networks can be astronomically large.
    """
    kappa = _as_float("kappa", kappa)
    lipschitz = _as_float("lipschitz", lipschitz)
    r = _as_float("r", r)
    classes = _as_float("classes", classes)
    features = _as_float("features", features)
    epsilon = _as_float("epsilon", epsilon)
    grad = _as_float("grad", grad)
    for name, value in (("kappa", kappa), ("lipschitz", lipschitz), ("r", r), ("classes", classes),
                        ("features", features), ("epsilon", epsilon), ("grad", grad)):
        what, holds, meaning = RANGES[name]
        _require(name, value, ~holds(value), f"{what} ({meaning})")
    kappa, lipschitz, r, classes, features, epsilon, grad = _broadcast(
        kappa=kappa, lipschitz=lipschitz, r=r, classes=classes, features=features, epsilon=epsilon, grad=grad
    )

    with np.errstate(all="ignore"):  # overflow is reported below, in words, not as a numpy warning
        km24 = classes * features / 24.0
        a2, a1 = kappa / 2.0 / lipschitz / lipschitz, grad / lipschitz
        _require_solvable(a2, a1, lipschitz)
        x = np.asarray(positive_root(km24, a2, a1, epsilon))
        step = x / lipschitz
        parts = {
            "delta": r * step / lipschitz,
            "feature_step": step,
            "saturation": r * np.cbrt(epsilon / km24) / lipschitz / lipschitz,
            "first_order": grad * step,
            "second_order": kappa / 2.0 * step * step,
            "third_order": km24 * x * x * x,
        }
    for name, value in parts.items():
        bad = ~np.isfinite(value)
        if bad.any():
            raise BoundInputError(f"the certified radius overflows float64 ({name.replace('_', ' ')} is "
                                  f"{_first(np.asarray(value, dtype=np.float64), bad)}); the inputs are too extreme "
                                  "to give a meaningful radius (check L, r and epsilon)")
    return Radius(**{name: _scalar_or_array(value) for name, value in parts.items()})


def _require_solvable(a2: np.ndarray, a1: np.ndarray, lipschitz: np.ndarray) -> None:
    """The scaled cubic's coefficients ``kappa / (2 L^2)`` and ``g / L`` must be finite floats."""
    for term, coef in (("kappa / (2 L^2)", a2), ("g / L", a1)):
        bad = ~np.isfinite(coef)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0]) if coef.ndim else ()
            L = float(lipschitz[index]) if lipschitz.ndim else float(lipschitz)
            raise BoundInputError(f"{term} overflows float64 for L = {L!r}: L is too small for the bound "
                                  "to be computed in float64; give a Lipschitz constant of a sensible size")
