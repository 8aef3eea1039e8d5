"""The API's side of the groups: a function takes its options as groups or as keywords, and gets them made.

    @accepts(ModelOptions, DataOptions, RunOptions)
    def sharpness(model, data=None, *, chosen, samples=True): chosen.data.batch_size ...

    sharpness(net, (x, y), batch_size=64)                       # keywords, checked by their group
    sharpness(net, (x, y), DataOptions(batch_size=64), seed=1)  # groups (keywords apply over them)

The function's ``help()`` lists every keyword it takes (its own, then the groups'), so a notebook user
reads the same options as ``flatrob CMD --help`` shows.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from flatcli.options.base import Group, gather


class Chosen:
    """The groups of one call, one attribute each by the group's ``key`` (``chosen.model``, ``chosen.data``)."""

    def __init__(self, groups: list[Group]):
        for group in groups:
            setattr(self, type(group).key, group)

    def __repr__(self) -> str:
        return f"Chosen({', '.join(repr(v) for v in vars(self).values())})"


def accepts(*kinds: type[Group]):
    """Decorate an API function ``f(model, data=None, *, chosen, ...)``: group instances passed positionally
    after ``data`` and keywords naming group fields become ``chosen``; every other keyword goes to ``f``.
    A field that is also a parameter of ``f`` (``data``) stays ``f``'s."""

    def decorate(func):
        own = inspect.signature(func).parameters
        fields = {name: (spec, default) for kind in kinds for name, spec, default in kind.options() if name not in own}

        @functools.wraps(func)
        def call(*args, **keywords):
            groups = tuple(a for a in args if isinstance(a, Group))
            positional = [a for a in args if not isinstance(a, Group)]
            mine = {name: keywords.pop(name) for name in list(keywords) if name in fields}
            chosen = Chosen(gather(mine, groups, *kinds, command=func.__name__))
            return func(*positional, chosen=chosen, **keywords)

        params = [p for p in own.values() if p.name != "chosen"]
        at = next((i for i, p in enumerate(params) if p.kind is not p.POSITIONAL_OR_KEYWORD), len(params))
        params.insert(at, inspect.Parameter("groups", inspect.Parameter.VAR_POSITIONAL))
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for name, (spec, default) in fields.items()]
        call.__signature__ = inspect.Signature(params)
        call.__doc__ = (func.__doc__ or "") + _options_doc(kinds, fields)
        call.groups = kinds
        return call

    return decorate


def _options_doc(kinds, fields: dict[str, Any]) -> str:
    """The options a function takes, for its docstring (one line each: name, default, help)."""
    lines = [f"    ``{name}`` (default ``{default!r}``): {spec.text()}" for name, (spec, default) in fields.items()]
    groups = ", ".join(kind.__name__ for kind in kinds)
    return f"\n\n    Options (keywords, or the groups {groups}):\n\n" + "\n".join(lines)


def chosen_of(keywords: dict[str, Any], *kinds: type[Group], command: str = "from_options") -> Chosen:
    """The groups ``kinds`` made from keywords naming their fields (any other keyword is a ``TypeError``)."""
    return Chosen(gather(keywords, (), *kinds, command=command))
