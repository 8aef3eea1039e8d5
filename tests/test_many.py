"""Many checkpoints in one call (``flatcli.runs.many``): the rows, summaries, failures, outputs, resume and torchrun
of a list of checkpoints equal what one call per checkpoint gives."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from bench.common import perturbed_copies
from tests.conftest import EXAMPLE, TORCHRUN, assert_one_error, invoke

SHARP = ["sharpness", "--limit", "40", "--batch-size", "16", "--device", "cpu"]
ATTACK = ["attack", "--limit", "20", "--batch-size", "10", "--steps", "3", "--eps", "0.2", "--alpha", "0.05",
          "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return perturbed_copies(tmp_path_factory.mktemp("ckpts"), 3)


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_rows_and_summaries_equal_one_call_per_checkpoint(ckpts):
    many = invoke(*SHARP, *ckpts, "--format", "jsonl")
    assert many.exit_code == 0, many.stderr
    got = rows(many.stdout)
    doc = json.loads(invoke(*SHARP, *ckpts, "--format", "json").stdout)
    assert doc["config"]["checkpoints"] == ckpts and doc["config"]["failed"] == 0 and "summary" not in doc
    path = ckpts[2]  # the other two differ from it (below), so its rows and summary are its own
    single = invoke(*SHARP, path, "--format", "jsonl")
    assert [{"checkpoint": path, **r} for r in rows(single.stdout)] == [r for r in got if r["checkpoint"] == path]
    one = json.loads(invoke(*SHARP, path, "--format", "json").stdout)
    entry = doc["summaries"][2]
    assert entry["index"] == 2 and entry["checkpoint"] == path and entry["error"] is None
    assert entry["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest() == one["config"]["checkpoint_sha256"]
    assert entry["summary"] == one["summary"]
    assert {k: v for k, v in entry["config"].items() if k != "versions"} == \
           {k: v for k, v in one["config"].items() if k != "versions"}
    assert len({e["summary"]["relative_sharpness"]["mean"] for e in doc["summaries"]}) == 3  # they differ
    csv = invoke(*SHARP, *ckpts[:2], "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("checkpoint,index,label") and len(csv) == 1 + 2 * 40
    table = invoke(*SHARP, *ckpts[:2])
    assert table.exit_code == 0 and "2 checkpoints" in table.stdout and "sharpness mean" in table.stdout


def test_one_checkpoint_keeps_todays_document():
    doc = json.loads(invoke(*SHARP, EXAMPLE, "--format", "json").stdout)
    assert set(doc) == {"schema_version", "command", "config", "summary"}
    assert "checkpoint" not in rows(invoke(*SHARP, EXAMPLE, "--format", "jsonl").stdout)[0]


def test_checkpoints_from_a_file_and_stdin(ckpts, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the runs\n{ckpts[0]}\n\n   {ckpts[1]}  \n# done\n")
    from_file = json.loads(invoke(*SHARP, "--checkpoints-from", listing, "--format", "json").stdout)
    assert from_file["config"]["checkpoints"] == ckpts[:2] and from_file["config"]["checkpoints_from"] == str(listing)
    mixed = json.loads(invoke(*SHARP, ckpts[2], "--checkpoints-from", "-", "--format", "json",
                              input=f"{ckpts[0]}\n").stdout)
    assert [e["checkpoint"] for e in mixed["summaries"]] == [ckpts[2], ckpts[0]]
    one_line = json.loads(invoke(*SHARP, "--checkpoints-from", "-", "--format", "json", input=f"{ckpts[1]}\n").stdout)
    assert len(one_line["summaries"]) == 1  # a list stays a list, whatever its length
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    assert_one_error(invoke(*SHARP, "--checkpoints-from", tmp_path / "empty.txt"), "no checkpoint given")
    assert_one_error(invoke(*SHARP, "--checkpoints-from", tmp_path / "missing.txt"), "does not exist")
    assert_one_error(invoke(*SHARP, "--checkpoints-from", "/dev/zero"), "larger than the 16 MiB")


def test_a_failing_checkpoint_is_one_error_line_and_the_others_are_written(ckpts, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "rows.jsonl"
    res = invoke(*SHARP, ckpts[0], bad, ckpts[1], "--format", "jsonl", "-o", out)
    assert res.exit_code == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: ") and "Traceback" not in res.stderr
    assert {r["checkpoint"] for r in rows(out.read_text())} == {ckpts[0], ckpts[1]}
    doc = json.loads(invoke(*SHARP, ckpts[0], bad, "--format", "json").stdout)
    assert doc["config"]["failed"] == 1 and doc["summaries"][1]["error"] and doc["summaries"][1]["summary"] is None

    out.unlink()
    fast = invoke(*SHARP, ckpts[0], bad, ckpts[1], "--format", "jsonl", "-o", out, "--fail-fast")
    assert_one_error(fast, str(bad))
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    every = invoke(*SHARP, bad, tmp_path / "gone.safetensors", "-o", out)
    assert every.exit_code == 2 and "all 2 checkpoints failed; nothing was written" in every.stderr
    assert not out.exists()
    # wrong options end the run at once, as for one checkpoint
    assert_one_error(invoke(*SHARP, *ckpts, "--scale", "-1"), "--scale")


def test_a_checkpoint_failing_half_way_leaves_none_of_its_rows_or_files(tmp_path):
    from flatcli.errors import DataError
    from flatcli.outputs.plan import output_path, output_plan
    from flatcli.runs import many
    from flatcli.runs.result import Result

    def call(ref, *, on_rows, save):
        on_rows([{"index": 0, "value": ref}])
        with output_path(save) as tmp:
            Path(tmp).write_text(ref)
        if ref == "b":
            raise DataError("the second batch is broken")
        on_rows([{"index": 1, "value": ref}])
        return Result("fake", {}, {"n": 2})

    got, errors = [], []
    with output_plan():
        result = many.each_checkpoint("fake", call, ["a", "b", "c"], kwargs={"on_rows": got.extend,
                                                                            "save": str(tmp_path / "{stem}.txt")},
                                      on_error=lambda ref, message: errors.append((ref, message)))
    assert [(r["checkpoint"], r["index"]) for r in got] == [("a", 0), ("a", 1), ("c", 0), ("c", 1)]
    assert errors == [("b", "the second batch is broken")] and result.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt"]


def test_per_checkpoint_outputs_need_a_template_checked_before_work(ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke(*ATTACK, *ckpts[:2], "--save-adv", "adv.safetensors"), "{stem} or {index}")
    # epoch0/model and epoch1/model share a stem
    assert_one_error(invoke(*ATTACK, *ckpts[:2], "--trajectory", "t-{stem}.csv"), "use {index}")
    assert_one_error(invoke(*SHARP, *ckpts[:2], "-o", ckpts[1]), "must not replace an input")
    res = invoke(*ATTACK, *ckpts, "--trajectory", "t-{index}.csv", "--save-adv", "adv-{index}-{stem}.safetensors",
                 "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adv-0-model.safetensors", "adv-1-model.safetensors", "adv-2-m2.safetensors", "t-0.csv", "t-1.csv", "t-2.csv"]
    single = invoke(*ATTACK, ckpts[2], "--trajectory", "one.csv")
    assert single.exit_code == 0
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "t-2.csv").read_bytes()


def test_plot_draws_the_measures_against_the_checkpoint_order(ckpts, tmp_path):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "trend.png"
    res = invoke(*SHARP, *ckpts, "--plot", fig, "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(res.stdout)["config"]["plot"] == str(fig)
    assert_one_error(invoke(*SHARP, EXAMPLE, "--plot", fig), "several checkpoints")
    from flatcli.runs.many import trend_series
    import flatcli.api as fr

    series = trend_series(fr.sharpness(ckpts, limit=40, device="cpu", samples=False))
    assert set(series) == {"accuracy", "relative sharpness"} and len(series["accuracy"]["accuracy"]) == 3


def test_data_read_once_and_one_model_alive_at_a_time(ckpts, monkeypatch):
    import flatcli.api as fr
    from flatcli.models.loading import LoadedModel

    reads = []
    real = fr.load_data
    monkeypatch.setattr(fr, "load_data", lambda *a, **k: reads.append(a) or real(*a, **k))
    def models() -> int:
        return sum(isinstance(o, LoadedModel) for o in gc.get_objects())

    gc.collect()
    before, alive = models(), []  # other tests' models (a session fixture) may be alive
    result = fr.sharpness(ckpts, "digits", limit=40, batch_size=16, device="cpu",
                          progress=lambda done, total: alive.append(models() - before))  # after every batch
    assert len(reads) == 1 and alive == [1] * 9
    assert len(result.samples) == 120 and result.samples[0]["checkpoint"] == ckpts[0] and not result.errors
    assert [r.summary["n"] for r in result.results] == [40, 40, 40]


def test_a_resumed_run_reads_finished_checkpoints_back(ckpts, tmp_path, monkeypatch):
    from tests.test_interrupts import _signal_during_batch

    args = [*ATTACK, *ckpts[:2], "--format", "json", "--per-sample"]
    full = invoke(*args)
    assert full.exit_code == 0
    log = _signal_during_batch(monkeypatch, signal.SIGTERM, on_call=3)  # the second checkpoint's first batch
    stopped = invoke(*args, "--resume", tmp_path / "R")
    assert stopped.exit_code == 143 and log == ["start", "done"] * 3
    shas = sorted(p.name for p in (tmp_path / "R").iterdir())
    assert shas == sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16] for p in ckpts[:2])
    monkeypatch.undo()
    log = _signal_during_batch(monkeypatch, signal.SIGTERM, on_call=99)
    again = invoke(*args, "--resume", tmp_path / "R")
    assert again.exit_code == 0, again.stderr
    assert log == ["start", "done"]  # only the unfinished batch of the second checkpoint was computed
    assert again.stdout == full.stdout.replace('"resume": null', f'"resume": "{tmp_path / "R"}"')


def test_torchrun_many_checkpoints_equal_one_process(ckpts, tmp_path):
    args = [*SHARP, *ckpts[:2], "--format", "jsonl", "--limit", "37", "--batch-size", "8"]
    out = tmp_path / "dist.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "flatcli", *args, "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = rows(invoke(*args).stdout)
    dist = rows(out.read_text())
    assert [(r["checkpoint"], r["index"]) for r in dist] == [(r["checkpoint"], r["index"]) for r in single]
    for a, b in zip(single, dist):
        assert b["relative_sharpness"] == pytest.approx(a["relative_sharpness"], rel=1e-6)


# ---------------------------------------------------------------- issue 24: trust, round two


def test_every_file_read_is_an_input_checked_before_any_work(ckpts, tmp_path, monkeypatch):
    """Case 2: the ``--checkpoints-from`` list (and a hub folder's files) may not be an output, refused before
    the first checkpoint is measured."""
    import flatcli.runs.many as many_module

    listing = tmp_path / "list.txt"
    listing.write_text(f"{ckpts[0]}\n{ckpts[1]}\n")
    before = listing.read_text()
    monkeypatch.setattr(many_module, "_release", lambda refs: pytest.fail("a checkpoint was measured"))
    assert_one_error(invoke(*SHARP, "--checkpoints-from", listing, "--format", "json", "-o", listing),
                     "is the --checkpoints-from list")
    assert listing.read_text() == before
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    (hub / "model.safetensors").write_bytes(Path(ckpts[1]).read_bytes())
    assert_one_error(invoke(*SHARP, ckpts[0], hub, "-o", hub / "config.json"), "config.json")
    assert (hub / "config.json").read_text() == "{}"


def test_hub_folders_have_a_sha256_and_a_store_each(ckpts, tmp_path):
    """Case 7: hub checkpoints were ``sha256: null``, so their stores collided on ``R/unreadable``."""
    hubs = []
    for i in range(2):
        hubs.append(tmp_path / f"hub{i}")
        hubs[-1].mkdir()
        (hubs[-1] / "config.json").write_text("{}")
        (hubs[-1] / "model.safetensors").write_bytes(Path(ckpts[i]).read_bytes())
    res = invoke(*ATTACK, *hubs, "--format", "json", "--resume", tmp_path / "R")
    assert res.exit_code == 0, res.stderr
    shas = [e["sha256"] for e in json.loads(res.stdout)["summaries"]]
    assert shas == [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ckpts[:2]]
    assert sorted(p.name for p in (tmp_path / "R").iterdir()) == sorted(s[:16] for s in shas)


def test_a_resume_directory_of_several_checkpoints_is_checked_like_one(ckpts, tmp_path):
    """Case 3: ``--resume D`` with ``--data folder:D`` made ``D/<sha16>/``, a new class of the data."""
    from PIL import Image

    for cls in ("0", "1"):
        (tmp_path / "D" / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 50).save(tmp_path / "D" / cls / "a.png")
    for resume in (tmp_path / "D", tmp_path / "D" / "R"):
        assert_one_error(invoke(*ATTACK, *ckpts[:2], "--data", f"folder:{tmp_path / 'D'}", "--resume", resume),
                         "the --data directory")
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["0", "1"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert_one_error(invoke(*ATTACK, *ckpts[:2], "--resume", tmp_path / "mine"), "not a flatrob resume directory")


def test_fail_fast_writes_no_row_before_every_checkpoint_succeeded(ckpts, tmp_path):
    """Case 14: the first checkpoint's CSV rows were on stdout although --fail-fast promises nothing written."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert_one_error(invoke(*SHARP, ckpts[0], bad, "--format", "csv", "--fail-fast"), str(bad))
    ok = invoke(*SHARP, ckpts[0], ckpts[1], "--format", "csv", "--fail-fast")
    assert ok.exit_code == 0 and len(ok.stdout.splitlines()) == 81


def test_messages_name_the_checkpoint_once_and_stdin_twice_is_one_line(ckpts, tmp_path):
    """Case 14: "Error: X: X: ..." and one "read nothing" per checkpoint when list and data both want stdin."""
    from safetensors.torch import load_file, save_file

    from flatcli.inputs.checkpoint import read

    state = load_file(ckpts[0])
    state["fc.bias"][:] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=read(ckpts[0]).metadata)
    res = invoke(*SHARP, ckpts[0], tmp_path / "nan.safetensors")
    line = [l for l in res.stderr.splitlines() if l.startswith("Error:")]
    assert line == [f"Error: {tmp_path / 'nan.safetensors'}: tensor 'fc.bias' contains NaN or Inf; the checkpoint is "
                    "broken"]
    assert_one_error(invoke(*SHARP, "--checkpoints-from", "-", "--data", "tensors:-", input=f"{ckpts[0]}\n"),
                     "both read stdin")


def test_an_interrupted_run_of_several_names_the_directory_given(ckpts, tmp_path, monkeypatch):
    """Case 14: after Ctrl-C the hint said ``--resume R/66afdebf8422cbcf`` instead of ``--resume R``."""
    from tests.test_interrupts import _signal_during_batch

    _signal_during_batch(monkeypatch, signal.SIGINT, on_call=3)
    res = invoke(*ATTACK, *ckpts[:2], "--resume", tmp_path / "R")
    assert res.exit_code == 130
    assert f"--resume {tmp_path / 'R'})" in res.stderr and "R/" not in res.stderr
