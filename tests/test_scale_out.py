"""Scale-out: torchrun sharding gives the one-process result; reduced precision stays close."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, TORCHRUN


def torchrun_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "flatcli", *args, "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def close(a, b, rel=1e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k], rel)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y, rel)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-12)
    else:
        assert a == b


def test_torchrun_sharpness_equals_one_process(cli, tmp_path):
    args = ["sharpness", EXAMPLE, "--format", "json", "--per-sample", "--limit", "101", "--batch-size", "16",
            "--hutchinson", "4", "--device", "cpu"]
    dist = torchrun_json(tmp_path, *args)
    single = json.loads(cli(*args).stdout)
    assert [r["index"] for r in dist["samples"]] == [r["index"] for r in single["samples"]]
    close(single["samples"], dist["samples"])
    close(single["summary"], dist["summary"])


def test_torchrun_attack_equals_one_process(cli, tmp_path):
    args = ["attack", EXAMPLE, "--format", "json", "--per-sample", "--limit", "37", "--batch-size", "8",
            "--norm", "linf", "--eps", "0.1", "--alpha", "0.02", "--steps", "4", "--random-start", "--device", "cpu"]
    dist = torchrun_json(tmp_path, *args)
    single = json.loads(cli(*args).stdout)
    assert [r["index"] for r in dist["samples"]] == [r["index"] for r in single["samples"]]
    close(single["samples"], dist["samples"])
    close(single["summary"], dist["summary"])


def test_torchrun_detect_every_method_and_the_adaptive_check_equal_one_process(cli, tmp_path):
    args = ["detect", EXAMPLE, "--format", "json", "--per-sample", "--limit", "37", "--batch-size", "8",
            "--eps", "0.3", "--alpha", "0.1", "--steps", "3", "--folds", "2", "--method", "all", "--adaptive",
            "--probe-steps", "1", "--device", "cpu"]
    dist = torchrun_json(tmp_path, *args)
    single = json.loads(cli(*args).stdout)
    close(single["samples"], dist["samples"])
    close(single["summary"], dist["summary"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_close_to_fp32(cli, precision):
    def summary(p):
        res = cli("sharpness", EXAMPLE, "--format", "json", "--precision", p, "--device", "cpu")
        assert res.exit_code == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["config"]["precision"] == p
        return doc["summary"]

    ref, low = summary("fp32"), summary(precision)
    for m in ("trace_h", "relative_sharpness", "relative_flatness_full", "feature_norm"):
        assert low[m]["mean"] == pytest.approx(ref[m]["mean"], rel=1e-2), m
