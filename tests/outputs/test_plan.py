"""The output plan: no output may be an input, every output is checked before work, all are committed together.

Each case runs the real command (in-process) and checks the files afterwards: the inputs unchanged, byte for
byte; after a failure or an interruption at the last output, none of the outputs and no temporary file.
"""

from __future__ import annotations

import errno
import os
import signal

import pytest
import torch
from safetensors.torch import save_file

import flatcli.api as fr
from flatcli.errors import Interrupted, OutputError, UsageError
from flatcli.inputs.checkpoint import read
from flatcli.outputs.plan import OutputPlan, output_path, output_plan
from tests.conftest import EXAMPLE, assert_one_error, invoke

SMALL = ["--limit", "6", "--batch-size", "6", "--steps", "1"]


@pytest.fixture
def inputs(tmp_path):
    """A checkpoint, a spec, a tensors: data file, an adversarial file, a detector and a sharpness document."""
    ck = read(EXAMPLE)
    f = {"ck": tmp_path / "model.safetensors", "spec": tmp_path / "spec.yaml", "data": tmp_path / "data.safetensors",
         "det": tmp_path / "det.json", "json": tmp_path / "sharp.json"}
    save_file(ck.state_dict, str(f["ck"]), metadata=ck.metadata)
    f["spec"].write_text(ck.metadata["flatrob.spec"])
    save_file({"x": torch.rand(6, 1, 8, 8), "y": torch.arange(6, dtype=torch.int64)}, str(f["data"]))
    assert invoke("detect", str(f["ck"]), *SMALL, "--save", str(f["det"]), "--quiet").exit_code == 0
    res = invoke("sharpness", str(f["ck"]), "--limit", "6", "-f", "json", "-o", str(f["json"]))
    assert res.exit_code == 0
    os.link(f["ck"], tmp_path / "hard.png")  # the checkpoint under another name (a figure suffix)
    (tmp_path / "soft.csv").symlink_to(f["data"])  # the data file through a symbolic link
    (tmp_path / "soft.yaml").symlink_to(f["spec"])
    return {k: str(v) for k, v in f.items()} | {"dir": tmp_path}


