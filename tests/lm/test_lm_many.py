"""Several language-model checkpoints per call (sharpness, attack --attack gcg), and torchrun over prompts."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import flatcli.api as fr
from flatcli.models.kinds.hf_folder import weight_files
from flatcli.runs.many import file_sha256
from tests.conftest import TORCHRUN, invoke

from .conftest import tiny_llama


def weights_sha256(folder) -> str:
    """The digest :func:`flatcli.runs.many.plan_checkpoints` gives a language model's folder."""
    return file_sha256(*weight_files(folder))


GCG = ("--attack", "gcg", "--steps", 1, "--search-width", 4, "--topk", 4, "--suffix-length", 2, "--chat-template",
       "none")


@pytest.fixture(scope="module")
def two(lm_folders, tokenizer, tmp_path_factory):
    """Two folders of the same tiny Llama architecture, seeds 0 and 1."""
    other = tmp_path_factory.mktemp("seed1") / "seed1"
    tiny_llama(len(tokenizer), seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    return [str(lm_folders["single"]), str(other)]


def test_sharpness_of_several_language_models_is_each_ones_result(two, prompts_csv):
    data = f"prompts:{prompts_csv}"
    many = fr.sharpness(two, data, chat_template="none")
    assert [s["summary"] for s in many.summaries] == [fr.sharpness(m, data, chat_template="none").summary for m in two]
    assert many.summaries[0]["summary"] != many.summaries[1]["summary"]
    assert [r["checkpoint"] for r in many.samples] == [two[0]] * 3 + [two[1]] * 3
    res = invoke("sharpness", *two, "--data", data, "--chat-template", "none")
    assert res.exit_code == 0 and "sharpness mean" in res.stdout and "seed1" in res.stdout


def test_gcg_on_several_checkpoints_writes_each_trajectory_and_keeps_each_store(two, prompts_csv, tmp_path):
    args = ("attack", *two, "--data", f"prompts:{prompts_csv}", "--limit", 2, *GCG, "-f", "json",
            "--trajectory", tmp_path / "t-{index}.jsonl", "--resume", tmp_path / "R")
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [s["checkpoint"] for s in doc["summaries"]] == two and all(s["error"] is None for s in doc["summaries"])
    for i, summary in enumerate(doc["summaries"]):
        rows = [json.loads(line) for line in (tmp_path / f"t-{i}.jsonl").read_text().splitlines()]
        assert [(r["sample"], r["step"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert summary["summary"]["final_loss_mean"] == pytest.approx(
            sum(r["loss"] for r in rows if r["step"] == 1) / 2, rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "R").iterdir()) == sorted(weights_sha256(m)[:16] for m in two)
    again = invoke(*args)
    assert again.exit_code == 0 and again.stdout == res.stdout
    table = invoke("attack", *two, "--data", f"prompts:{prompts_csv}", "--limit", 1, *GCG)
    assert table.exit_code == 0 and "final loss" in table.stdout and "success rate" in table.stdout


def test_a_failing_checkpoint_is_reported_and_fail_fast_writes_nothing(two, prompts_csv, tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text(f"{two[0]}\n{tmp_path / 'absent'}\n")
    out = tmp_path / "out.json"
    base = ("sharpness", "--checkpoints-from", listed, "--data", f"prompts:{prompts_csv}", "-f", "json", "-o", out)
    res = invoke(*base)
    assert res.exit_code == 2 and "absent" in res.stderr
    doc = json.loads(out.read_text())
    assert doc["summaries"][0]["summary"]["n"] == 3 and "absent" in doc["summaries"][1]["error"]
    out.unlink()
    res = invoke(*base, "--fail-fast")
    assert res.exit_code == 2 and not out.exists()


def test_sharded_folders_have_their_own_weights_hash(lm_folders):
    hashes = {name: weights_sha256(folder) for name, folder in lm_folders.items()}
    assert None not in hashes.values() and len(set(hashes.values())) == 3


def test_torchrun_shares_the_prompts_and_writes_the_one_process_result(lm_folders, prompts_csv, tmp_path):
    args = ["attack", str(lm_folders["single"]), "--data", f"prompts:{prompts_csv}", *map(str, GCG), "-f", "json",
            "--per-sample", "--device", "cpu"]
    single = invoke(*args, "--trajectory", tmp_path / "one.jsonl")
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "flatcli", *args, "-o", "d.json",
                           "--trajectory", "two.jsonl"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist, one = json.loads((tmp_path / "d.json").read_text()), json.loads(single.stdout)
    assert dist["summary"] == one["summary"] and dist["samples"] == one["samples"]  # 3 prompts: rank 1 takes 1
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
