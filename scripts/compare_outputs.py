#!/usr/bin/env python3
"""Record the outputs of every command on the demo's settings, or compare them with a recording.

A refactoring that changes no number must leave these documents identical, except the ``versions``
entries (which name the installed library versions)::

    python scripts/compare_outputs.py record /tmp/before     # on the old code
    python scripts/compare_outputs.py compare /tmp/before    # on the new code: exit 1 on any difference

Every case runs the installed ``flatrob`` in a subprocess, in a scratch directory, so the old and the new
code are driven the same way. JSON documents are compared as data (``versions`` removed wherever it
appears); every other file a case writes (trajectory CSV, adversarial safetensors, detector JSON) is
compared byte for byte after the same removal for JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = "example:digits-cnn"
ATTACK = ["--norm", "linf", "--eps", "0.3", "--alpha", "0.03", "--steps", "20"]
SWEEP = ["--scales", "1,10,100", "--limit", "60", "--eps", "1", "--alpha", "0.1", "--steps", "10",
         "--attack-eps", "0.1", "--attack-alpha", "0.025"]

#: name -> (arguments of flatrob, files the case writes besides stdout). Cases run in order in one
#: directory, so a later case may read what an earlier one wrote.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "inspect": (["inspect", EXAMPLE, "--format", "json"], []),
    "sharpness": (["sharpness", EXAMPLE, "--hutchinson", "20", "--format", "json", "--per-sample"], []),
    "sharpness-layers": (["sharpness", EXAMPLE, "--hutchinson", "4", "--layers", "conv2,conv3", "--scale", "2",
                          "--weight-norm", "plain", "--format", "json"], []),
    "sharpness-jsonl": (["sharpness", EXAMPLE, "--limit", "40", "--format", "jsonl", "--no-scale-bias",
                         "--scale", "3"], []),
    "attack": (["attack", EXAMPLE, *ATTACK, "--format", "json", "--per-sample", "--trajectory", "traj.csv",
                "--save-adv", "adv.safetensors"], ["traj.csv", "adv.safetensors"]),
    "attack-restarts": (["attack", EXAMPLE, "--preset", "basin", "--random-start", "--restarts", "2",
                         "--targeted", "least-likely", "--limit", "50", "--batch-size", "16", "--format", "csv"], []),
    "attack-l2-targeted": (["attack", EXAMPLE, "--norm", "l2", "--eps", "1", "--alpha", "0.2", "--steps", "5",
                            "--targeted", "3", "--scale", "5", "--format", "json", "--trajectory", "traj.jsonl"],
                           ["traj.jsonl"]),
    "bound-numbers": (["bound", "--kappa", "0.8", "--lipschitz", "12", "--r", "3.1", "--classes", "10",
                       "--features", "512", "--epsilon", "0.01,0.1,1", "--format", "json"], []),
    "bound-checkpoint": (["bound", EXAMPLE, "--epsilon", "0.1", "--limit", "32", "--local-iters", "20", "--check",
                          "--format", "json", "--per-sample"], []),
    "bound-local": (["bound", EXAMPLE, "--epsilon", "0.1,1", "--lipschitz", "local", "--limit", "20",
                     "--at-minimum", "--format", "csv"], []),
    "sharpness-for-bound": (["sharpness", EXAMPLE, "--format", "json", "-o", "sharp.json"], ["sharp.json"]),
    "bound-from-json": (["bound", "--from-json", "sharp.json", "--lipschitz", "12", "--epsilon", "0.1",
                         "--format", "json"], []),
    "detect": (["detect", EXAMPLE, *ATTACK, "--method", "components", "--format", "json", "--per-sample",
                "--save", "det.json", "--save-adv", "detadv.safetensors"], ["det.json", "detadv.safetensors"]),
    "detect-stump": (["detect", EXAMPLE, "--eps", "0.1", "--steps", "5", "--alpha", "0.03", "--only-successful",
                      "--score", "trace_h", "--format", "json"], []),
    "detect-apply": (["detect", EXAMPLE, "--detector", "det.json", "--format", "json", "--per-sample"], []),
    "detect-adversarial": (["detect", EXAMPLE, "--adversarial", "adv.safetensors", "--format", "json"], []),
    "sweep": (["sweep-scale", EXAMPLE, *SWEEP, "--format", "json", "--per-sample"], []),
    "sweep-csv": (["sweep-scale", EXAMPLE, "--scales", "0.5,2", "--limit", "30", "--no-attack-each-scale",
                   "--random-start", "--format", "csv"], []),
}


def strip_versions(value):
    """``value`` without any ``versions`` entry, at any depth."""
    if isinstance(value, dict):
        return {k: strip_versions(v) for k, v in value.items() if k != "versions"}
    if isinstance(value, list):
        return [strip_versions(v) for v in value]
    return value


def normalised(name: str, data: bytes) -> object:
    """What is compared: JSON as data without versions, other text/bytes as they are."""
    if name.endswith(".json") or name == "stdout":
        try:
            return strip_versions(json.loads(data))
        except ValueError:
            return data
    return data


def flatrob() -> str:
    exe = Path(sys.executable).with_name("flatrob")
    return str(exe) if exe.exists() else "flatrob"


def run_cases(directory: Path) -> dict[str, dict[str, bytes]]:
    """Run every case in ``directory``; per case, its stdout and the files it wrote."""
    results: dict[str, dict[str, bytes]] = {}
    env = {**os.environ, "FLATROB_DEBUG": "0"}
    for name, (args, files) in CASES.items():
        proc = subprocess.run([flatrob(), *args], cwd=directory, capture_output=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: flatrob {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        results[name] = {"stdout": proc.stdout, **{f: (directory / f).read_bytes() for f in files}}
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, target = argv[0], Path(argv[1])
    with tempfile.TemporaryDirectory() as scratch:
        results = run_cases(Path(scratch))
    if mode == "record":
        if target.exists():
            shutil.rmtree(target)
        for name, outputs in results.items():
            (target / name).mkdir(parents=True)
            for file, data in outputs.items():
                (target / name / file).write_bytes(data)
        print(f"recorded {len(results)} cases in {target}")
        return 0
    differences = []
    for name, outputs in results.items():
        for file, data in outputs.items():
            old = target / name / file
            if not old.exists():
                differences.append(f"{name}/{file}: not in the recording")
            elif normalised(file, old.read_bytes()) != normalised(file, data):
                differences.append(f"{name}/{file}: differs")
    for line in differences:
        print(line)
    print(f"{len(results)} cases, {len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
