"""Outputs to special files are written in place, never renamed over: /dev/null, /dev/full, /dev/stdout, pipes.

Renaming a temporary file onto ``/dev/null`` replaces the device (as root it destroys it for the whole
machine), so the real ``/dev`` is never used: each case runs in a subprocess, either in a private mount
namespace with a fresh tmpfs on ``/dev`` holding its own ``null``, ``full`` and ``stdout`` (``unshare``
as root; skipped where that is not allowed), or in a temporary directory holding a named pipe and, where
``mknod`` is allowed, device nodes with the numbers of ``/dev/null`` (1, 3) and ``/dev/full`` (1, 7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, stat, sys, threading
    import typer
    from flatcli.cli.app import app

    where, report = sys.argv[1], sys.argv[2]
    command = typer.main.get_command(app)
    out = {}

    def cli(name, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = command.main(list(args), prog_name="flatrob", standalone_mode=False)
        out[name] = {"code": code, "stderr": err.getvalue()}

    def kind(path):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "link to " + os.readlink(path)
        if stat.S_ISCHR(st.st_mode):
            return "char %d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        return "fifo" if stat.S_ISFIFO(st.st_mode) else "regular" if stat.S_ISREG(st.st_mode) else "other"

    small = ["example:digits-cnn", "--limit", "5", "--batch-size", "5"]
    null, full = os.path.join(where, "null"), os.path.join(where, "full")
    if os.path.exists(null):
        cli("null", "sharpness", *small, "-f", "json", "-o", null)
        cli("full", "sharpness", *small, "-f", "json", "-o", full)
        work = os.path.join(os.path.dirname(report), "work")
        os.mkdir(work)
        cli("full among others", "attack", *small, "--steps", "1", "-f", "json", "-o", os.path.join(work, "out.json"),
            "--trajectory", os.path.join(work, "t.csv"), "--save-adv", full)
        out["left in work"] = sorted(os.listdir(work))
        out["kinds"] = {"null": kind(null), "full": kind(full)}
    stdout = os.path.join(where, "stdout")
    if os.path.lexists(stdout):
        cli("stdout", "sharpness", *small, "-f", "json", "-o", stdout)
        out["kinds"]["stdout"] = kind(stdout)
    fifo = os.path.join(where, "pipe")
    if os.path.exists(fifo):
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
        reader.start()
        cli("fifo", "sharpness", *small, "-f", "json", "-o", fifo)
        reader.join(60)
        out["fifo read"] = got[0] if got else None
        out.setdefault("kinds", {})["pipe"] = kind(fifo)
    with open(report, "w") as handle:
        json.dump(out, handle)
""")

NAMESPACE = """
mount -t tmpfs tmpfs /dev || exit 77
[ -z "$(ls -A /dev)" ] || exit 77
mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/full c 1 7 && mknod -m 666 /dev/zero c 1 5 &&
mknod -m 666 /dev/urandom c 1 9 && mknod -m 666 /dev/random c 1 8 || exit 77
mkdir /dev/shm && ln -s /proc/self/fd/0 /dev/stdin && ln -s /proc/self/fd/1 /dev/stdout && ln -s /proc/self/fd/2 /dev/stderr
exec "$@"
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _check_devices(out: dict) -> None:
    assert out["null"]["code"] == 0 and out["null"]["stderr"] == "", out["null"]
    assert out["full"]["code"] == 2, out["full"]
    lines = out["full"]["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "No space left on device" in lines[0], lines
    assert out["full among others"]["code"] == 2 and "No space left" in out["full among others"]["stderr"]
    assert out["left in work"] == []  # neither -o nor --trajectory was committed, no temporary file left
    assert out["kinds"]["null"] == "char 1,3" and out["kinds"]["full"] == "char 1,7"  # still the devices


def test_special_files_in_a_private_dev(tmp_path):
    """The real paths (/dev/null, /dev/full, /dev/stdout) in a mount namespace whose /dev is a fresh tmpfs."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a private mount namespace")
    report = tmp_path / "report.json"
    res = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh",
                          sys.executable, "-c", SCRIPT, "/dev", str(report)],
                         capture_output=True, text=True, env=_env(), timeout=300)
    if res.returncode == 77 or (res.returncode != 0 and not report.exists() and "mount" in res.stderr):
        pytest.skip(f"no private /dev here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    out = json.loads(report.read_text())
    _check_devices(out)
    assert out["stdout"]["code"] == 0 and json.loads(res.stdout)["command"] == "sharpness"  # written to stdout
    assert out["kinds"]["stdout"] == "link to /proc/self/fd/1"  # the link is still a link


def test_named_pipe_and_device_nodes_in_a_directory(tmp_path):
    where = tmp_path / "special"
    where.mkdir()
    os.mkfifo(where / "pipe")
    try:
        os.mknod(where / "null", 0o666 | 0o020000, os.makedev(1, 3))
        os.mknod(where / "full", 0o666 | 0o020000, os.makedev(1, 7))
    except PermissionError:
        pass  # device nodes need CAP_MKNOD: then only the pipe is checked here
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(where), str(report)], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(report.read_text())
    assert out["fifo"]["code"] == 0, out["fifo"]
    assert json.loads(out["fifo read"])["command"] == "sharpness"  # the reader got the whole document
    assert out["kinds"]["pipe"] == "fifo"
    if (where / "null").exists():
        _check_devices(out)
    assert sorted(p.name for p in where.iterdir()) == sorted(["pipe"] + (["null", "full"] if "null" in out else []))


@pytest.mark.parametrize("args", [
    ["sharpness", "example:digits-cnn", "{pipe}", "--limit", "5"],
    ["sharpness", "example:digits-cnn", "/dev/zero", "--limit", "5"],
    ["sharpness", "{pipe}", "--limit", "5"],
    ["detect", "example:digits-cnn", "--detector", "{pipe}", "--limit", "5"],
], ids=["pipe among checkpoints", "/dev/zero among checkpoints", "pipe as checkpoint", "pipe as --detector"])
def test_a_named_pipe_or_device_as_an_input_is_refused_not_waited_on(tmp_path, args):
    """Issue 24 case 11: a pipe nobody writes to blocked forever; /dev/zero among checkpoints was hashed forever."""
    os.mkfifo(tmp_path / "pipe")
    res = subprocess.run([sys.executable, "-m", "flatcli", *(a.format(pipe=tmp_path / "pipe") for a in args)],
                         capture_output=True, text=True, env=_env(), timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
