"""The registry of attacks, ``{kind: class}``: which attack ``attack="pgd"`` names, built from a preset and options.

Every attack registered here has the face of :class:`flatcli.core.attacks.base.Attack`; its ``kind`` is the
key, its ``summary`` the line the CLI help and the docs show, its fields the options it takes. The CLI's
choices and the docs come from :func:`attack_kinds`; :func:`make_attack` builds any of them the same way
(presets, :data:`flatcli.core.attacks.checks.PRESETS`, give the norm, eps, step size and steps where the
attack takes them; options given override them; an option an attack has no use for is refused, naming it).
Adding an attack is one file with its class and one :func:`register` line (in ``__init__.py``).
"""

from __future__ import annotations

from flatcli.core.attacks.base import Attack
from flatcli.core.attacks.checks import shown
from flatcli.errors import OptionError

#: Every attack by its ``kind``, in the order the CLI lists them (the first is the default).
ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Add the attack class ``cls`` under its ``kind``; a kind taken twice, or a class without its ``kind`` and
    one-line ``summary``, is a programming error."""
    if not (isinstance(getattr(cls, "kind", None), str) and getattr(cls, "summary", "")):
        raise ValueError(f"{cls.__name__} needs a kind and a one-line summary to be registered")
    if cls.kind in ATTACKS:
        raise ValueError(f"attack kind {cls.kind!r} is registered twice")
    ATTACKS[cls.kind] = cls
    return cls


def attack_kinds() -> tuple[str, ...]:
    """The registered kinds, the default first (the choices of the option ``attack``)."""
    return tuple(ATTACKS)


def attack_class(kind: str | None) -> type[Attack]:
    """The class registered as ``kind`` (``None``: the default, the first registered)."""
    if kind is None:
        return next(iter(ATTACKS.values()))
    if kind not in ATTACKS:
        raise OptionError("attack", f"unknown attack {shown(kind)}; {{}} takes {', '.join(ATTACKS)}")
    return ATTACKS[kind]


def make_attack(kind: str | None = None, preset: str | None = "uncanny", *, random_start: bool = False,
                **options) -> Attack:
    """The attack ``kind`` (default: the first registered, PGD) with the preset's values, overridden by every
    option given (``norm``, ``eps``, ``alpha``, ``steps``, ``queries``, ``restarts``, ``loss``; ``None`` is not
    given). Each attack's own default loss applies when ``loss`` is not given (Square: ``cw``)."""
    return attack_class(kind).from_options(preset, random_start=random_start or None, **options)
