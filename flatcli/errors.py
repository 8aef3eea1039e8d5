"""One error type per kind of user mistake; the CLI maps them to messages and exit codes.

Every error raised for bad input derives from :class:`FlatrobError` and carries a message that
names the problem and the fix. The CLI prints ``Error: <message>`` on one line and exits with
:attr:`FlatrobError.exit_code` (2 for bad input or usage). Anything else is an unexpected failure
(exit 1).
"""

from __future__ import annotations


class FlatrobError(Exception):
    """Base class: a problem with what the user gave us (exit code 2)."""

    exit_code = 2


class UsageError(FlatrobError):
    """Conflicting or out-of-range options."""


class OptionError(UsageError):
    """An option's value is out of range, or options conflict: names the *options*, never a flag.

    ``problem`` holds one ``{}`` per name in ``options``. ``str(error)`` words each as a Python keyword
    (``steps=``), the way the API is called; the CLI words them as flags (``--steps``) through
    :meth:`worded`. A name starting with ``!`` is the option turned off (``attack_each_scale=False``,
    ``--no-attack-each-scale``). So the library never speaks CLI, and each caller is told in its own terms::

        raise OptionError("steps", "{} must be at least 1, got -1")          # steps= must be ...
        raise OptionError(("detector", "method"), "{} applies a saved detector; {} fits one")
    """

    def __init__(self, options: str | tuple[str, ...], problem: str):
        self.options = (options,) if isinstance(options, str) else tuple(options)
        self.problem = problem
        super().__init__(self.worded(keyword))

    def worded(self, word) -> str:
        """The message with each option name ``n`` replaced by ``word(n)`` (e.g. the CLI's ``--flag``)."""
        return self.problem.format(*(word(name) for name in self.options))

    def __str__(self) -> str:
        return self.worded(keyword)


def literal(text: object) -> str:
    """``text`` (a path, a value the user gave) as it is inside an :class:`OptionError` problem, whose ``{}``
    stand for option names: its own braces doubled."""
    return str(text).replace("{", "{{").replace("}", "}}")


def keyword(option: str) -> str:
    """How a Python caller names an option: ``steps=``, or ``flag=False`` for ``!flag``."""
    return f"{option[1:]}=False" if option.startswith("!") else f"{option}="


class CheckpointError(FlatrobError):
    """The checkpoint file cannot be read, or does not match the architecture."""


class SpecError(FlatrobError):
    """The layer spec is malformed or names something that does not exist."""


class LayerError(FlatrobError):
    """The head (or an earlier) layer is unknown, not ``nn.Linear``, or not the last linear map."""


class DataError(FlatrobError):
    """The data source is missing, malformed, or does not fit the model."""


class DetectorError(FlatrobError):
    """A saved detector is unreadable or belongs to another checkpoint."""


class OutputError(FlatrobError):
    """An output cannot be written: it names an input, a directory is in the way, the disk is full."""


class MissingExtraError(FlatrobError):
    """An optional dependency (e.g. matplotlib for ``--plot``) is not installed."""


class CheckpointFailed(FlatrobError):
    """One of several checkpoints failed (the message names it); the exit code is that of its error."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; raised at a batch boundary. ``signum`` picks the exit code.

    A ``BaseException`` (like ``KeyboardInterrupt``), so no ``except Exception`` on the way turns an
    interrupt into a bad-input error.
    """

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum
