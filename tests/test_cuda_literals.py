"""Device-agnostic code: no ``.cuda()`` call and no ``"cuda"`` device literal outside the device helper
(``flatcli/runtime/device.py``), so every CUDA path is the CPU path on another device."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "flatcli" / "runtime" / "device.py"
LITERAL = re.compile(r"""\.cuda\(|device\s*=\s*["']cuda|torch\.device\(\s*["']cuda""")


def test_no_cuda_literal_outside_the_device_helper():
    files = [p for folder in ("flatcli", "bench", "scripts", "tests") for p in (ROOT / folder).rglob("*.py")]
    files.append(ROOT / "scripts" / "gpu-check")
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files if p not in (HELPER, Path(__file__).resolve())
             for n, line in enumerate(p.read_text().splitlines(), 1) if LITERAL.search(line)]
    assert not found, "use flatcli.runtime.device (resolve_device) instead:\n" + "\n".join(found)
    assert LITERAL.search('x = y.cuda()') and LITERAL.search('torch.device("cuda:0")') and LITERAL.search("device='cuda'")
