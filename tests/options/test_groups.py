"""The option groups: one declaration per option, checked once, read alike by the CLI, the API and the docs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from flatcli.cli import app
from flatcli.errors import OptionError
from flatcli.options import (
    AttackOptions, DataOptions, Group, HeadOptions, ModelOptions, RunOptions, SpeedOptions, flag_of,
)
from flatcli.options.bound import BoundChecks
from flatcli.options.calls import accepts
from flatcli.options.sweep import SweepOptions

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("make, words", [
    (lambda: DataOptions(batch_size=0), ("batch_size=", "at least 1")),
    (lambda: DataOptions(limit=-1), ("limit=", "0 or more")),
    (lambda: RunOptions(seed=2**32), ("seed=", "from 0 to 4294967295")),
    (lambda: RunOptions(seed=1.5), ("seed=", "whole number")),
    (lambda: RunOptions(seed=True), ("seed=", "whole number")),
    (lambda: HeadOptions(scale=0), ("scale=", "> 0")),
    (lambda: HeadOptions(scale=float("nan")), ("scale=", "finite")),
    (lambda: SpeedOptions(precision="fp8"), ("precision=", "fp32, bf16, fp16")),
    (lambda: ModelOptions(std="0.5,0"), ("std=", "> 0")),
    (lambda: SweepOptions(scales="1,x"), ("scales=", "a number")),
])
def test_a_group_checks_its_options_and_names_them_as_keywords(make, words):
    with pytest.raises(OptionError) as caught:
        make()
    message = str(caught.value)
    assert all(w in message for w in words), message
    assert "--" not in message


def test_values_are_normalised_once():
    assert ModelOptions(mean="0.5, 0.25", std=0.5).mean == (0.5, 0.25)
    assert ModelOptions(std=0.5).std == (0.5,)
    assert SweepOptions(scales="1,10").scales == (1.0, 10.0)
    assert AttackOptions(norm="linf").given() == {"norm": "linf"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataOptions().limit = 3


def test_option_error_words_options_for_each_caller():
    error = OptionError(("square", "!attack_each_scale"), "{} needs the attack that {} skips")
    assert str(error) == "square= needs the attack that attack_each_scale=False skips"
    from flatcli.cli.app import flag

    assert error.worded(flag) == "--square needs the attack that --no-attack-each-scale skips"


def _commands():
    return typer.main.get_command(app).commands


@pytest.mark.parametrize("command, groups", [
    ("sharpness", (ModelOptions, DataOptions, RunOptions, SpeedOptions, HeadOptions)),
    ("attack", (ModelOptions, DataOptions, RunOptions, AttackOptions, HeadOptions)),
    ("sweep-scale", (ModelOptions, DataOptions, SweepOptions)),
    ("detect", (ModelOptions, DataOptions, AttackOptions)),
])
def test_every_option_of_a_group_is_a_flag_with_the_groups_help(command, groups):
    params = {p.name: p for p in _commands()[command].params}
    for group in groups:
        for name, spec, default in group.options():
            param = params[name]
            assert flag_of(name, spec) in param.opts, (command, name)
            assert param.help == spec.text()


def test_the_cli_words_a_range_error_with_the_flag():
    res = CliRunner().invoke(app, ["sharpness", "example:digits-cnn", "--batch-size", "0"])
    assert res.exit_code == 2
    assert "--batch-size must be at least 1" in res.output and "batch_size=" not in res.output


def test_accepts_takes_groups_and_keywords_and_refuses_unknown_ones():
    @accepts(DataOptions, RunOptions)
    def f(model, data=None, *, chosen, extra=0):
        return chosen.data.batch_size, chosen.run.seed, extra

    assert f(None, None, DataOptions(batch_size=3), seed=5, extra=1) == (3, 5, 1)
    assert f(None, batch_size=7, ) == (7, 0, 0)
    with pytest.raises(TypeError, match="batch_sise"):
        f(None, batch_sise=3)
    with pytest.raises(TypeError, match="option groups"):
        f(None, None, AttackOptions())
    assert {"batch_size", "seed", "extra"} <= set(__import__("inspect").signature(f).parameters)


def test_a_command_cannot_take_one_option_from_two_groups():
    from flatcli.cli.params import expand

    def both(attack: AttackOptions = None, checks: BoundChecks = None):  # both declare loss
        pass

    with pytest.raises(TypeError, match="declared twice: loss"):
        expand(both)


def test_the_options_package_imports_no_torch_nor_typer():
    code = "import sys, flatcli.options; print([m for m in ('torch', 'typer', 'rich') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_counting_script_runs():
    out = subprocess.run([sys.executable, "scripts/option_counts.py"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    counts = {line.split()[1]: int(line.split()[0]) for line in out.stdout.splitlines()}
    assert {"takeoff", "image_column", "search_width", "fail_fast"} <= set(counts)
    assert counts["fail_fast"] <= 4 and counts["search_width"] <= 4
