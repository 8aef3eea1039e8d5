"""The output plan of a run: every file it writes, checked before work and committed together at the end.

One :class:`OutputPlan` is open per command (``FlatrobGroup.main`` opens it for the CLI, each function of
:mod:`flatcli.api` for the Python API; an inner :func:`output_plan` joins the open one). While it is open:

* :func:`plan_inputs` names the files the run reads (checkpoint, a hub checkpoint's ``config.json``, ``--spec``,
  the ``--data`` file or directory,
  ``--detector``, ``--adversarial``, ``--from-json``, a converted pickle, the ``--checkpoints-from`` list) and :func:`check_outputs` the
  files it writes (``-o``, ``--trajectory``, ``--save-adv``, ``--save``, ``--plot``). Each time one is
  added, every output is checked: writable, not a directory, no two options naming the same file, and
  none the same file as an input (same device and inode, so hard and symbolic links count too) nor an
  existing file inside an input directory (``folder:DIR``, ``cifar10:ROOT``, ...);
* :func:`check_output_directory` checks a directory written into (the ``--resume`` store) the same way: not
  an input, not an input directory nor inside one;
* :func:`output_path` gives each writer a temporary file beside its target; the target is replaced only
  when the whole run has succeeded (:meth:`OutputPlan.commit`, renames in order); a failure or an
  interruption anywhere removes every temporary file, so no output of a failed run is left behind;
* special files (``/dev/null``, ``/dev/full``, ``/dev/stdout``, named pipes) are written in place,
  never renamed over, and a full disk is one ``Error:`` line naming the file
  (:func:`flatcli.outputs.files.write_errors`).

Without an open plan, :func:`output_path` commits its file as soon as its block ends.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from flatcli.errors import OutputError, UsageError
from flatcli.outputs.files import check_writable, resolved, temporary_beside, write_errors, written_in_place

#: How inputs are named in messages (keyword of :func:`plan_inputs` -> words).
INPUT_NAMES = {"checkpoint": "the checkpoint", "hub_config": "the checkpoint's config.json", "source": "the file to convert", "data": "the --data file",
               "fit_data": "the --fit-data file", "spec": "the --spec file", "detector": "the --detector file",
               "adversarial": "the --adversarial file", "from_json": "the --from-json file",
               "checkpoints_from": "the --checkpoints-from list", "config": "the --config file",
               "tokenizer": "the --tokenizer file"}

#: Outputs that are not options (keyword of :func:`check_outputs` -> how the command line names them).
OUTPUT_NAMES = {"dest": "DEST"}

_current: ContextVar["OutputPlan | None"] = ContextVar("flatrob_output_plan", default=None)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to, ``None`` when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _directory(what: str) -> str:
    """How an input directory is named in messages (``the --data directory``)."""
    return INPUT_NAMES.get(what, what).replace(" file", " directory")


def _inside(path: str, directory: str) -> bool:
    """The existing file ``path`` lies somewhere below ``directory`` (links resolved)."""
    real, top = os.path.realpath(path), os.path.realpath(directory)
    return real.startswith(top.rstrip(os.sep) + os.sep)


class OutputPlan:
    """The inputs and outputs of one run, the files staged so far, and the directories made for them."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, str]] = []  # (keyword of plan_inputs, path); several checkpoints, several entries
        self.outputs: list[tuple[str, str]] = []  # (option such as --save-adv, path)
        self.staged: list[tuple[Path, Path]] = []  # (temporary, target), in the order written
        self.made: list[Path] = []  # directories created for outputs (removed again if left empty)

    def add_inputs(self, **paths: str | os.PathLike | None) -> None:
        for what, path in paths.items():
            if path is not None and os.fspath(path) != "-":
                entry = (what, os.path.expanduser(os.fspath(path)))
                if entry not in self.inputs:
                    self.inputs.append(entry)
        self.check()

    def add_outputs(self, **paths) -> None:
        """Outputs by option; a value may also be a list of paths (``--plot DIR``: the figures inside it)."""
        for option, value in paths.items():
            flag = OUTPUT_NAMES.get(option) or "--" + option.replace("_", "-")
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path is None or os.fspath(path) == "-":
                    continue
                if os.fspath(path) == "":
                    raise UsageError(f"{flag} needs a file name")
                entry = (flag, os.path.expanduser(os.fspath(path)))
                if entry not in self.outputs:
                    self.outputs.append(entry)
        self.check()

    def check(self) -> None:
        """Every output is writable, named once, and no input (raises :class:`UsageError` naming both)."""
        seen: dict[str, str] = {}
        for flag, path in self.outputs:
            if flag != "--plot":  # --plot checks its suffix or directory itself
                check_writable(path)
            elif os.path.isdir(path):
                raise UsageError(f"{flag}: {path} is a directory in the way of a figure; move it or name another place")
            if written_in_place(path):
                continue  # /dev/null twice is fine
            key = str(resolved(path))
            if key in seen:
                raise UsageError(f"{seen[key]} and {flag} name the same file {path}; give each its own file")
            seen[key] = flag
            out_id = _identity(path)
            if out_id is None:
                continue
            for what, source in self.inputs:
                if os.path.isdir(source) and _inside(path, source):
                    raise UsageError(f"{flag} {path} is a file inside {_directory(what)} {source}: an "
                                     "output must not replace an input; name another file")
                if _identity(source) == out_id:
                    name = INPUT_NAMES.get(what, what)
                    same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
                    raise UsageError(f"{flag} {path} is {name}{same}: an output must not replace an input; "
                                     "name another file")

    def check_directory(self, option: str, directory: str | os.PathLike) -> None:
        """``directory`` (the ``--resume`` store: files written and replaced in it) is no input, no input
        directory and lies inside none (links resolved), existing or not yet made."""
        real = os.path.realpath(os.path.expanduser(directory))
        for what, source in self.inputs:
            top = os.path.realpath(source)
            if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
                where = "is" if real == top else "lies inside"
                name = _directory(what) if os.path.isdir(source) else INPUT_NAMES.get(what, what)
                raise UsageError(f"--{option.replace('_', '-')} {directory} {where} {name} {source}: files written "
                                 "there would change an input; name a directory elsewhere")

    def check_target(self, target: Path) -> None:
        """The last guard before writing: ``target`` is none of the inputs (whichever option named it)."""
        out_id = _identity(os.fspath(target))
        for what, source in self.inputs:
            if out_id is not None and os.path.isdir(source) and _inside(os.fspath(target), source):
                raise UsageError(f"cannot write {target}: it lies inside {_directory(what)} {source}, and "
                                 "an output must not replace an input; name another file")
            if out_id is not None and _identity(source) == out_id:
                raise UsageError(f"cannot write {target}: it is {INPUT_NAMES.get(what, what)}, and an output must "
                                 "not replace an input; name another file")

    def stage(self, target: Path) -> Path:
        """A temporary file for ``target``, renamed onto it by :meth:`commit`."""
        self.check_target(target)
        tmp = temporary_beside(resolved(target))
        self.staged.append((tmp, target))
        return tmp

    def unstage(self, tmp: Path) -> None:
        """Drop (and remove) the temporary file ``tmp``: its writer failed, so it must never be committed."""
        self.staged = [(t, target) for t, target in self.staged if t != tmp]
        tmp.unlink(missing_ok=True)

    def make_directory(self, directory: Path) -> None:
        """Create ``directory`` for outputs now (removed again by :meth:`discard` if nothing lands in it)."""
        if not directory.is_dir():
            try:
                directory.mkdir()
            except OSError as e:
                raise OutputError(f"cannot create directory {directory}: {e.strerror}") from None
            self.made.append(directory)

    def commit(self) -> None:
        """Rename every staged file onto its target, in order; on a failure say exactly what was written."""
        done: list[str] = []
        for i, (tmp, target) in enumerate(self.staged):
            try:
                os.replace(tmp, resolved(target))
            except OSError as e:
                self.staged = self.staged[i:]
                self.discard()
                wrote = f"; written before it: {', '.join(done)}" if done else "; no output file was written"
                raise OutputError(f"cannot write {target}: {e.strerror}{wrote}") from None
            done.append(os.fspath(target))
        self.staged = []

    def discard(self) -> None:
        """Remove every staged temporary file and every directory made for outputs that stayed empty."""
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)
        self.staged = []
        for directory in reversed(self.made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self.made = []


@contextlib.contextmanager
def output_plan() -> Iterator[OutputPlan]:
    """The open plan, or a new one committed when the block succeeds and discarded when it fails."""
    plan = _current.get()
    if plan is not None:
        yield plan
        return
    plan = OutputPlan()
    token = _current.set(plan)
    try:
        yield plan
        plan.commit()
    except BaseException:
        plan.discard()
        raise
    finally:
        _current.reset(token)


def plan_inputs(**paths: str | os.PathLike | None) -> None:
    """Name the files a run reads (``None`` and ``-`` pass): no output may be one of them."""
    with output_plan() as plan:
        plan.add_inputs(**paths)


def check_outputs(**paths) -> None:
    """Name the files a run writes, by option (``save_adv`` is ``--save-adv``; ``None`` and ``-`` pass; a list
    names several files), and check them before any work: writable, named once, none of them an input."""
    with output_plan() as plan:
        plan.add_outputs(**paths)


def check_output_directory(option: str, directory: str | os.PathLike) -> None:
    """Check a directory the run writes into (``option`` names it, e.g. ``resume``) against every input."""
    with output_plan() as plan:
        plan.check_directory(option, directory)


@contextlib.contextmanager
def output_path(path: str | os.PathLike) -> Iterator[Path]:
    """Where to write the output ``path``: a temporary file committed with the rest of the run (at once
    without an open plan), or the special file itself, written in place."""
    target = check_writable(path)
    if written_in_place(target):
        plan = _current.get()
        if plan is not None:
            plan.check_target(target)
        with write_errors(target):
            yield target
        return
    with output_plan() as plan:
        tmp = plan.stage(target)
        try:
            with write_errors(target):
                yield tmp
        except BaseException:
            plan.unstage(tmp)
            raise


def output_directory(directory: str | os.PathLike) -> Path:
    """``directory`` for output files (``--plot DIR``), created now if missing; a failed run removes it again."""
    d = Path(directory).expanduser()
    plan = _current.get()
    if plan is None:
        d.mkdir(exist_ok=True)
    else:
        plan.make_directory(d)
    return d
