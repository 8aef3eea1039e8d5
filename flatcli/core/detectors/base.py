"""The detector base class, the method registry, and fitting one detector through it.

A detection *method* is a subclass of :class:`Detector` registered with :func:`register`; its class
attributes state what the registry's readers (the run, the CLI's choices, the docs) need to know:

``method``
    the name, the value of the ``method`` option (command line and Python);
``summary``
    one line saying what it fits, for help texts and docs;
``conventions``
    the exact rule, copied into every run's ``config.conventions``; an option it names is written
    ``{option}`` and worded by the caller (:meth:`Detector.conventions_worded`);
``scores``
    the scores it may read, the first being the default (a threshold method may offer several; the
    others read one fixed set of columns, named by their one score);
``needs_probe`` / ``needs_mahalanobis``
    whether computing its columns needs the probe settings of the curvature profile, or a
    :class:`~flatcli.core.detectors.mahalanobis.MahalanobisModel` fitted on clean labelled data.

Two kinds of method share most of their code: threshold methods
(:class:`~flatcli.core.detectors.threshold.ThresholdDetector`) and logistic ones
(:class:`~flatcli.core.detectors.logistic.LogisticDetector`). An instance is a fitted detector: its
``score``, its fitted parameters, the Mahalanobis model and probe settings its columns need, and ``meta``
(free-form JSON-able provenance). ``decision(X) > 0`` means "adversarial".

Adding a method is one subclass and one :func:`register` call; :func:`fit`, cross-validation, saving
(:meth:`Detector.to_json`), reading (:func:`flatcli.inputs.detector_file.detector_from_json`, which
validates the untrusted file and hands the class a :class:`ParameterReader`) and the adaptive attack
(:meth:`Detector.decision_tensor`) go through the class. A method of an existing kind states only what
it reads; to run under ``flatrob detect`` its columns must be ones the scoring passes compute
(:func:`flatcli.core.detection_features.detection_features`)::

    @dataclass(kw_only=True)
    class Pair(LogisticDetector):
        method = "pair"
        summary = "logistic regression on the logs of relative sharpness and confidence"
        conventions = "logistic regression like components on the logs of relative_sharpness and confidence"
        scores = ("pair",)

        @classmethod
        def columns_for(cls, score, probe):
            return ("relative_sharpness", "confidence")

    register(Pair)
"""

from __future__ import annotations

import inspect
import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Protocol

import numpy as np

from flatcli.core.detectors.mahalanobis import MahalanobisModel
from flatcli.errors import OptionError, UsageError, literal

SCHEMA_VERSION = 1
DETECTOR_KIND = "flatrob-detector"


class ParameterReader(Protocol):
    """Reads a method's fitted parameters from a saved detector, validating each (raising on a bad one)."""

    def number(self, key: str) -> float:
        """A finite number."""

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        """One of ``options``."""

    def numbers(self, key: str, n: int, *, positive: bool = False) -> list[float]:
        """A list of ``n`` finite numbers (each > 0 with ``positive``)."""

    def names(self, key: str, expected: tuple[str, ...]) -> list[str]:
        """A list of names equal to ``expected``."""


