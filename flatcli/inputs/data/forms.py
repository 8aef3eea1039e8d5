"""The ``--data`` forms: one table of every data source a string can name, which everything else reads.

Each :class:`DataForm` holds its name (``cifar10``), the metavar of its argument (``ROOT``; none for
``digits``), one line of help, how the shell completes its argument (``none``, ``dir``: directories,
``file``: files and the directories leading to them), whether it reads images of any size (so the
architecture's own data config may size them), whether it takes ``image_column``/``label_column``, and
``load(argument, request)``. :func:`~flatcli.inputs.data.load_data` dispatches through :data:`FORMS`;
:data:`FILE_FORMS`, :data:`IMAGE_FILE_FORMS`, :data:`ACCEPTED_FORMS`, :func:`data_help` and the shell
completion (:mod:`flatcli.cli.complete`) are derived from it. Adding a source is one row here and its loader.

Nothing here imports torch (the loaders are imported when a source is opened), so the CLI's help and
a <Tab> read the table cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from flatcli.errors import OptionError, UsageError, literal
from flatcli.inputs.data.torchvision_files import SETS

if TYPE_CHECKING:
    from flatcli.inputs.data.images import Preprocess
    from flatcli.inputs.data.source import DataSource

#: How the shell completes a form's argument.
COMPLETIONS = ("none", "dir", "file")


@dataclass(frozen=True)
class DataRequest:
    """What a run asks of a source besides its argument: the split, the model's classes (bounding a
    ``folder:``'s class directories), the resizing of image files, and an ``hf:`` source's columns."""

    split: str = "test"
    num_classes: int | None = None
    preprocess: Preprocess | None = None
    image_column: str | None = None
    label_column: str | None = None


@dataclass(frozen=True)
class DataForm:
    """One ``--data`` form: ``name`` or ``name:METAVAR`` (see the module docstring)."""

    name: str
    metavar: str  # "" for a form without argument
    help: str  # one line, for completion and the docs
    load: Callable[[str, DataRequest], DataSource]
    completion: str = "none"  # one of COMPLETIONS
    argument: str = ""  # what the argument is, for the error when it is missing
    note: str = ""  # a remark the list of accepted forms adds in parentheses
    image_files: bool = False  # images of any size: the architecture's data config may size them
    columns: bool = False  # takes image_column / label_column
    exact: bool = False  # pixels used as they are: resize, crop and interpolation are refused

    @property
    def usage(self) -> str:
        """``digits`` or ``cifar10:ROOT``: how the form is written."""
        return f"{self.name}:{self.metavar}" if self.metavar else self.name

    @property
    def prefix(self) -> str:
        """What a value of this form starts with: ``digits`` or ``cifar10:``."""
        return f"{self.name}:" if self.metavar else self.name


def _digits(argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.digits import load_digits

    return load_digits(request.split)


def _torchvision(kind: str, argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.torchvision_sets import load_torchvision

    return load_torchvision(kind, argument, request.split, request.preprocess)


def _folder(argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.folder import load_folder

    return load_folder(argument, request.split, request.num_classes, request.preprocess)


def _npz(argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.npz import load_npz

    return load_npz(argument, request.split)


def _hf(argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.hf import load_hf

    return load_hf(argument, request.split, request.preprocess, request.image_column, request.label_column)


def _tensors(argument: str, request: DataRequest) -> DataSource:
    from flatcli.inputs.data.tensors import load_tensors

    return load_tensors(argument)


#: Every ``--data`` form, in the order help and completion show them.
FORMS: dict[str, DataForm] = {
    form.name: form
    for form in (
        DataForm("digits", "", "scikit-learn's bundled 8x8 digits", _digits),
        *(DataForm(kind, "ROOT", entry.help, partial(_torchvision, kind), completion="dir",
                   argument="the directory holding the data set") for kind, entry in SETS.items()),
        DataForm("folder", "DIR", "an ImageFolder directory", _folder, completion="dir", argument="a directory",
                 image_files=True),
        DataForm("npz", "FILE", "numpy .npz with x (uint8 or float in [0, 1]; NCHW or NHWC) and y", _npz,
                 completion="file", argument="a file", exact=True),
        DataForm("hf", "PATH", "a Hugging Face datasets save_to_disk folder, a .parquet file or a folder of them", _hf,
                 completion="file", argument="a path", note="save_to_disk folder or parquet", image_files=True,
                 columns=True),
        DataForm("tensors", "FILE", "safetensors with x, y (as attack --save-adv writes); tensors:- reads stdin",
                 _tensors, completion="file", argument="a file", note="tensors:- reads stdin", exact=True),
    )
}
#: The form a run reads when neither the options nor the spec name one.
DEFAULT = "digits"
#: The forms whose argument is a file or directory the run reads (inputs of its output plan).
FILE_FORMS = tuple(name for name, form in FORMS.items() if form.metavar)
#: Sources of image files of any size: the architecture's own data config may size them (``LoadedModel.image_defaults``).
IMAGE_FILE_FORMS = tuple(name for name, form in FORMS.items() if form.image_files)
#: Every form as errors list them, with its note.
ACCEPTED_FORMS = ", ".join(f"{form.usage} ({form.note})" if form.note else form.usage for form in FORMS.values())


def data_help() -> str:
    """The help of the ``--data`` option: every form, and the default."""
    usages = [form.usage for form in FORMS.values()]
    return f"{', '.join(usages[:-1])} or {usages[-1]} (default: spec, then {DEFAULT})."



def parse(source: str) -> tuple[DataForm, str]:
    """The form a ``--data`` string names and its argument (``""`` for ``digits``); :class:`UsageError`
    for an unknown form, :class:`OptionError` when the argument is missing or not wanted."""
    source = str(source).strip()
    name, sep, argument = source.partition(":")
    form = FORMS.get(name)
    if form is None:
        raise UsageError(f"unknown data source {source!r}; use one of: {ACCEPTED_FORMS}")
    if not form.metavar and sep:
        raise OptionError("split", f"{literal(repr(name))} takes no argument (got {literal(repr(source))}); "
                          "choose the split with {}")
    if form.metavar and not argument:
        note = f" ({form.note})" if form.note else ""
        raise OptionError("data", f"{name} needs {form.argument}: {{}} {form.usage}{literal(note)}")
    return form, argument
