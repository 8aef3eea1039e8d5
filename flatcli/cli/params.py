"""Command parameters built from the option groups: a parameter annotated with a group becomes its options.

    @app.command()
    @expand
    def sharpness(checkpoint: Checkpoints = None, model: ModelOptions = None, data: DataOptions = None, ...):
        api.sharpness(checkpoint, data.data, model, data, ...)     # each group arrives made and checked

Each option's flag, help, default, choices and completion come from its field (:mod:`flatcli.options`), so a
command module holds only its own flags. Making a group checks it; its :class:`~flatcli.errors.OptionError`
is worded with the flag by the app.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Optional, get_type_hints

import typer

from flatcli.cli import complete
from flatcli.options.base import Group, Spec, flag_of

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "choice": str, "floats": str, "names": str}


def _choice_check(spec: Spec):
    """Refuse a value outside the choices while the command line is parsed, as click does for its own."""

    def check(value):
        if value is not None and value not in spec.allowed():
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, spec.allowed()))}.")
        return value

    return check


def typer_option(name: str, spec: Spec, default: Any):
    """The ``Annotated[type, typer.Option(...)]`` of one option."""
    flag = flag_of(name, spec)
    decls = [f"{flag}/--no-{flag[2:]}" if spec.negatable else flag] + ([spec.short] if spec.short else [])
    extra = {}
    if spec.kind == "choice":  # a registry's names are read only when the option is given or completed
        extra["autocompletion"] = lambda incomplete: [c for c in spec.allowed() if c.startswith(incomplete)]
        extra["callback"] = _choice_check(spec)
        if not callable(spec.choices):
            extra["metavar"] = f"[{'|'.join(spec.choices)}]"
    if spec.completion:
        extra["autocompletion"] = getattr(complete, spec.completion)
    if spec.metavar:
        extra["metavar"] = spec.metavar
    kind = _TYPES[spec.kind]
    shown = default if not isinstance(default, tuple) else ",".join(map(str, default))
    info = typer.Option(*decls, help=spec.text(), show_default=shown is not None and spec.kind != "bool" or spec.negatable,
                        **extra)
    return Annotated[kind if default is not None else Optional[kind], info], shown


def expand(func):
    """``func`` with each group-annotated parameter replaced by that group's options, and the group made from
    them when the command runs."""
    hints = get_type_hints(func, include_extras=True)
    groups: dict[str, type[Group]] = {}
    params = []
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if isinstance(hint, type) and issubclass(hint, Group):
            groups[param.name] = hint
            for name, spec, default in hint.options():
                annotation, shown = typer_option(name, spec, default)
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=shown,
                                                annotation=annotation))
        else:
            params.append(param.replace(annotation=hint, kind=inspect.Parameter.KEYWORD_ONLY))
    seen = [p.name for p in params]
    clash = {n for n in seen if seen.count(n) > 1}
    if clash:
        raise TypeError(f"{func.__name__}: options declared twice: {', '.join(sorted(clash))}")

    @functools.wraps(func)
    def command(**values):
        made = {key: kind(**{name: values.pop(name) for name, _, _ in kind.options() if name in values})
                for key, kind in groups.items()}
        return func(**made, **values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
