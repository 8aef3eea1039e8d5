"""The ``--data`` forms' table (:mod:`flatcli.inputs.data.forms`): parsing, the lists derived from it, and a
form added as one row reaching ``load_data``, the help and the shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatcli.cli import complete
from flatcli.errors import OptionError, UsageError
from flatcli.inputs.data import load_data
from flatcli.inputs.data.forms import (ACCEPTED_FORMS, COMPLETIONS, FILE_FORMS, FORMS, IMAGE_FILE_FORMS, DataForm,
                                       DataRequest, data_help, parse)
from flatcli.inputs.data.tensors import from_tensors

ROOT = Path(__file__).resolve().parents[2]


def test_every_form_parses_and_is_complete():
    for name, form in FORMS.items():
        assert form.name == name and form.help and form.completion in COMPLETIONS
        assert (form.completion == "none") == (not form.metavar) == (not form.argument)
        parsed, argument = parse(f" {name}:some/where " if form.metavar else name)
        assert parsed is form and argument == ("some/where" if form.metavar else "")


def test_derived_lists_follow_the_table():
    assert FILE_FORMS == tuple(name for name, form in FORMS.items() if form.metavar)
    assert IMAGE_FILE_FORMS == ("folder", "hf")
    usages = [form.usage for form in FORMS.values()]
    assert usages[0] == "digits" and "cifar10:ROOT" in usages and usages[-1] == "tensors:FILE"
    assert data_help() == f"{', '.join(usages[:-1])} or {usages[-1]} (default: spec, then digits)."
    positions = [ACCEPTED_FORMS.index(usage) for usage in usages]
    assert positions == sorted(positions)
    assert complete.data("") == [(form.prefix, form.help) for form in FORMS.values()]


def test_completion_offers_what_each_form_reads(tmp_path, monkeypatch):
    (tmp_path / "tree").mkdir()
    (tmp_path / "t.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for name, form in FORMS.items():
        offered = [value for value, _ in complete.data(f"{name}:t")]
        expected = {"none": [f.prefix for f in FORMS.values()], "dir": [f"{name}:tree/"],
                    "file": [f"{name}:t.safetensors", f"{name}:tree/"]}[form.completion]
        assert offered == expected, name


def test_errors_name_the_option_and_the_form():
    with pytest.raises(OptionError) as caught:
        load_data("folder:")
    assert caught.value.options == ("data",)
    assert caught.value.worded(lambda name: f"--{name}") == "folder needs a directory: --data folder:DIR"
    assert str(caught.value) == "folder needs a directory: data= folder:DIR"
    with pytest.raises(OptionError, match=r"tensors:- reads stdin"):
        parse("tensors:")
    with pytest.raises(UsageError, match="unknown data source 'imagenet:/x'; use one of: digits, cifar10:ROOT"):
        parse("imagenet:/x")
    with pytest.raises(OptionError) as caught:
        load_data("digits", image_column="img")
    assert caught.value.worded(lambda name: f"--{name.replace('_', '-')}") == (
        "--image-column names a column of an hf: data set; --data digits has no columns: drop it")
    with pytest.raises(OptionError) as caught:  # braces in the user's text are not slots for option names
        parse("digits:{}")
    assert str(caught.value) == "'digits' takes no argument (got 'digits:{}'); choose the split with split="


def test_a_form_added_as_one_row_reaches_load_data_and_help(monkeypatch):
    seen = {}

    def load(argument: str, request: DataRequest):
        seen.update(argument=argument, request=request)
        n = int(argument)
        return from_tensors(torch.rand(n, 1, 4, 4), torch.arange(n) % 2, name=f"toy:{argument}")

    monkeypatch.setitem(FORMS, "toy", DataForm("toy", "N", "N random 4x4 images", load, argument="a count"))
    data = load_data("toy:5", "train", limit=3, num_classes=2)
    assert len(data) == 3 and data.name.startswith("toy:5")
    assert seen["argument"] == "5" and seen["request"] == DataRequest("train", 2)
    assert "tensors:FILE or toy:N (default" in data_help()
    assert ("toy:", "N random 4x4 images") in complete.data("")
    with pytest.raises(OptionError, match="toy needs a count: data= toy:N"):
        load_data("toy:")


def test_the_tables_are_read_without_torch():
    """Help and completion read both tables; neither may import torch (seconds) on the way."""
    code = ("import sys\nimport flatcli.inputs.data.forms, flatcli.models.arch_forms\n"
            "from flatcli.inputs.data import FILE_FORMS, load_data\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr
