"""The architecture forms: one table of the ways an architecture may be named, which everything else reads.

An architecture name (``--arch``, ``arch:`` in a spec) is written in one of these forms:

* a built-in: a name without a colon;
* ``torchvision:NAME``, ``timm:NAME``, ``robustbench:DATASET/THREAT/NAME``: an entry of an installed
  library's registry, claimed by its prefix;
* ``module.path:ClassName``: any other name with a colon, an ``nn.Module`` subclass to import; the only
  form that names code (:func:`names_code`).

Each :class:`ArchForm` holds its name, how it is written, one line of help, its prefix (what a <Tab>
offers), whether it names code, and its builder (``module:Class``, a :class:`flatcli.models.registry.Builder`)
that builds the network and knows its head and data config. The builder is imported when a network is
built, so this table (help, completion, the trust check) is read without importing torch. Adding a form is
one row here and one builder class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ArchForm:
    """One way of naming an architecture (see the module docstring)."""

    name: str
    usage: str  # how it is written: "timm:NAME"
    help: str  # one line, for completion and the docs
    builder: str  # "module:Class" of its flatcli.models.registry.Builder
    prefix: str = ""  # what claims a name for it ("timm:"); "" when `claims_name` does
    claims_name: Callable[[str], bool] | None = None  # for a form without prefix
    names_code: bool = False  # building it imports a module the name chooses

    def claims(self, arch: str) -> bool:
        """Whether ``arch`` is written in this form."""
        return arch.startswith(self.prefix) if self.prefix else bool(self.claims_name and self.claims_name(arch))

    def reference(self, arch: str) -> str:
        """What the builder receives: the name after the prefix (``resnet50`` of ``timm:resnet50``), else all of it."""
        return arch[len(self.prefix):] if self.prefix else arch


_REGISTRY = "flatcli.models.registry"
#: Every architecture form, in the order help and errors list them.
FORMS: dict[str, ArchForm] = {
    form.name: form
    for form in (
        ArchForm("builtin", "a built-in", "a built-in architecture by name (resnet18, ...)",
                 f"{_REGISTRY}:Builtin", claims_name=lambda arch: ":" not in arch),
        ArchForm("torchvision", "torchvision:NAME", "a torchvision.models classification builder, built without weights",
                 f"{_REGISTRY}:Torchvision", prefix="torchvision:"),
        ArchForm("timm", "timm:NAME", "a model of timm's registry, built without weights",
                 f"{_REGISTRY}:Timm", prefix="timm:"),
        ArchForm("robustbench", "robustbench:DATASET/THREAT/NAME", "a RobustBench model zoo entry's constructor",
                 f"{_REGISTRY}:RobustBench", prefix="robustbench:"),
        ArchForm("module", "module.path:ClassName", "an nn.Module subclass to import (names code)",
                 f"{_REGISTRY}:ModulePath", claims_name=lambda arch: ":" in arch, names_code=True),
    )
}


def form_of(arch: str) -> ArchForm:
    """The form ``arch`` is written in: a prefix claims a name before the forms without one."""
    ordered = sorted(FORMS.values(), key=lambda form: not form.prefix)
    return next(form for form in ordered if form.claims(arch))


def names_code(arch: str | None) -> bool:
    """Whether ``arch`` names a module to import (a ``module.path:ClassName``): building it runs that module."""
    return bool(arch) and form_of(arch).names_code


def listing(but: str = "") -> str:
    """``"a built-in, torchvision:NAME, ... or module.path:ClassName"``: the forms an error offers, without
    the form named ``but`` (the built-ins, when the error lists them by name)."""
    usages = [form.usage for form in FORMS.values() if form.name != but]
    return f"{', '.join(usages[:-1])} or {usages[-1]}"


def arch_help() -> str:
    """The help of the ``--arch`` option: every form, and the default."""
    return f"Architecture: {listing()} (default: spec, then detected)."
