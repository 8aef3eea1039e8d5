"""The ``flatrob`` command tree and the one place where errors become messages and exit codes.

Exit codes: 0 success; 2 bad input or usage (one ``Error:`` line on stderr); 1 unexpected failure
(one line, traceback only with ``FLATROB_DEBUG=1``); 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit

from flatcli.outputs.plan import output_plan
from flatcli.runtime import interrupts
from flatcli.errors import FlatrobError, Interrupted, OptionError


class FlatrobGroup(TyperGroup):
    """Typer group whose ``main`` maps every failure to one stderr line and an exit code.

    The command runs inside one output plan (:mod:`flatcli.outputs.plan`): its output files are
    committed together when it succeeds, and none is left when it fails or is interrupted.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with interrupts.handling(), output_plan():  # SIGINT/SIGTERM: stop at the next batch boundary
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except Exit as e:
            code = e.exit_code
        except typer.TyperException as e:  # typer's usage errors (its vendored click's ClickException)
            code = _fail(e.format_message(), e.exit_code)
        except Abort:
            code = _fail("aborted", 130)
        except OptionError as e:
            code = _fail(e.worded(flag), e.exit_code)
        except FlatrobError as e:
            code = _fail(str(e), e.exit_code)
        except Interrupted as e:
            code = _fail(str(e) or "interrupted", 128 + e.signum)
        except KeyboardInterrupt:
            code = _fail("interrupted", 130)
        except BrokenPipeError:
            code = _quiet_broken_pipe()
        except Exception as e:  # noqa: BLE001 - the one place unexpected failures are reported
            code = _fail(f"unexpected failure: {type(e).__name__}: {e} (FLATROB_DEBUG=1 shows a traceback)", 1)
        if standalone_mode:
            sys.exit(code)
        return code


def flag(option: str) -> str:
    """The command-line flag of a library option name (``random_start`` -> ``--random-start``; ``!scale_bias``,
    the option turned off, -> ``--no-scale-bias``)."""
    if option.startswith("!"):
        return "--no-" + option[1:].replace("_", "-")
    return "--" + option.replace("_", "-")


def _fail(message: str, code: int) -> int:
    if os.environ.get("FLATROB_DEBUG") == "1":
        traceback.print_exc()
    one_line = " ".join(str(message).split())
    print(f"Error: {one_line}", file=sys.stderr)
    return code


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as a shell tool should."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


app = typer.Typer(
    cls=FlatrobGroup,
    name="flatrob",
    help="What the flatness of the loss says about adversarial robustness.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def run() -> None:
    """Console-script entry point."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()
