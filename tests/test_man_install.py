"""``make install`` links the man page into the venv, where ``man flatrob`` finds it from ``PATH`` alone."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _make_man(venv: Path) -> Path:
    """Run the Makefile's rule for the venv's man page (only that rule: no venv, no pip) and return the page."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    page = venv / "share" / "man" / "man1" / "flatrob.1"
    res = subprocess.run(["make", "-s", f"VENV={venv}", str(page)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return page


def test_the_rule_links_the_checkouts_page(tmp_path):
    page = _make_man(tmp_path / "venv")
    assert page.is_symlink() and page.resolve() == (ROOT / "man" / "flatrob.1").resolve()
    assert page.read_text(encoding="utf-8") == (ROOT / "man" / "flatrob.1").read_text(encoding="utf-8")
    _make_man(tmp_path / "venv")  # again: up to date, nothing fails
    recipe = subprocess.run(["make", "-n", "VENV=.venv", "install"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout
    assert ".venv/share/man/man1/flatrob.1" in recipe or (ROOT / ".venv/share/man/man1/flatrob.1").exists()


def test_man_finds_it_from_the_venvs_bin_on_path(tmp_path):
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    venv = tmp_path / "venv"
    page = _make_man(venv)
    (venv / "bin").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MANPATH"}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    res = subprocess.run(["man", "-w", "flatrob"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).resolve() == page.resolve()
