"""``scripts/gpu-check`` on a machine without CUDA says so and succeeds; the CUDA tests are collected and skipped."""

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