@dataclass(kw_only=True)
class Detector(ABC):
    """A fitted detector of one method; ``decision(X) > 0`` means "adversarial" (see the module docstring).

    ``X`` holds one row per input and one column per name of :meth:`columns`, in that order (a threshold
    method also takes the ``(n,)`` vector of its one score).
    """

    method: ClassVar[str]
    summary: ClassVar[str]
    conventions: ClassVar[str]
    scores: ClassVar[tuple[str, ...]]
    needs_probe: ClassVar[bool] = False
    needs_mahalanobis: ClassVar[bool] = False

    score: str
    mahalanobis: MahalanobisModel | None = None
    probe: dict | None = None
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- what each kind of method defines

    @classmethod
    @abstractmethod
    def columns_for(cls, score: str, probe: dict | None) -> tuple[str, ...]:
        """The feature columns the method reads with this ``score`` and these probe settings, in order."""

    @classmethod
    @abstractmethod
    def shaped(cls, X: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
        """``X`` (float64) in the shape :meth:`decision` takes; :class:`UsageError` on another shape."""

    @classmethod
    @abstractmethod
    def fitted(cls, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
        """The fitted parameters (constructor keywords) on checked features ``X`` and labels ``y``."""

    @classmethod
    @abstractmethod
    def read_parameters(cls, read: ParameterReader, columns: tuple[str, ...]) -> dict:
        """The fitted parameters (constructor keywords) of a saved detector, read with ``read``."""

    @abstractmethod
    def parameters_json(self) -> dict:
        """The fitted parameters as :meth:`to_json` writes them (what :meth:`read_parameters` reads)."""

    @abstractmethod
    def decide(self, X: np.ndarray) -> np.ndarray:
        """:meth:`decision` on checked features."""

    @abstractmethod
    def decision_tensor(self, X):
        """:meth:`decision` on a float64 torch tensor ``(n, len(columns()))``, differentiable (the adaptive attack)."""

    @abstractmethod
    def thresholded(self, X: Any) -> np.ndarray:
        """The value the detector compares with its threshold (rows and plots show it)."""

    @abstractmethod
    def operating_point(self) -> tuple[float, str]:
        """``(threshold, direction)`` on :meth:`thresholded`: flagged when above / below the threshold."""

    def fit_meta(self) -> dict:
        """What :func:`fit` adds to ``meta`` for this kind of method, after the training statistics."""
        return {}

    # ---------------------------------------------------------------- shared

    @classmethod
    def conventions_worded(cls, word: Callable[[str], str]) -> str:
        """:attr:`conventions` with each option it names (``{fit_data}``) replaced by ``word(name)``, as
        :meth:`flatcli.errors.OptionError.worded` does (the CLI words them as flags)."""
        return re.sub(r"\{([a-z_]+)\}", lambda m: word(m.group(1)), cls.conventions)

    def columns(self) -> tuple[str, ...]:
        """The feature columns :meth:`decision` reads, in order."""
        return self.columns_for(self.score, self.probe)

    @classmethod
    def check_score(cls, score: str | None) -> str:
        """``score``, or the method's default when ``None``; :class:`OptionError` when the method cannot read it."""
        if score is None:
            return cls.scores[0]
        if score not in cls.scores:
            raise OptionError("score", f"{{}} {literal(repr(score))} is not read by the {cls.method} detector; "
                                       f"choose one of {', '.join(cls.scores)}")
        return score

    @classmethod
    def check_needs(cls, mahalanobis: MahalanobisModel | None, probe: dict | None) -> None:
        """:class:`UsageError` unless the Mahalanobis model and probe settings are given exactly when needed."""
        if cls.needs_probe != (probe is not None):
            raise UsageError(f"the {cls.method} detector {'needs' if cls.needs_probe else 'takes no'} probe settings")
        if cls.needs_mahalanobis != (mahalanobis is not None):
            raise UsageError(
                f"the {cls.method} detector {'needs' if cls.needs_mahalanobis else 'takes no'} Mahalanobis model"
            )

    @classmethod
    def check_features(cls, X: Any, columns: tuple[str, ...]) -> np.ndarray:
        """``X`` as float64 in the method's shape; :class:`UsageError` on a wrong shape or NaN/inf."""
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"detector features must be numeric: {exc}") from exc
        X = cls.shaped(X, columns)
        bad = ~np.isfinite(X)
        if bad.any():
            rows = int(bad.reshape(len(X), -1).any(axis=1).sum())
            raise UsageError(
                f"{rows} input(s) have NaN or infinite scores; drop them or check the model "
                "(e.g. overflow in the logits)"
            )
        return X

    def decision(self, X: Any) -> np.ndarray:
        """Real-valued score per input, larger = more adversarial; ``(n,)`` float64.

        Raises :class:`UsageError` on a wrong shape or non-finite values.
        """
        return self.decide(self.check_features(X, self.columns()))

    def predict(self, X: Any) -> np.ndarray:
        """Boolean flags, ``True`` = adversarial (``decision(X) > 0``)."""
        return self.decision(X) > 0

    def parameters(self) -> dict:
        """What a run's summary shows of the fitted detector beyond its operating point."""
        out: dict[str, Any] = {}
        if self.probe is not None:
            out["probe"] = dict(self.probe)
        if self.mahalanobis is not None:
            out["mahalanobis"] = self.mahalanobis.summary()
        return out

    def to_json(self) -> dict:
        """The saved detector (plain Python types only; :mod:`flatcli.inputs.detector_file` writes and reads it)."""
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": DETECTOR_KIND,
            "method": self.method,
            "score": self.score,
            **self.parameters_json(),
        }
        if self.probe is not None:
            doc["probe"] = dict(self.probe)
        if self.mahalanobis is not None:
            doc["mahalanobis"] = self.mahalanobis.to_json()
        doc["meta"] = jsonable(self.meta)
        return doc


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_METHODS: dict[str, type[Detector]] = {}
METHODS = MappingProxyType(_METHODS)
"""Every registered method: name -> class, in registration order (read-only; add with :func:`register`)."""


