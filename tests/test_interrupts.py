"""SIGINT/SIGTERM stop at the next batch boundary: no partial file, exit 130/143, one line on resuming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flatcli import interrupts
from tests.conftest import EXAMPLE, invoke

FLATROB = str(Path(sys.executable).with_name("flatrob"))


def _one_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _signal_during_batch(monkeypatch, signum: int, on_call: int = 2, times: int = 1) -> list[str]:
    """Send ``signum`` to this process ``times`` times while batch ``on_call`` of the attack is computed."""
    import flatcli.trajectory as trajectory

    real = trajectory._attack_batch
    log: list[str] = []

    def attack_batch(*args, **kwargs):
        n = sum(1 for e in log if e == "start") + 1
        log.append("start")
        if n == on_call:
            for _ in range(times):
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


def test_second_signal_stops_at_once(monkeypatch, tmp_path):
    log = _signal_during_batch(monkeypatch, signal.SIGINT, times=2)
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
