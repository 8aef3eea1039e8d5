"""What an option is (help, default, flag, range) and a group of options that checks itself once.

An option is a field of a small frozen dataclass, a *group* (:class:`Group`), made by one of the
factories below (:func:`integer`, :func:`number`, :func:`text`, :func:`switch`, :func:`choice`,
:func:`numbers`, :func:`names`). The field carries everything said about the option, once: its help,
its default, its range or choices and, where it is not ``--name-with-dashes``, its flag. Making a group
checks every field and normalises it (``"0.5,0.25"`` -> ``(0.5, 0.25)``), raising
:class:`~flatcli.errors.OptionError` that names the option: ``steps=`` to a Python caller, ``--steps``
on the command line. The CLI (:mod:`flatcli.cli.params`), the API (:func:`gather`), the settings of the
runs and the generated docs all read this metadata; this package imports neither torch nor typer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers as _numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

from flatcli.errors import OptionError


@dataclass(frozen=True)
class Spec:
    """Everything said about one option. ``kind``: int, float, str, bool, choice, floats or names. ``help`` is
    text, or a function giving it (a registry's listing: :meth:`text`).
    ``minimum``/``maximum`` bound it (inclusive), ``above`` from below (exclusive); ``choices`` is a tuple
    or a function giving one (a registry's names); ``completion`` names a function of
    :mod:`flatcli.cli.complete`; ``negatable`` gives a bool a ``--no-`` form; ``short`` e.g. ``-o``."""

    kind: str
    help: str | Callable[[], str]
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    completion: str | None = None
    negatable: bool = False
    short: str | None = None

    def text(self) -> str:
        """The help text."""
        return self.help() if callable(self.help) else self.help

    def allowed(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices or ())


def _option(kind: str, default: Any, help: str, **spec) -> Any:
    return dataclasses.field(default=default, metadata={"option": Spec(kind, help, **spec)})


def integer(default: int | None, help: str, **spec) -> Any:
    """A whole number (``minimum``/``maximum`` inclusive)."""
    return _option("int", default, help, **spec)


def number(default: float | None, help: str, **spec) -> Any:
    """A finite real number (``minimum``/``maximum`` inclusive, ``above`` exclusive)."""
    return _option("float", default, help, **spec)


def text(default: str | None, help: str, **spec) -> Any:
    """A string (a path, a name)."""
    return _option("str", default, help, **spec)


def switch(default: bool, help: str, **spec) -> Any:
    """On or off (``negatable``: the flag has a ``--no-`` form)."""
    return _option("bool", default, help, **spec)


def choice(default: str | None, help: str, choices, **spec) -> Any:
    """One of ``choices`` (a tuple, or a function returning one)."""
    return _option("choice", default, help, choices=choices, **spec)


def numbers(default: tuple[float, ...] | None, help: str, **spec) -> Any:
    """Real numbers: a sequence, one number, or a comma-separated string ``"0.5,0.25"``."""
    return _option("floats", default, help, **spec)


def names(default: tuple[str, ...] | None, help: str, **spec) -> Any:
    """Names: a sequence or a comma-separated string ``"layer1,layer2"``."""
    return _option("names", default, help, **spec)


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata["option"]


def flag_of(name: str, spec: Spec | None = None) -> str:
    """The command-line flag of option ``name``: its own, else ``--name-with-dashes``."""
    return (spec.flag if spec is not None and spec.flag else None) or "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Group:
    """A group of options; making one checks and normalises every field (:func:`check_value`)."""

    #: What the group is, for the docs (``"Model"``, ``"Data"``, ...).
    title: ClassVar[str] = ""
    #: Its attribute in the groups of one call (:class:`flatcli.options.calls.Chosen`): ``chosen.model``, ...
    key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = check_value(field.name, spec_of(field), getattr(self, field.name))
            object.__setattr__(self, field.name, value)

    @classmethod
    def options(cls) -> Iterator[tuple[str, Spec, Any]]:
        """``(name, spec, default)`` of every option of the group, in order."""
        for field in dataclasses.fields(cls):
            yield field.name, spec_of(field), field.default

    def given(self) -> dict[str, Any]:
        """The options set to something other than their default."""
        return {name: getattr(self, name) for name, _, default in self.options() if getattr(self, name) != default}

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _, _ in self.options()}


def check_value(name: str, spec: Spec, value: Any) -> Any:
    """``value`` of option ``name`` checked against ``spec`` and normalised; ``None`` passes (unset)."""
    if value is None:
        return None
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(name, f"{{}} must be True or False, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) and not hasattr(value, "__fspath__"):
            raise OptionError(name, f"{{}} must be a string, got {type(value).__name__}")
        return str(value)
    if kind == "choice":
        value = getattr(value, "value", value)  # an Enum member
        allowed = spec.allowed()
        if value not in allowed:
            raise OptionError(name, f"{{}} must be one of {', '.join(allowed)}, got {value!r}")
        return value
    if kind == "names":
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind == "floats":
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
        return tuple(_bounded(name, spec, _real(name, item)) for item in items if str(item).strip())
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, _numbers.Integral):
            raise OptionError(name, f"{{}} must be a whole number, got {value!r}")
        return _bounded(name, spec, int(value))
    return _bounded(name, spec, _real(name, value))


def _real(name: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise OptionError(name, f"{{}} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise OptionError(name, f"{{}} must be a finite number, got {value!r}")
    return number


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _bounded(name: str, spec: Spec, value):
    low, high, above = spec.minimum, spec.maximum, spec.above
    if above is not None and not value > above:
        bound = f"in ({_show(above)}, {_show(high)}]" if high is not None else \
            f"a number > {_show(above)}"
        raise OptionError(name, f"{{}} must be {bound}, got {value}")
    if low is not None and value < low or high is not None and value > high:
        if low is not None and high is not None:
            bound = f"from {_show(low)} to {_show(high)}"
        elif low is not None:
            bound = "0 or more" if low == 0 else f"at least {_show(low)}"
        else:
            bound = f"at most {_show(high)}"
        raise OptionError(name, f"{{}} must be {bound}, got {value}")
    return value


def gather(keywords: dict[str, Any], groups: tuple, *kinds: type[Group], command: str) -> list[Group]:
    """One instance of each group in ``kinds`` from a Python call: an instance passed in ``groups``, with
    the keyword arguments naming its fields applied over it. A keyword no group has is a ``TypeError``, as
    for any Python function."""
    owner = {name: kind for kind in kinds for name, _, _ in kind.options()}
    unknown = sorted(set(keywords) - set(owner))
    if unknown:
        raise TypeError(f"{command}() got an unexpected keyword argument {unknown[0]!r}")
    for group in groups:
        if not isinstance(group, kinds):
            raise TypeError(f"{command}() takes option groups {', '.join(k.__name__ for k in kinds)}; "
                            f"got {type(group).__name__}")
    made = []
    for kind in kinds:
        given = next((g for g in groups if type(g) is kind), None)
        mine = {name: value for name, value in keywords.items() if owner[name] is kind}
        made.append(dataclasses.replace(given, **mine) if given is not None else kind(**mine))
    return made
