"""``folder:DIR``: an ImageFolder tree ``DIR/<class>/<image>`` (``DIR/<split>`` when it exists), streamed.

``DIR/<split>`` is read when it exists; when ``DIR`` holds split directories only (``train``, ``val``,
``valid``, ``validation``, ``test``) and just one of them (an ImageNet ``val/``), that one is read for an
evaluation split (``val/`` for ``--split test``), never for another (a lone ``test/`` for ``--split
train`` is an error); several without the asked one are an error. Images are read from disk one at
a time, never all held in memory, resized and centre-cropped to the model's input
(:class:`~flatcli.inputs.data.images.Preprocess`) and converted to float [0, 1] CHW as ``ToTensor`` does. Colour mode: ``L`` (1 channel) when the first image is greyscale, else ``RGB``;
:func:`flatcli.inputs.data.check_compatible` switches the reader to the model's channel count
(1 -> ``L``, 3 -> ``RGB``). Class labels follow ``ImageFolder`` (sorted class names), except that when
every class directory name is a non-negative integer the label *is* that integer (so ``2`` < ``10``).
Without a size to crop to (no model input size, no ``--crop``) every image must have the size of the
first one. The source index is the position in ``ImageFolder``
order. Decompression bombs are refused, not read. A hidden directory among the classes
(``.ipynb_checkpoints``) or a class directory without images is refused, naming it, never counted as a
class that shifts the labels.

The tree is walked by :func:`scan` rather than ``ImageFolder`` (whose ``os.walk(followlinks=True)``
never ends on a link cycle): directory links are followed, but a directory reached a second time (a
cycle, a ``..`` link, two classes linking to one directory) is an error naming the link; only regular
files are images (a named pipe would block); pseudo file systems (``/proc``, ``/sys``, ``/dev``, cgroups,
...) are refused wherever the walk meets them; and a numeric class name must be below the model's number
of classes (and :data:`MAX_CLASSES`), so a directory named ``100000000`` allocates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flatcli.errors import DataError
from flatcli.inputs.data.images import DecodedImages, Preprocess
from flatcli.inputs.data.source import DataSource, one_line

#: File system types that hold no images (from ``/proc/self/mountinfo``); a folder on one is refused.
PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "fusectl", "mqueue", "binfmt_misc", "efivarfs", "selinuxfs", "autofs", "rpc_pipefs", "nsfs",
})
#: Where those live when ``/proc`` cannot tell (no mountinfo).
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
#: The largest numeric class name a folder may have without a model to bound it.
MAX_CLASSES = 100_000

#: The split directories a folder may hold, tried in this order when the asked split is missing.
SPLIT_DIRECTORIES = ("train", "val", "valid", "validation", "test")
#: Split directories that stand for one another: a lone ``val/`` is read for ``--split test``, never for ``train``.
EVALUATION_SPLITS = frozenset({"val", "valid", "validation", "test"})


class _Files:
    """The image files of a folder, opened by position (the store of a :class:`DecodedImages`)."""

    def __init__(self, files: list[str]):
        self.files = files

    def open(self, position: int):
        from PIL import Image

        return Image.open(self.files[position])

    def where(self, position: int) -> str:
        return self.files[position]


def pseudo_devices() -> dict[int, str]:
    """``st_dev`` -> file system type of every pseudo file system mounted (empty when /proc cannot tell)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read(4 * 1024 * 1024).splitlines()
    except OSError:
        return {}
    devices = {}
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        fstype = fields[fields.index("-", 6) + 1]
        major, _, minor = fields[2].partition(":")
        if fstype in PSEUDO_FILE_SYSTEMS and major.isdigit() and minor.isdigit():
            devices[os.makedev(int(major), int(minor))] = fstype
    return devices


def _refuse_pseudo(path: str, st: os.stat_result, pseudo: dict[int, str]) -> None:
    real = os.path.realpath(path)
    kind = pseudo.get(st.st_dev)
    if kind is None and any(real == p or real.startswith(p + os.sep) for p in PSEUDO_ROOTS):
        kind = "a pseudo file system"
    if kind is not None:
        raise DataError(f"folder data {path} lies on {kind} ({real}), which holds no images; "
                        "point --data folder: at a directory of image files")


