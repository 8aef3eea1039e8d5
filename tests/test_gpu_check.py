"""``scripts/gpu-check`` on a machine without CUDA says so and succeeds; the CUDA tests are collected and skipped;
its language-model rows run on the CPU at a tiny size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_without_cuda_says_so_and_exits_0():
    script = ROOT / "scripts" / "gpu-check"
    assert os.access(script, os.X_OK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gpu-check: no CUDA device on this machine (CUDA_VISIBLE_DEVICES is empty)")
    assert "gpu-check: $(STAMP)" in (ROOT / "Makefile").read_text()


def test_language_model_rows_run_on_the_cpu_at_a_tiny_size():
    """``--lm-tiny``: the code of the 7B rows (bench/lm.py sharpness, bench/gcg.py vs nanoGCG) on a tiny Llama."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), "--lm-tiny"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = proc.stdout.splitlines()
    assert any(r.startswith("llama-tiny sharpness") and "x" in r and "peak RSS" in r for r in rows)
    assert any(r.startswith("llama-tiny gcg step") and "flatrob, prefix cache" in r and "s/step" in r for r in rows)
    assert sum(r.startswith("(llama-tiny") and " exit 0 " in r for r in rows) == 2
