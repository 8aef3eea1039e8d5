"""Tests of the outputs (formats, files, figures); :func:`figures_of` catches the figures a module draws."""

from __future__ import annotations

import contextlib

import pytest


@contextlib.contextmanager
def figures_of(module):
    """The matplotlib Figures ``module`` saves inside the block, caught before they are written and closed (they
    are still written), to read what was drawn as objects."""
    caught = []
    save = module.save
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "save", lambda fig, path, fmt, **kw: (caught.append(fig), save(fig, path, fmt, **kw)))
        yield caught