def scan(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted) and ``(file, class position)`` in ``ImageFolder`` order, walked safely.

    Same order as ``torchvision.datasets.ImageFolder``: classes sorted, then per class every directory
    below it sorted by path and its files by name; files must have an image suffix
    (``torchvision.datasets.folder.IMG_EXTENSIONS``) and be regular files. Where ``ImageFolder`` would
    number labels differently from what the folder means, it is refused naming the directory: a hidden
    class directory (``.ipynb_checkpoints``, taken as a class) and a named class directory without images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    pseudo = pseudo_devices()
    try:
        top = os.stat(root)
        _refuse_pseudo(root, top, pseudo)
        with os.scandir(root) as entries:
            classes = sorted(e.name for e in entries if e.is_dir())
    except OSError as exc:
        raise DataError(f"folder {root} cannot be read ({one_line(exc)})") from None
    hidden = [c for c in classes if c.startswith(".")]
    if hidden:
        raise DataError(f"folder {root} holds the hidden directory {hidden[0]}, which ImageFolder takes as a class "
                        "(shifting every label after it); remove or move it out of the folder")
    visited = {(top.st_dev, top.st_ino): root}
    samples: list[tuple[str, int]] = []
    for position, name in enumerate(classes):
        found: list[tuple[str, list[str]]] = []
        pending = [os.path.join(root, name)]
        while pending:
            directory = pending.pop()
            try:
                st = os.stat(directory)
                _refuse_pseudo(directory, st, pseudo)
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    raise DataError(
                        f"folder {root}: {directory} is {visited[key]} again (a directory link cycle, or two links "
                        "to one directory); remove the link so every image is read once"
                    )
                visited[key] = directory
                files = []
                with os.scandir(directory) as entries:
                    for e in entries:
                        if e.is_dir():
                            pending.append(e.path)
                        elif e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():
                            _refuse_pseudo(e.path, e.stat(), pseudo)
                            files.append(e.name)
            except DataError:
                raise
            except OSError as exc:
                raise DataError(f"folder {root}: cannot read {directory} ({one_line(exc)})") from None
            found.append((directory, sorted(files)))
        for directory, files in sorted(found):
            samples.extend((os.path.join(directory, f), position) for f in files)
    empty = sorted(set(range(len(classes))) - {label for _, label in samples})
    if empty and samples and not all(c.isdigit() for c in classes):  # a numbered class keeps its number
        raise DataError(f"folder {root}: class directory {classes[empty[0]]} holds no image files, and ImageFolder "
                        "refuses an empty class (it would take a label of its own); remove it or add its images")
    return classes, samples


def load_folder(dir_arg: str, split: str, num_classes: int | None = None,
                preprocess: Preprocess | None = None) -> DataSource:
    """``folder:DIR`` (``DIR/<split>`` when it exists, else the only split directory there is); ``num_classes``
    (the model's) bounds numeric class names; ``preprocess`` resizes and crops every image."""
    root = Path(os.path.expanduser(dir_arg))
    if not root.is_dir():
        raise DataError(f"folder {dir_arg} does not exist or is not a directory")
    name = f"folder:{dir_arg}"
    chosen = split_directory(root, split)
    if chosen is not None:
        root = root / chosen
        name = f"folder:{dir_arg}:{chosen}"
    classes, samples = scan(str(root))
    files = [path for path, _ in samples]
    targets = [label for _, label in samples]
    if classes and all(c.isdigit() for c in classes):
        bound = min(num_classes, MAX_CLASSES) if num_classes is not None else MAX_CLASSES
        too_big = [c for c in classes if len(c) > len(str(bound)) or int(c) >= bound]
        if too_big:
            whose = f"the model has {num_classes} classes" if num_classes is not None and num_classes <= MAX_CLASSES \
                else f"at most {MAX_CLASSES} classes are read"
            raise DataError(f"folder {root} has a class directory named {too_big[0]}, but {whose} (0..{bound - 1}); "
                            "name class directories by their class number")
        numbers = [int(c) for c in classes]
        targets = [numbers[label] for label in targets]
        num_classes = max(numbers) + 1
        classes = [str(i) for i in range(num_classes)]
    else:
        num_classes = len(classes)
    if not files:
        raise DataError(f"data source {name} holds no samples (no image files under {root}/<class>/)")
    reader = DecodedImages(_Files(files), "RGB", preprocess).first()
    return DataSource(
        name=name,
        input_shape=reader.shape,
        num_classes=num_classes,
        y=torch.tensor(targets, dtype=torch.int64),
        index=torch.arange(len(files), dtype=torch.int64),
        split=split,
        classes=classes,
        preprocess=preprocess,
        _reader=reader,
    )


def split_directory(root: Path, split: str | None) -> str | None:
    """The split directory of ``root`` to read: ``split`` when it is there; else, when the class directories
    are split directories and there is only one, that one if it stands for ``split`` (``val/`` alone for
    ``test``; a lone ``test/`` is refused for ``train``); else ``None`` (``root`` is read)."""
    if split and (root / split).is_dir():
        return split
    try:
        with os.scandir(root) as entries:
            directories = sorted(e.name for e in entries if e.is_dir())
    except OSError as exc:
        raise DataError(f"folder {root} cannot be read ({one_line(exc)})") from None
    splits = [d for d in directories if d in SPLIT_DIRECTORIES]
    if splits and len(splits) == len(directories):
        if len(splits) == 1 and (split is None or {split, splits[0]} <= EVALUATION_SPLITS):
            return splits[0]
        if len(splits) == 1:
            raise DataError(f"folder {root} holds only the split directory {splits[0]}/, not {split}; "
                            f"choose it with --split {splits[0]}")
        raise DataError(f"folder {root} has the split directories {', '.join(splits)} but no {split}; "
                        f"choose one with --split {splits[0]}")
    return None
