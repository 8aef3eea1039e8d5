"""A small file or option must not exhaust the machine: each case is refused (exit 2) within 10 s and 1 GiB.

The cases run in one subprocess, one after the other through the real command tree, after torch and the
CLI are imported (their import is not what is measured). Before the first case the process's data limit
(``RLIMIT_DATA``: heap and private mappings, where every tensor and Python object lives) is set to what it
uses then plus 1 GiB, so an allocation beyond that fails instead of swapping the machine, and each case has
a 10-second alarm: a hang (a directory link cycle) or an allocation (an 8 GB network from a 60 KB file)
shows up as a failed case, never as a stuck test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import save_file

from flatcli.inputs.checkpoint import read
from tests.conftest import EXAMPLE

SECONDS = 10
EXTRA_BYTES = 2**30

RUNNER = textwrap.dedent("""
    import contextlib, gc, io, json, resource, signal, sys, time
    import numpy, sklearn, torch, torchvision, typer
    from flatcli.cli.app import app
    import flatcli.api

    cases, seconds, extra = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    command = typer.main.get_command(app)
    used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra, resource.getrlimit(resource.RLIMIT_DATA)[1]))

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    results = {}
    for name, args in cases.items():
        err = io.StringIO()
        start = time.monotonic()
        signal.alarm(seconds)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = command.main(args, prog_name="flatrob", standalone_mode=False)
        except BaseException as exc:
            code = repr(exc)
        finally:
            signal.alarm(0)
        results[name] = {"code": code, "seconds": time.monotonic() - start, "stderr": err.getvalue()}
        gc.collect()
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("exhaustion")
    ck = read(EXAMPLE)
    spec = ck.metadata["flatrob.spec"]
    save_file(ck.state_dict, str(d / "wide.safetensors"),
              metadata={"flatrob.spec": spec.replace("width: 16", "width: 6000")})  # an 8 GB small-cnn
    save_file(ck.state_dict, str(d / "classes.safetensors"),
              metadata={"flatrob.spec": spec.replace("num_classes: 10", "num_classes: 100000000")})
    save_file(ck.state_dict, str(d / "proc.safetensors"),
              metadata={"flatrob.spec": spec.replace("data: digits", "data: folder:/proc")})
    from PIL import Image

    for name in ("big_class", "loop"):
        (d / name / "0").mkdir(parents=True)
        Image.new("L", (8, 8), 100).save(d / name / "0" / "a.png")
    (d / "big_class" / "100000000").mkdir()  # a class list of 10^8 names
    (d / "loop" / "0" / "up").symlink_to("..")  # os.walk(followlinks=True) never ends
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.save({"w": torch.zeros(1).expand(60000, 60000)}, d / "view.pt")  # 1.5 KB declaring 14 GB
    images = pa.DictionaryArray.from_arrays(pa.array([0] * 44000, pa.int32()), pa.array([bytes(100_000)]))
    pq.write_table(pa.table({"image": images, "label": pa.array([0] * 44000)}), d / "bomb.parquet",
                   compression="zstd")  # 1 KB decoding to 4.4 GB
    return d


def cases(d) -> dict[str, tuple[list[str], str]]:
    """case: (arguments, what the one error line must say: the refusal, not a failed allocation)."""
    attack = ["attack", EXAMPLE, "--limit", "4"]
    return {
        "arch_kwargs width 6000": (["sharpness", str(d / "wide.safetensors"), "--limit", "4"], "does not fit the model"),
        "num_classes 10^8": (["sharpness", str(d / "classes.safetensors"), "--limit", "4"], "does not fit the model"),
        "folder class named 100000000": (["sharpness", EXAMPLE, "--data", f"folder:{d / 'big_class'}"],
                                         "class directory named 100000000"),
        "folder with a .. link": (["sharpness", EXAMPLE, "--data", f"folder:{d / 'loop'}"], "link cycle"),
        "embedded data folder:/proc": (["sharpness", str(d / "proc.safetensors")], "lies on proc"),
        "--spec /dev/zero": (["inspect", EXAMPLE, "--spec", "/dev/zero"], "larger than the 64 KiB"),
        "--detector /dev/zero": (["detect", EXAMPLE, "--detector", "/dev/zero"], "larger than the 128 MiB"),
        "bound --from-json /dev/zero": (["bound", "--from-json", "/dev/zero", "-L", "3", "--epsilon", "0.1"],
                                        "larger than the 64 MiB"),
        "--eps 1e308": ([*attack, "--eps", "1e308"], "--eps must be"),
        "--alpha 1e308": ([*attack, "--alpha", "1e308"], "--alpha must be"),
        "--seed 2^70": (["sharpness", EXAMPLE, "--limit", "4", "--seed", str(2**70)], "--seed must be"),
        "--steps 10^9": ([*attack, "--steps", str(10**9)], "--steps must be"),
        "--restarts 10^9": ([*attack, "--random-start", "--restarts", str(10**9)], "--restarts must be"),
        "--hutchinson 10^12": (["sharpness", EXAMPLE, "--limit", "4", "--hutchinson", str(10**12)], "--hutchinson"),
        "--local-iters 10^9": (["bound", EXAMPLE, "--epsilon", "0.1", "--limit", "4", "--local-iters", str(10**9)],
                               "--local-iters must be"),
        "--check-steps 10^9": (["bound", EXAMPLE, "--epsilon", "0.1", "--limit", "4", "--check", "--check-steps",
                                str(10**9)], "--check-steps must be"),
        "--attack-steps 10^9": (["sweep-scale", EXAMPLE, "--limit", "4", "--attack-steps", str(10**9)],
                                "--attack-steps must be"),
        # issue 24 cases 8-10 (stdin is /dev/zero for every case)
        "--data tensors:- from /dev/zero": (["sharpness", EXAMPLE, "--data", "tensors:-", "--limit", "4"],
                                             "header claims 0 bytes"),
        "convert a stride-0 view of 60000 x 60000": (["convert", str(d / "view.pt"), str(d / "view.safetensors")],
                                                     "views 4 bytes"),
        "hf: parquet of one repeated value": (["sharpness", EXAMPLE, "--data", f"hf:{d / 'bomb.parquet'}"],
                                              "decodes to more than"),
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmData from /proc")
def test_every_exhaustion_case_is_refused_within_the_limits(hostile):
    todo = cases(hostile)
    with open("/dev/zero", "rb") as zero:  # stdin of every case: what an endless pipe gives
        res = subprocess.run([sys.executable, "-c", RUNNER, json.dumps({k: v[0] for k, v in todo.items()}),
                              str(SECONDS), str(EXTRA_BYTES)], capture_output=True, text=True, timeout=600,
                             cwd=hostile, stdin=zero, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout.splitlines()[-1])
    assert set(results) == set(todo)
    for name, r in results.items():
        lines = r["stderr"].splitlines()
        assert r["code"] == 2, (name, r)  # not a MemoryError or a timeout (exit 1 / an exception)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, r["stderr"])
        assert todo[name][1] in lines[0] and "allocate" not in lines[0], (name, lines[0])
        assert r["seconds"] < SECONDS, (name, r["seconds"])
