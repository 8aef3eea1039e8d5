"""Figures, one module per command (matplotlib is an optional extra: ``pip install 'flatrob[plot]'``).

matplotlib is imported only when a figure is drawn (headless ``Agg`` backend); every figure file is
committed with the run's other outputs, and the path is checked before any work (:func:`check_plot_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

from flatcli.errors import MissingExtraError, OptionError, literal
from flatcli.outputs.plan import output_path

FORMATS = ("png", "pdf", "svg")
#: Panels per row: more panels wrap onto further rows instead of a long strip.
MAX_COLUMNS = 3


def require_matplotlib() -> None:
    """Fail with one clear line, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "a figure (plot) needs matplotlib, which is not installed; pip install 'flatrob[plot]'"
        ) from None


def check_plot_path(path: str | os.PathLike, option: str = "plot") -> str:
    """The image format implied by the suffix; OptionError (naming ``option``) for an unknown suffix or a missing
    directory."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise OptionError(option, "{} " + literal(path) + ": use a .png, .pdf or .svg file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OptionError(option, "{} " + literal(path) + ": directory " + literal(parent)
                          + " does not exist; create it first")
    return fmt


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (:class:`MissingExtraError` without matplotlib)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def panel_grid(plt, *groups: int, width: float = 5.0, height: float = 3.6):
    """A figure of panels, at most :data:`MAX_COLUMNS` a row, each ``width`` x ``height`` inches; ``groups`` the
    panel counts of groups that each start on a new row. Returns the figure and its panels in reading order
    (the empty cells at the end of each group's last row are hidden)."""
    columns = max(1, min(max(groups, default=1), MAX_COLUMNS))
    spans = [-(-count // columns) for count in groups]  # an empty group takes no row
    rows = max(1, sum(spans))
    fig, grid = plt.subplots(rows, columns, figsize=(width * columns, height * rows), constrained_layout=True,
                             squeeze=False)
    axes, first = [], 0
    for count, span in zip(groups, spans):
        cells = list(grid[first:first + span].flat)
        for ax in cells[count:]:
            ax.set_axis_off()
        axes += cells[:count]
        first += span
    return fig, axes


def eps_text(eps: float) -> str:
    """A radius below 1 as people write it: ``8/255`` when it is a whole number of 255ths, else ``0.025``."""
    steps = eps * 255
    if 0 < eps < 1 and abs(steps - round(steps)) < 1e-6 * max(steps, 1.0):
        return f"{round(steps)}/255"
    return f"{eps:.4g}"


def save(fig, path: str | os.PathLike, fmt: str, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` (committed with the run's other outputs) in format ``fmt`` and close it."""
    import matplotlib.pyplot as plt

    try:
        with output_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
