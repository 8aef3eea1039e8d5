"""Parameters of the CLI that are not option groups: the checkpoint arguments and file options several commands
share. The shared options are declared once, as groups, in :mod:`flatcli.options` (see :mod:`flatcli.cli.params`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Checkpoint = Annotated[
    str,
    typer.Argument(help="safetensors checkpoint, or example:digits-cnn for the bundled example.", show_default=False),
]
Checkpoints = Annotated[
    Optional[list[str]],
    typer.Argument(help="safetensors checkpoint(s), or example:digits-cnn for the bundled example; several run one "
                   "after another in one process (one summary each).", show_default=False),
]
TrendPlot = Annotated[
    Optional[str],
    typer.Option("--plot", help="With several checkpoints: draw the summary measures against the checkpoint order "
                 "to FILE (.png, .pdf, .svg).", metavar="FILE"),
]
SaveAdv = Annotated[
    Optional[str],
    typer.Option("--save-adv", help="Write the adversarials (x, y, index) as a tensors: safetensors FILE (with several "
                 "checkpoints a name with {stem} or {index}).", metavar="FILE"),
]
