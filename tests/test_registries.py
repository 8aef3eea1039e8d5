"""The ``--data`` forms and the architecture forms are each written once: a scan of flatcli/ for other lists.

Every string literal (f-strings included, docstrings excepted) and every tuple, list, set or dict of strings
in the package is read with :mod:`ast`; one that names three or more data forms, or two or more of the
architecture prefixes, outside the two tables (:mod:`flatcli.inputs.data.forms` with the torchvision table
it reads, :mod:`flatcli.models.arch_forms`) is a second copy of a list, and fails the test. Help, errors and
completion must derive theirs from the tables (``data_help()``, ``ACCEPTED_FORMS``, ``listing()``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from flatcli.inputs.data.forms import FORMS
from flatcli.models import arch_forms

PACKAGE = Path(__file__).resolve().parent.parent / "flatcli"
TABLES = {"inputs/data/forms.py", "inputs/data/torchvision_files.py", "models/arch_forms.py"}
DATA_FORM = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(form.prefix) + ("" if form.metavar else r"(?![\w-])")
                                                    for form in FORMS.values()) + ")")
ARCH_PREFIX = re.compile("|".join(re.escape(form.usage.split(":")[0] + ":") for form in arch_forms.FORMS.values()
                                  if ":" in form.usage))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _key(item: ast.AST | None) -> str | None:
    """A string element itself; of a row (a tuple or list), its first element if a string."""
    if isinstance(item, (ast.Tuple, ast.List)) and item.elts:
        item = item.elts[0]
    return item.value if isinstance(item, ast.Constant) and isinstance(item.value, str) else None


def _texts(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal but docstrings, an f-string as its literal parts joined, and of
    every collection of string literals or of rows, its strings or the rows' first strings joined by spaces
    (a form's bare name as its prefix)."""
    skip = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            skip.update(id(v) for v in node.values)
            out.append((node.lineno, " ".join(parts)))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            strings = [_key(item) for item in items if _key(item) is not None]
            strings = [FORMS[s].prefix if s in FORMS else s for s in strings]  # "cifar10" as "cifar10:"
            if len(strings) > 1:
                out.append((node.lineno, " ".join(strings)))
    out += [(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in skip]
    return out


def _second_copies() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in TABLES:
            continue
        for line, text in _texts(ast.parse(path.read_text(encoding="utf-8"))):
            forms = set(DATA_FORM.findall(text))
            prefixes = set(ARCH_PREFIX.findall(text))
            if len(forms) >= 3:
                found.append(f"flatcli/{rel}:{line} lists data forms {sorted(forms)}")
            if len(prefixes) >= 2:
                found.append(f"flatcli/{rel}:{line} lists architecture prefixes {sorted(prefixes)}")
    return found


def test_no_list_of_forms_or_prefixes_is_written_twice():
    found = _second_copies()
    assert not found, "read these from the tables instead:\n" + "\n".join(found)


def test_the_scan_finds_a_list_written_by_hand():
    """The scan is not vacuous: the lists it replaced would be found."""
    copies = [
        'HELP = "digits, cifar10:ROOT, folder:DIR, npz:FILE or tensors:FILE"',
        'FILE_FORMS = ("cifar10", "folder", "npz")',
        'CHOICES = (("digits", "8x8"), ("folder:", "a tree"), ("hf:", "datasets"))',
        'ERROR = f"unknown {arch!r}; or use torchvision:NAME, timm:NAME or module.path:ClassName"',
        'REGISTRIES = ("torchvision:", "timm:")',
    ]
    for code in copies:
        texts = [text for _, text in _texts(ast.parse(code))]
        assert any(len(set(DATA_FORM.findall(t))) >= 3 or len(set(ARCH_PREFIX.findall(t))) >= 2 for t in texts), code
    assert not any(DATA_FORM.findall(t) for _, t in _texts(ast.parse('"""digits, cifar10:ROOT, folder:DIR"""')))
