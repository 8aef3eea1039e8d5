"""`attack --attack gcg --resume DIR`: finished prompts are kept; an interrupted run continues to the same result."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import assert_one_error, invoke


def gcg_args(folder, prompts_csv, *more):
    return ["attack", folder, "--attack", "gcg", "--data", f"prompts:{prompts_csv}", "--steps", 2, "--search-width", 6,
            "--topk", 4, "--suffix-length", 2, "--chat-template", "none", "-f", "json", "--per-sample", *more]


def signal_at_prompt(monkeypatch, number: int, signum=signal.SIGTERM) -> list[int]:
    """Send ``signum`` to this process as GCG starts on prompt ``number`` (its generator is drawn then)."""
    import flatcli.runs.lm_attack as lm_attack

    real, started = lm_attack.prompt_generator, []

    def generator(seed, index):
        started.append(index)
        if index == number:
            os.kill(os.getpid(), signum)
        return real(seed, index)

    monkeypatch.setattr(lm_attack, "prompt_generator", generator)
    return started


def test_an_interrupted_gcg_run_resumes_to_the_uninterrupted_result(lm_folders, prompts_csv, tmp_path, monkeypatch):
    args = gcg_args(lm_folders["single"], prompts_csv, "--limit", 2)
    store, trajectory = tmp_path / "R", tmp_path / "gcg.jsonl"
    full = invoke(*args, "--trajectory", trajectory)
    assert full.exit_code == 0, full.output
    trajectory.rename(tmp_path / "full.jsonl")
    started = signal_at_prompt(monkeypatch, 1)
    res = invoke(*args, "--resume", store, "--trajectory", trajectory)
    assert res.exit_code == 143 and started == [0, 1]  # stopped inside prompt 1, after its first step
    assert "SIGTERM" in res.stderr and f"--resume {store}" in res.stderr
    assert sorted(p.name for p in store.glob("batch-*")) == ["batch-000000.safetensors"]
    assert not trajectory.exists()
    monkeypatch.undo()
    started = signal_at_prompt(monkeypatch, -1)
    res = invoke(*args, "--resume", store, "--trajectory", trajectory)
    assert res.exit_code == 0, res.output
    assert started == [1]  # prompt 0 was read from the store
    assert res.stdout == full.stdout
    assert trajectory.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert "resumed: 1 finished batch" in res.stderr


@pytest.mark.parametrize("change, setting", [(("--search-width", 5), "search_width"), (("--seed", 1), "seed"),
                                             (("--chat-template", "vicuna"), "chat_template"),
                                             (("--limit", 2), "prompts")])
def test_other_settings_are_refused_naming_the_setting(lm_folders, prompts_csv, tmp_path, change, setting):
    args = gcg_args(lm_folders["single"], prompts_csv, "--limit", 3, "--steps", 1)
    assert invoke(*args, "--resume", tmp_path / "R").exit_code == 0
    args += change  # the last of a repeated option wins
    assert_one_error(invoke(*args, "--resume", tmp_path / "R"), f"{setting} was", "different settings")


def test_another_model_or_changed_prompts_are_refused(lm_folders, prompts_csv, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(prompts_csv.read_text())
    args = gcg_args(lm_folders["single"], prompts, "--steps", 1)
    assert invoke(*args, "--resume", tmp_path / "R").exit_code == 0
    other = gcg_args(lm_folders["tied"], prompts, "--steps", 1)
    assert_one_error(invoke(*other, "--resume", tmp_path / "R"), "model_sha256 was")
    prompts.write_text(prompts.read_text().replace("story", "poem"))
    assert_one_error(invoke(*args, "--resume", tmp_path / "R"), "prompts_sha256 was")
