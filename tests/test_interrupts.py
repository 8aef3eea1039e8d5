"""SIGINT/SIGTERM stop at the next batch boundary: no partial file, exit 130/143, one line on resuming."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatcli.runtime import interrupts
from flatcli.inputs.checkpoint import resolve
from tests.conftest import TORCHRUN, EXAMPLE, invoke

EXAMPLE_FILE = resolve(EXAMPLE)

FLATROB = str(Path(sys.executable).with_name("flatrob"))


def _one_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _signal_during_batch(monkeypatch, signum: int, on_call: int = 2, times: int = 1, gap: float = 0.0) -> list[str]:
    """Send ``signum`` to this process ``times`` times while batch ``on_call`` of the attack is computed."""
    import flatcli.runs.attack as trajectory

    real = trajectory._attack_batch
    log: list[str] = []

    def attack_batch(*args, **kwargs):
        n = sum(1 for e in log if e == "start") + 1
        log.append("start")
        if n == on_call:
            for k in range(times):
                if k:
                    time.sleep(gap)
                os.kill(os.getpid(), signum)
        out = real(*args, **kwargs)
        log.append("done")
        return out

    monkeypatch.setattr(trajectory, "_attack_batch", attack_batch)
    return log


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_finishes_the_batch_then_stops_without_a_file(monkeypatch, tmp_path, signum, code, name):
    log = _signal_during_batch(monkeypatch, signum)
    res = invoke("attack", EXAMPLE, "--limit", "40", "--batch-size", "10", "--steps", "2", "--format", "jsonl",
                 "--output", tmp_path / "out.jsonl", "--trajectory", tmp_path / "t.csv", "--save-adv", tmp_path / "a.safetensors")
    assert res.exit_code == code, res.stderr
    line = _one_line(res.stderr)
    assert name in line and "batch boundary" in line and "--resume" in line
    assert log == ["start", "done", "start", "done"]  # the second batch completed; the third never started
    assert list(tmp_path.iterdir()) == []


def test_one_ctrl_c_delivered_twice_still_finishes_the_batch(monkeypatch, tmp_path):
    """A terminal sends SIGINT to the whole process group and torchrun forwards it again: one interruption."""
    log = _signal_during_batch(monkeypatch, signal.SIGINT, times=2, gap=0.0)
    res = invoke("attack", EXAMPLE, "--limit", "40", "--batch-size", "10", "--steps", "2", "--format", "json",
                 "--output", tmp_path / "out.json")
    assert res.exit_code == 130
    _one_line(res.stderr)
    assert log == ["start", "done", "start", "done"]
    assert list(tmp_path.iterdir()) == []


def test_second_signal_stops_at_once(monkeypatch, tmp_path):
    log = _signal_during_batch(monkeypatch, signal.SIGINT, times=2, gap=interrupts.SAME_INTERRUPT_S + 0.1)
    res = invoke("attack", EXAMPLE, "--limit", "40", "--batch-size", "10", "--steps", "2", "--format", "json",
                 "--output", tmp_path / "out.json")
    assert res.exit_code == 130
    _one_line(res.stderr)
    assert log == ["start", "done", "start"]  # stopped inside the second batch
    assert list(tmp_path.iterdir()) == []


def test_handlers_are_restored_after_a_command():
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    res = invoke("bound", "--kappa", "1", "-L", "2", "--r", "1", "--classes", "10", "--features", "4", "--epsilon", "0.1")
    assert res.exit_code == 0, res.stderr
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before
    assert interrupts.pending() is None


def test_signal_outside_a_batch_loop_stops_at_once():
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert info.value.signum == signal.SIGTERM


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([FLATROB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)


def _wait_for_rows(proc: subprocess.Popen, rows: int = 1) -> None:
    for _ in range(rows):
        assert proc.stdout.readline(), proc.stderr.read()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_real_process_interrupted_mid_run_leaves_no_file(tmp_path, signum, code):
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["attack", EXAMPLE, "--limit", "360", "--batch-size", "10", "--steps", "100", "--per-sample",
                   "--format", "jsonl", "--trajectory", str(out / "t.jsonl"), "--save-adv", str(out / "adv.safetensors"),
                   "--quiet"], tmp_path)
    _wait_for_rows(proc)  # the first batch is finished: we are mid-run
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    line = _one_line(stderr)
    assert "--resume" in line
    assert list(out.iterdir()) == []
    assert len(stdout.splitlines()) < 359  # it stopped early


# ------------------------------------------------------------------------------------------------
# --resume DIR
# ------------------------------------------------------------------------------------------------

RUN = ["attack", EXAMPLE, "--limit", "120", "--batch-size", "10", "--steps", "60", "--quiet"]


def test_acceptance_sigint_then_rerun_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    """Kill `attack --resume DIR` with SIGINT mid-run, rerun it: the same bytes as a run never interrupted."""
    outputs = ["--format", "jsonl", "--per-sample", "--trajectory"]
    full = _start([*RUN, *outputs, "full-traj.csv", "--save-adv", "full.safetensors"], tmp_path)
    proc = _start([*RUN, *outputs, "traj.csv", "--save-adv", "adv.safetensors", "--resume", "R"], tmp_path)
    _wait_for_rows(proc, 11)  # the second batch's rows are out: mid-run
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    line = _one_line(stderr)
    assert "--resume R" in line and "rerun the same command" in line
    assert not (tmp_path / "traj.csv").exists() and not (tmp_path / "adv.safetensors").exists()
    saved = sorted(p.name for p in (tmp_path / "R").glob("batch-*.safetensors"))
    assert 2 <= len(saved) < 12, saved  # finished batches kept, not all of them

    again = subprocess.run([FLATROB, *RUN, *outputs, "traj.csv", "--save-adv", "adv.safetensors", "--resume", "R"],
                           capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           timeout=120)
    assert again.returncode == 0, again.stderr
    full_stdout, full_stderr = full.communicate(timeout=120)
    assert full.returncode == 0, full_stderr
    assert again.stdout == full_stdout
    assert (tmp_path / "traj.csv").read_bytes() == (tmp_path / "full-traj.csv").read_bytes()
    assert (tmp_path / "adv.safetensors").read_bytes() == (tmp_path / "full.safetensors").read_bytes()


SMALL = ["attack", EXAMPLE, "--limit", "30", "--batch-size", "10", "--steps", "3", "--format", "json", "--per-sample"]


def test_resume_after_a_partial_run_gives_the_same_json(tmp_path, monkeypatch):
    full = invoke(*SMALL)
    assert full.exit_code == 0
    log = _signal_during_batch(monkeypatch, signal.SIGTERM, on_call=2)
    res = invoke(*SMALL, "--resume", tmp_path / "R")
    assert res.exit_code == 143 and log == ["start", "done", "start", "done"]
    assert len(list((tmp_path / "R").glob("batch-*"))) == 2
    monkeypatch.undo()
    res = invoke(*SMALL, "--resume", tmp_path / "R")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == full.stdout
    assert "resumed: 2 finished batch" in res.stderr


@pytest.mark.parametrize(
    "change, setting",
    [(["--eps", "0.1"], "eps"), (["--seed", "1"], "seed"), (["--batch-size", "5"], "batch_size"),
     (["--limit", "20"], "samples"), (["--norm", "l2"], "norm"), (["--scale", "2"], "scale")],
)
def test_different_settings_are_refused_naming_the_setting(tmp_path, change, setting):
    assert invoke(*SMALL, "--resume", tmp_path / "R").exit_code == 0
    args = list(SMALL)
    for opt, value in zip(change[::2], change[1::2]):
        if opt in args:
            args[args.index(opt) + 1] = value
        else:
            args += [opt, value]
    res = invoke(*args, "--resume", tmp_path / "R", "--output", tmp_path / "out.json")
    assert res.exit_code == 2
    line = _one_line(res.stderr)
    assert f"{setting} was" in line and "different settings" in line
    assert not (tmp_path / "out.json").exists()


def test_resume_refuses_a_directory_that_is_not_its_own(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    assert "not a flatrob resume directory" in _one_line(invoke(*SMALL, "--resume", tmp_path / "stuff").stderr)
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line(invoke(*SMALL, "--resume", tmp_path / "file").stderr)
    assert "does not exist" in _one_line(invoke(*SMALL, "--resume", tmp_path / "no" / "dir").stderr)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("[" * 10000)
    assert "unreadable" in _one_line(invoke(*SMALL, "--resume", tmp_path / "bad").stderr)


def _recorded(directory) -> dict:
    """File name -> the checksum the store recorded last for it."""
    lines = (line.split("  ") for line in (directory / "batches.sha256").read_text().splitlines())
    return {name: digest for digest, name in lines}


def test_a_damaged_batch_file_is_recomputed_and_written_again(tmp_path):
    full = invoke(*SMALL)
    assert invoke(*SMALL, "--resume", tmp_path / "R").exit_code == 0
    batch = tmp_path / "R" / "batch-000001.safetensors"
    batch.write_bytes(b"garbage")
    res = invoke(*SMALL, "--resume", tmp_path / "R")
    assert res.exit_code == 0 and res.stdout == full.stdout
    assert "batch-000001.safetensors did not match the checksum" in res.stderr
    assert _recorded(tmp_path / "R")[batch.name] == hashlib.sha256(batch.read_bytes()).hexdigest()  # rewritten
    again = invoke(*SMALL, "--resume", tmp_path / "R")
    assert again.stdout == full.stdout and "resumed: 3 finished batch" in again.stderr and "checksum" not in again.stderr


@pytest.mark.parametrize("tamper", ["missing key", "wrong shape"])
def test_a_tampered_batch_is_detected_by_its_checksum_and_recomputed(tmp_path, tamper):
    """A batch that still loads but says something else (a key dropped, a tensor cut short) is not trusted."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    full = invoke(*SMALL)
    assert invoke(*SMALL, "--resume", tmp_path / "R").exit_code == 0
    batch = tmp_path / "R" / "batch-000001.safetensors"
    with safe_open(str(batch), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if tamper == "missing key":
        del tensors["m.loss"]
    else:
        tensors["m.loss"] = tensors["m.loss"][:, :3].contiguous()
    save_file(tensors, str(batch), metadata=meta)
    res = invoke(*SMALL, "--resume", tmp_path / "R")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == full.stdout and "batch-000001.safetensors did not match the checksum" in res.stderr


def test_a_batch_whose_checksum_was_forged_but_is_unreadable_names_the_file(tmp_path):
    assert invoke(*SMALL, "--resume", tmp_path / "R").exit_code == 0
    batch = tmp_path / "R" / "batch-000002.safetensors"
    batch.write_bytes(b"not a batch")
    with open(tmp_path / "R" / "batches.sha256", "a") as handle:
        handle.write(f"{hashlib.sha256(batch.read_bytes()).hexdigest()}  {batch.name}\n")
    res = invoke(*SMALL, "--resume", tmp_path / "R", "--output", tmp_path / "out.json")
    assert res.exit_code == 2
    assert "batch-000002.safetensors has its recorded checksum but is not a batch" in _one_line(res.stderr)
    assert not (tmp_path / "out.json").exists()


DETECT = ["detect", EXAMPLE, "--limit", "60", "--batch-size", "10", "--steps", "3", "--format", "json", "--per-sample"]


def test_detect_resume_after_sigterm_gives_the_same_json(tmp_path, monkeypatch):
    from flatcli.runs.detect_scores import Scorer

    full = invoke(*DETECT)
    assert full.exit_code == 0, full.stderr
    real = Scorer.__call__
    calls = {"n": 0}

    def score(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the clean scores of the second batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(Scorer, "__call__", score)
    res = invoke(*DETECT, "--resume", tmp_path / "R", "--output", tmp_path / "out.json")
    assert res.exit_code == 143
    assert "--resume" in _one_line(res.stderr) and not (tmp_path / "out.json").exists()
    assert calls["n"] == 4  # the second batch was finished (clean and adversarial scores), no third
    assert len(list((tmp_path / "R").glob("batch-*"))) == 2
    monkeypatch.undo()
    res = invoke(*DETECT, "--resume", tmp_path / "R")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == full.stdout
    # fitting settings are not part of the resume identity: another method reuses the adversarials
    other = invoke(*DETECT, "--method", "components", "--resume", tmp_path / "R")
    assert other.exit_code == 0 and "resumed: 6 finished batch" in other.stderr
    assert other.stdout == invoke(*DETECT, "--method", "components").stdout
    refused = invoke(*DETECT, "--eps", "0.2", "--resume", tmp_path / "R")
    assert "eps was" in _one_line(refused.stderr)
    # the features are: the stored batches hold no curvature profile
    refused = invoke(*DETECT, "--method", "profile", "--resume", tmp_path / "R")
    assert "probe was unset" in _one_line(refused.stderr)
    refused = invoke("attack", EXAMPLE, "--limit", "60", "--resume", tmp_path / "R")
    assert "flatrob detect" in _one_line(refused.stderr)


def test_detect_resume_needs_something_to_craft(tmp_path):
    adv = tmp_path / "adv.safetensors"
    assert invoke("attack", EXAMPLE, "--limit", "10", "--steps", "1", "--save-adv", adv).exit_code == 0
    res = invoke("detect", EXAMPLE, "--limit", "10", "--adversarial", adv, "--resume", tmp_path / "R")
    assert "--resume" in _one_line(res.stderr) and not (tmp_path / "R").exists()


SWEEP = ["sweep-scale", EXAMPLE, "--limit", "40", "--batch-size", "10", "--steps", "3", "--attack-steps", "2",
         "--scales", "0.5,2", "--format", "json", "--per-sample"]


def test_sweep_resume_after_sigint_gives_the_same_json(tmp_path, monkeypatch):
    import flatcli.runs.sweep as sweep

    full = invoke(*SWEEP)
    assert full.exit_code == 0, full.stderr
    real = sweep._sweep_batch
    calls = {"n": 0}

    def sweep_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "_sweep_batch", sweep_batch)
    res = invoke(*SWEEP, "--resume", tmp_path / "R", "--output", tmp_path / "out.json")
    assert res.exit_code == 130 and calls["n"] == 2
    assert "--resume" in _one_line(res.stderr) and not (tmp_path / "out.json").exists()
    monkeypatch.undo()
    res = invoke(*SWEEP, "--resume", tmp_path / "R")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == full.stdout
    assert "resumed: 1 finished batch" in res.stderr  # the signal stopped batch 2 between its attacks
    refused = invoke(*SWEEP, "--takeoff", "0.2", "--resume", tmp_path / "R")
    assert "takeoff_tau was" in _one_line(refused.stderr)


def test_ctrl_c_while_reading_data_is_an_interrupt_not_a_data_error(tmp_path, monkeypatch):
    """Outside a batch loop the signal stops at once, and no `except Exception` turns it into exit 2."""
    import safetensors.torch

    from flatcli.inputs.data.tensors import save_tensors

    data = tmp_path / "d.safetensors"
    save_tensors(data, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64), torch.arange(4))

    def load_file(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal should have stopped the read")

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    res = invoke("attack", EXAMPLE, "--data", f"tensors:{data}", "--steps", "1", "--output", tmp_path / "o.json")
    assert res.exit_code == 130
    assert "SIGINT" in _one_line(res.stderr)
    assert not (tmp_path / "o.json").exists()


def test_torchrun_ranks_stop_together_and_resume_matches_one_process(tmp_path):
    """Under torchrun every rank stops in the same round; the resumed run equals one uninterrupted process."""
    args = [*RUN, "--format", "jsonl", "--per-sample", "--device", "cpu", "--resume", "R", "--output", "out.jsonl"]
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "flatcli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "R").glob("batch-*"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.count("Error: interrupted by SIGINT (Ctrl-C) at a batch boundary") == 2, stderr[-2000:]
    assert "unexpected failure" not in stderr
    assert not (tmp_path / "out.jsonl").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    single = subprocess.run([FLATROB, *RUN, "--format", "jsonl", "--per-sample", "--device", "cpu"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert (tmp_path / "out.jsonl").read_text() == single.stdout


def test_save_adv_can_be_added_when_resuming(tmp_path):
    """Adversarials are kept in DIR even without --save-adv, so a rerun may ask for them."""
    assert invoke(*SMALL, "--resume", tmp_path / "R").exit_code == 0
    res = invoke(*SMALL, "--resume", tmp_path / "R", "--save-adv", tmp_path / "resumed.safetensors")
    assert res.exit_code == 0 and "resumed: 3 finished batch" in res.stderr
    assert invoke(*SMALL, "--save-adv", tmp_path / "fresh.safetensors").exit_code == 0
    assert (tmp_path / "resumed.safetensors").read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()


# ---------------------------------------------------------------- issue 24: the resume store is an output


def _digits_tensors(path, invert: bool = False, n: int = 30):
    from safetensors.torch import save_file

    from flatcli.inputs.data import load_data

    ds = load_data("digits", limit=n)
    save_file({"x": (1 - ds.x if invert else ds.x).contiguous(), "y": ds.y.contiguous()}, str(path))


ON_FILE = ["attack", EXAMPLE, "--batch-size", "10", "--steps", "3", "--format", "json"]


@pytest.mark.parametrize("name", ["batch-000000.safetensors", "batches.sha256", "manifest.json"])
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_linked_file_in_the_store_is_refused_and_its_target_untouched(tmp_path, name, how):
    """Case 1: a store file linked to the checkpoint (or a text file) is never read, replaced or appended to."""
    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(Path(EXAMPLE_FILE).read_bytes())
    args = [*ON_FILE, "--limit", "20"]
    args[1] = str(ckpt)
    assert invoke(*args, "--resume", tmp_path / "R").exit_code == 0
    target = ckpt if name.endswith(".safetensors") else tmp_path / "notes.txt"  # text: readable as a list
    target.write_text("my notes\n") if target != ckpt else None
    (tmp_path / "R" / name).unlink()
    (tmp_path / "R" / name).symlink_to(target) if how == "symlink" else os.link(target, tmp_path / "R" / name)
    before = target.read_bytes()
    res = invoke(*args, "--resume", tmp_path / "R", "--output", tmp_path / "out.json")
    assert res.exit_code == 2 and name in _one_line(res.stderr)
    assert target.read_bytes() == before and not (tmp_path / "out.json").exists()


def test_a_store_inside_the_data_folder_is_refused(tmp_path):
    """Case 3 (one checkpoint): ``--resume`` inside a ``folder:`` input would add a class to it."""
    from PIL import Image

    for cls in ("0", "1"):
        (tmp_path / "D" / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 50).save(tmp_path / "D" / cls / "a.png")
    res = invoke(*ON_FILE, "--data", f"folder:{tmp_path / 'D'}", "--resume", tmp_path / "D" / "R")
    assert res.exit_code == 2 and "lies inside the --data directory" in _one_line(res.stderr)
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["0", "1"]


def test_changed_images_are_computed_afresh_not_read_from_the_store(tmp_path):
    """Case 5: same labels and indices, other pixels: the stored batches are not reused."""
    data = tmp_path / "d.safetensors"
    _digits_tensors(data)
    args = [*ON_FILE, "--data", f"tensors:{data}"]
    assert invoke(*args, "--resume", tmp_path / "R").exit_code == 0
    _digits_tensors(data, invert=True)
    fresh = invoke(*args)
    resumed = invoke(*args, "--resume", tmp_path / "R")
    assert resumed.exit_code == 0 and "resumed:" not in resumed.stderr
    assert json.loads(resumed.stdout)["summary"] == json.loads(fresh.stdout)["summary"]
    again = invoke(*args, "--resume", tmp_path / "R")  # the store now holds the new batches
    assert "resumed: 3 finished batch" in again.stderr and again.stdout == resumed.stdout