def register(cls: type[Detector]) -> type[Detector]:
    """Add the method ``cls`` to :data:`METHODS` (usable as a class decorator); ``ValueError`` when it is
    not a concrete :class:`Detector`, does not state what the registry needs, or its name is taken."""
    if not (isinstance(cls, type) and issubclass(cls, Detector)) or inspect.isabstract(cls):
        raise ValueError(f"a detector method is a concrete subclass of Detector; {cls!r} is not")
    for attr in ("method", "summary", "conventions", "scores"):
        if not getattr(cls, attr, None):
            raise ValueError(f"a detector method states its {attr}; {cls.__name__} does not")
    if cls.method in _METHODS:
        raise ValueError(f"detector method {cls.method!r} is already registered ({_METHODS[cls.method].__name__})")
    _METHODS[cls.method] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """The names of the registered methods, in registration order (the first is the default)."""
    return tuple(_METHODS)


def method_class(method: Any) -> type[Detector]:
    """The class of a registered method; :class:`OptionError` (``method``) naming the choices otherwise."""
    cls = _METHODS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise OptionError("method", f"{{}} {literal(repr(method))} is not a detector method; "
                                    f"choose one of {', '.join(_METHODS)}")
    return cls


# --------------------------------------------------------------------------------------------
# Fitting one detector
# --------------------------------------------------------------------------------------------


def prepared(X: Any, labels: Any, method: Any, seed: Any, score: str | None, mahalanobis: MahalanobisModel | None,
             probe: dict | None) -> tuple[type[Detector], int, str, np.ndarray, np.ndarray]:
    """The checked ``(class, seed, score, X, y)`` of a fit (or a cross-validation) of ``method``."""
    cls = method_class(method)
    seed = check_seed(seed)
    cls.check_needs(mahalanobis, probe)
    score = cls.check_score(score)
    X = cls.check_features(X, cls.columns_for(score, probe))
    return cls, seed, score, X, check_labels(labels, len(X))


def fit(
    X: Any,
    labels: Any,
    method: str = "stump",
    seed: int = 0,
    *,
    score: str | None = None,
    mahalanobis: MahalanobisModel | None = None,
    probe: dict | None = None,
) -> Detector:
    """Fit a detector of ``method`` on features ``X`` and labels (0 clean, 1 adversarial).

    ``X`` has one column per name of the method's ``columns_for(score, probe)`` (a threshold method also
    takes the ``(n,)`` vector of its score). ``score`` defaults to the method's first; ``mahalanobis``
    (the model the Mahalanobis score came from) and ``probe`` (``{"norm", "steps", "size"}``) are given
    exactly when the method needs them, and stored in the detector. ``meta`` receives training
    statistics (sizes, training accuracy, balanced accuracy), the seed and versions. Raises
    :class:`UsageError` on bad input (unknown method, shapes, NaN, a missing class).
    """
    cls, seed, score, X, y = prepared(X, labels, method, seed, score, mahalanobis, probe)
    n0, n1 = class_counts(y, "fit a detector")
    det = cls(score=score, mahalanobis=mahalanobis, probe=dict(probe) if probe is not None else None,
              **cls.fitted(X, y, seed))
    pred = det.predict(X)
    tpr = float(np.mean(pred[y == 1]))
    tnr = float(np.mean(~pred[y == 0]))
    det.meta = {
        "n_train": int(len(y)),
        "n_clean": n0,
        "n_adversarial": n1,
        "train_accuracy": float(np.mean(pred == (y == 1))),
        "train_balanced_accuracy": (tpr + tnr) / 2,
        "seed": seed,
        "versions": versions(),
        **det.fit_meta(),
    }
    return det


# --------------------------------------------------------------------------------------------
# Checks and plain data
# --------------------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_seed(seed: Any) -> int:
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise OptionError("seed", f"{{}} must be an integer in [0, 2**32), got {literal(repr(seed))}")
    return int(seed)


def check_labels(labels: Any, n: int) -> np.ndarray:
    """Labels as int64 0 (clean) / 1 (adversarial), one per input; :class:`UsageError` otherwise."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"labels must be a vector of length {n} (one per input), got {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise UsageError("labels must be 0 (clean) or 1 (adversarial)")
    ok = (y == 0) | (y == 1)
    if not ok.all():
        raise UsageError(
            f"labels must be 0 (clean) or 1 (adversarial); found {np.unique(y[~ok])[:5].tolist()}"
        )
    return y.astype(np.int64)


def class_counts(y: np.ndarray, what: str) -> tuple[int, int]:
    """``(clean, adversarial)`` counts; :class:`UsageError` naming ``what`` when a class is missing."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        missing = "clean (0)" if n0 == 0 else "adversarial (1)"
        raise UsageError(f"cannot {what}: no {missing} inputs; both classes are needed")
    return n0, n1



def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def versions() -> dict[str, str]:
    import sklearn

    from flatcli import __version__

    return {"flatrob": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}