CASES = {
    # case: (arguments, what the error names)
    "-o the checkpoint": (["sharpness", "{ck}", "--limit", "6", "-o", "{ck}"], "the checkpoint"),
    "-o the spec through a link": (["sharpness", "{ck}", "--spec", "{spec}", "--limit", "6", "-o", "{dir}/soft.yaml"],
                                   "the --spec file"),
    "--save-adv the data file": (["attack", "{ck}", "--data", "tensors:{data}", *SMALL, "--save-adv", "{data}"],
                                 "the --data file"),
    "--trajectory the data through a link": (["attack", "{ck}", "--data", "tensors:{data}", *SMALL, "--trajectory",
                                              "{dir}/soft.csv"], "the --data file"),
    "--plot the checkpoint through a hard link": (["attack", "{ck}", *SMALL, "--plot", "{dir}/hard.png"],
                                                  "the checkpoint"),
    "--save the adversarial file": (["detect", "{ck}", "--adversarial", "{data}", "--limit", "6", "--save", "{data}"],
                                    "the --adversarial file"),
    "-o the detector": (["detect", "{ck}", "--detector", "{det}", "--limit", "6", "-o", "{det}"], "the --detector file"),
    "-o the --from-json document": (["bound", "--from-json", "{json}", "-L", "3", "--epsilon", "0.1", "-o", "{json}"],
                                    "the --from-json file"),
    "-o the checkpoint of bound": (["bound", "{ck}", "--epsilon", "0.1", "--limit", "6", "-o", "{ck}"], "the checkpoint"),
    "-o the checkpoint of inspect": (["inspect", "{ck}", "-o", "{ck}"], "the checkpoint"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(inputs, case):
    args, named = CASES[case]
    before = {p.name: p.read_bytes() for p in inputs["dir"].iterdir() if p.is_file()}
    res = invoke(*[a.format(**inputs) for a in args])
    assert_one_error(res, named, "must not replace an input")
    assert {p.name: p.read_bytes() for p in inputs["dir"].iterdir() if p.is_file()} == before


def test_convert_refuses_to_replace_its_source_through_a_link(tmp_path):
    src = tmp_path / "model.pt"
    torch.save(read(EXAMPLE).state_dict, src)
    (tmp_path / "out.safetensors").symlink_to(src)
    before = src.read_bytes()
    assert_one_error(invoke("convert", src, tmp_path / "out.safetensors", "--force"), "file to convert")
    assert src.read_bytes() == before


def test_api_refuses_an_output_that_is_an_input(inputs):
    with pytest.raises(UsageError, match="the --data file"):
        fr.attack(inputs["ck"], f"tensors:{inputs['data']}", steps=1, device="cpu", save_adv=inputs["data"])


def _attack_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out, ["attack", EXAMPLE, *SMALL, "-f", "json", "-o", out / "result.json", "--trajectory", out / "t.csv",
                 "--save-adv", out / "adv.safetensors", "--plot", out / "fig.png"]


def test_all_outputs_are_written_together(tmp_path):
    out, args = _attack_outputs(tmp_path)
    assert invoke(*args).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["adv.safetensors", "fig.png", "result.json", "t.csv"]


@pytest.mark.parametrize("failure", ["disk full", "interrupt"])
def test_a_failure_at_the_last_output_leaves_none_of_them(tmp_path, monkeypatch, failure):
    """The figure is drawn last: -o, --trajectory and --save-adv are complete by then, yet none is committed."""
    import flatcli.outputs.figures.attack as figures

    def fail(summary, path, title="", **kwargs):
        with output_path(path) as tmp:
            tmp.write_bytes(b"half a figure")
            if failure == "disk full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise Interrupted(signal.SIGINT, "interrupted by SIGINT (Ctrl-C); no output file was written")

    monkeypatch.setattr(figures, "attack_figure", fail)
    out, args = _attack_outputs(tmp_path)
    res = invoke(*args)
    if failure == "disk full":
        assert_one_error(res, "cannot write", "fig.png", "No space left on device")
    else:
        assert res.exit_code == 130 and "no output file was written" in res.stderr
    assert list(out.iterdir()) == []  # no output and no temporary file


def test_outputs_are_checked_before_any_work(tmp_path, monkeypatch):
    """A directory in the way of a --plot DIR figure is found before the attack runs."""
    import flatcli.runs.sweep as sweep

    monkeypatch.setattr(sweep, "each_batch", lambda *a, **k: pytest.fail("the run started"))
    (tmp_path / "figs" / "fig2_loss_geometry.png").mkdir(parents=True)
    res = invoke("sweep-scale", EXAMPLE, *SMALL, "--scales", "1,2", "-o", tmp_path / "r.json", "--plot",
                 tmp_path / "figs")
    assert_one_error(res, "fig2_loss_geometry.png", "directory in the way")
    assert not (tmp_path / "r.json").exists()


def test_sweep_removes_a_plot_directory_it_made_when_the_run_fails(tmp_path, monkeypatch):
    import flatcli.outputs.figures.sweep as figures

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(figures, "sweep_figures", fail)
    res = invoke("sweep-scale", EXAMPLE, *SMALL, "--scales", "1,2", "--plot", tmp_path / "figs")
    assert res.exit_code != 0
    assert list(tmp_path.iterdir()) == []


def test_a_commit_that_fails_says_what_was_written(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    with pytest.raises(OutputError, match=r"cannot write .*b\.json: .*written before it: .*a\.json"):
        with output_plan():
            for target in (first, second):
                with output_path(target) as tmp:
                    tmp.write_text("done")
            second.mkdir()  # something takes the place of the last output before the commit
    assert first.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary file left


def test_without_a_plan_a_file_is_committed_at_once_and_a_failed_one_never(tmp_path):
    target = tmp_path / "x.txt"
    with output_path(target) as tmp:
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with output_path(target) as tmp:
            tmp.write_text("two, half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_an_output_written_through_a_link_keeps_the_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    assert invoke("sharpness", EXAMPLE, "--limit", "5", "-f", "json", "-o", tmp_path / "link.json").exit_code == 0
    assert (tmp_path / "link.json").is_symlink() and '"command": "sharpness"' in (tmp_path / "real.json").read_text()


def test_two_options_naming_one_file_are_refused(tmp_path):
    plan = OutputPlan()
    with pytest.raises(UsageError, match="--trajectory and --save-adv name the same file"):
        plan.add_outputs(trajectory=tmp_path / "x", save_adv=tmp_path / "x")
