"""The CUDA paths (``pytest -m cuda``; skipped without a CUDA device, run by ``scripts/gpu-check``): model and
data on the device, every command once against the CPU's numbers, bf16/fp16 and channels-last, torchrun with
NCCL on the GPUs present, and many checkpoints giving their GPU memory back."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import EXAMPLE, TORCHRUN, invoke

pytestmark = pytest.mark.cuda

COMMON = ["--limit", "64", "--batch-size", "32", "--format", "json"]
ATTACK = ["--eps", "0.2", "--alpha", "0.05", "--steps", "5"]
#: Every data-parallel command once: (args, summary keys compared with the CPU run). cuDNN may run convolutions
#: in TF32, and a sign step may flip a pixel, so continuous measures agree to 2% and rates to 3 of the 64 inputs.
COMMANDS = {
    "sharpness": (["sharpness", EXAMPLE, "--layers", "conv2"], ["relative_sharpness.mean", "accuracy"]),
    "attack": (["attack", EXAMPLE, *ATTACK], ["clean_accuracy", "robust_accuracy", "adv_sharpness.mean"]),
    "sweep-scale": (["sweep-scale", EXAMPLE, "--scales", "1,10", "--steps", "5", "--attack-steps", "3"],
                    ["scales.0.sharpness_mean", "scales.0.robust_accuracy", "scales.1.transfer_accuracy"]),
    "bound": (["bound", EXAMPLE, "--epsilon", "0.1", "--check", "--check-steps", "3"], ["kappa", "r", "accuracy"]),
    "detect": (["detect", EXAMPLE, *ATTACK, "--method", "components", "--folds", "2"], ["accuracy_mean"]),
}
RATES = ("accuracy", "robust_accuracy", "clean_accuracy", "transfer_accuracy", "accuracy_mean")


def gpu():
    """The CUDA device, named through the device helper (the only place CUDA is spelt out)."""
    from flatcli.runtime.device import resolve_device

    return resolve_device("cuda")


def _at(summary: dict, key: str):
    for part in key.split("."):
        summary = summary[int(part)] if isinstance(summary, list) else summary[part]
    return summary


def _json(*args: str) -> dict:
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_on_cuda_matches_the_cpu(command):
    args, keys = COMMANDS[command]
    on_gpu = _json(*args, *COMMON, "--device", "cuda")
    cpu = _json(*args, *COMMON, "--device", "cpu")
    assert on_gpu["config"]["device"].startswith("cuda")
    for key in keys:
        a, b = _at(cpu["summary"], key), _at(on_gpu["summary"], key)
        rate = key.split(".")[-1] in RATES
        assert b == (pytest.approx(a, abs=3 / 64) if rate else pytest.approx(a, rel=2e-2)), key


def test_model_and_every_batch_live_on_the_device():
    from flatcli.api import _context
    from flatcli.runtime.loop import each_batch

    ctx = _context(EXAMPLE, "digits", limit=70, batch_size=32, device=gpu())
    assert all(p.device.type == "cuda" for p in ctx.loaded.model.parameters())
    seen = list(each_batch(ctx, lambda b: (b.x.device.type, b.y.device.type, b.x.shape[0])))
    assert seen == [("cuda", "cuda", 32), ("cuda", "cuda", 32), ("cuda", "cuda", 6)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reduced_precision_and_channels_last_on_cuda(precision, channels_last):
    layout = ["--channels-last"] if channels_last else []
    ref = _json("sharpness", EXAMPLE, *COMMON, "--device", "cuda")
    low = _json("sharpness", EXAMPLE, *COMMON, "--device", "cuda", "--precision", precision, *layout)
    assert low["config"]["precision"] == precision and low["config"]["channels_last"] is channels_last
    for m in ("trace_h", "relative_sharpness", "feature_norm"):
        assert low["summary"][m]["mean"] == pytest.approx(ref["summary"][m]["mean"], rel=2e-2), m
    adv = _json("attack", EXAMPLE, *COMMON, *ATTACK, "--device", "cuda", "--precision", precision, *layout)
    assert 0 <= adv["summary"]["robust_accuracy"] <= adv["summary"]["clean_accuracy"]


def test_torchrun_nccl_on_every_gpu_equals_one_process(tmp_path):
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"NCCL across ranks needs 2 GPUs; {gpus} present")
    args = ["sharpness", EXAMPLE, EXAMPLE, "--format", "jsonl", "--limit", "101", "--batch-size", "16",
            "--device", "cuda"]
    out = tmp_path / "dist.jsonl"
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", str(gpus), "-m", "flatcli", *args,
                           "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = [json.loads(line) for line in invoke(*args).stdout.splitlines()]
    dist = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["checkpoint"], r["index"]) for r in dist] == [(r["checkpoint"], r["index"]) for r in single]
    for a, b in zip(single, dist):
        assert b["relative_sharpness"] == pytest.approx(a["relative_sharpness"], rel=1e-5)


def test_many_checkpoints_give_their_gpu_memory_back(tmp_path):
    import torch

    import flatcli.api as fr
    from bench.common import perturbed_copies

    paths = perturbed_copies(tmp_path, 4)
    fr.sharpness(paths[0], limit=64, device=gpu(), samples=False)  # warm up CUDA and the allocator
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    during = []
    result = fr.sharpness(paths, limit=64, batch_size=32, device=gpu(), samples=False,
                          progress=lambda done, total: during.append(torch.cuda.memory_allocated()))
    assert not result.errors and len(during) == 4 * 2
    assert max(during) - before < 2 * 1024**2 * 10  # one small model and a batch, never four
    assert torch.cuda.memory_allocated() - before < 1024**2  # nothing left behind
