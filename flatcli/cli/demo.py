"""``flatrob demo``: every command on the bundled example, no arguments."""

from __future__ import annotations

import sys

from flatcli.cli.app import app
from flatcli.cli.options import Device, Format

EXAMPLE = "example:digits-cnn"


def section(title: str) -> None:
    print(f"\n$ {title}", flush=True)


@app.command()
def demo(device: Device = "cpu") -> None:
    """Run each analysis on the bundled digits CNN (example:digits-cnn) and print the results."""
    from flatcli.cli.inspect import inspect
    from flatcli.cli.sharpness import sharpness

    section(f"flatrob inspect {EXAMPLE}")
    inspect(EXAMPLE, format=Format.table)
    section(f"flatrob sharpness {EXAMPLE} --hutchinson 20")
    sharpness(EXAMPLE, device=device, hutchinson=20, quiet=True)
    sys.stdout.flush()
