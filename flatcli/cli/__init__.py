"""The command-line layer: thin commands over the library (the only place typer and rich live)."""

from flatcli.cli.app import app, run
from flatcli.cli import sharpness, inspect, attack, bound, detect, sweep, demo, convert  # noqa: F401,E402 - registers the commands

__all__ = ["app", "run"]
