"""Shell citizenship (issue 7): generated completions, man page and CLI reference, value completion,
help text everywhere, and clean pipes.

The completion and pipeline tests run the real ``flatrob`` executable beside this test's Python
(``.venv/bin``), put first on PATH as a user's shell would have it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from flatcli.cli import app, complete
from flatcli.outputs.writer import ResultWriter
from tests.conftest import load_generate_docs

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REGENERATE = "python scripts/generate_docs.py"


gen = load_generate_docs()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_FLATROB_", "_TYPER_", "COMP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("FLATROB_DEBUG", None)
    env.update(extra)
    return env


def _commands() -> dict[str, TyperCommand]:
    return dict(typer.main.get_command(app).commands)


# ----------------------------------------------------------------------------------- drift check


def test_generated_files_are_current(tmp_path):
    assert gen.main(["--out", str(tmp_path)]) == 0
    stale = []
    for rel in gen.render():
        fresh = (tmp_path / rel).read_text(encoding="utf-8")
        committed = ROOT / rel
        if not committed.is_file() or committed.read_text(encoding="utf-8") != fresh:
            stale.append(rel)
    assert not stale, f"stale generated files {stale}: run `{REGENERATE}` and commit the result"


def test_generation_is_deterministic(monkeypatch):
    first = gen.render()
    monkeypatch.setenv("COLUMNS", "33")
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert gen.render() == first
    machine = [str(ROOT), str(Path.home()), str(BIN)]
    for rel, text in first.items():
        assert not any(m in text for m in machine), f"{rel} holds a path of this machine"
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{rel} holds a date"


def test_show_completion_prints_the_committed_scripts(monkeypatch):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # --show-completion SHELL
    for shell in gen.SHELLS:
        res = CliRunner().invoke(app, ["--show-completion", shell], prog_name="flatrob")
        assert res.exit_code == 0, res.output
        assert res.stdout == (ROOT / f"completions/flatrob.{shell}").read_text(), shell


def test_install_completion_still_works(monkeypatch, tmp_path):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["--install-completion", "bash"], prog_name="flatrob")
    assert res.exit_code == 0, res.output
    installed = (tmp_path / ".bash_completions" / "flatrob.sh").read_text()
    assert installed.strip() == (ROOT / "completions/flatrob.bash").read_text().strip()


# ----------------------------------------------------------------------- completion in real bash


def bash_complete(*words: str) -> list[str]:
    """COMPREPLY of the generated bash script for the line ``words`` (the last one being completed)."""
    script = (
        "source completions/flatrob.bash\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))\n'
        '_flatrob_completion "$1"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script, "bash", *words],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completes_command_names():
    if "sweep-scale" not in _commands():
        pytest.skip("sweep-scale is not registered yet (flatcli/cli/sweep.py has not landed)")
    assert bash_complete("flatrob", "sw") == ["sweep-scale"]


def test_bash_completes_norm_values():
    assert bash_complete("flatrob", "attack", "--norm", "") == ["linf", "l2"]


def test_bash_completes_layers_of_the_checkpoint_on_the_line():
    # bash splits example:digits-cnn at the colon (COMP_WORDBREAKS); the completion joins it again
    assert bash_complete("flatrob", "sharpness", "example", ":", "digits-cnn", "--layer", "") == ["fc"]
    path = "flatcli/examples/digits-cnn.safetensors"
    assert bash_complete("flatrob", "attack", path, "--seed", "1", "--layer", "f") == ["fc"]
    assert bash_complete("flatrob", "sharpness", "missing.safetensors", "--layer", "") == []


def test_bash_completes_data_device_and_format():
    assert bash_complete("flatrob", "sharpness", "m.safetensors", "--data", "") == [
        "digits", "cifar10:", "cifar100:", "mnist:", "fashionmnist:", "kmnist:", "svhn:", "stl10:", "folder:", "npz:",
        "hf:", "tensors:"
    ]
    assert bash_complete("flatrob", "sharpness", "m.safetensors", "--device", "c")[0] == "cpu"
    assert bash_complete("flatrob", "sharpness", "m.safetensors", "--format", "js") == ["json", "jsonl"]


def test_completion_does_not_import_torch():
    """A <Tab> must answer fast: the completion path never imports torch (seconds to import)."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('torch' if 'torch' in sys.modules else 'no-torch'))\n"
        "from flatcli.cli import app\n"
        "app(prog_name='flatrob')\n"
    )
    env = _env(_FLATROB_COMPLETE="complete_bash", COMP_WORDS="flatrob sharpness example : digits-cnn --layer ", COMP_CWORD="6")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["fc"]
    assert res.stderr == "no-torch"


# -------------------------------------------------------------------------- completion functions


def test_linear_layers_from_a_header():
    header = {
        "__metadata__": {"flatrob.spec": "layer: fc"},
        "module.conv.weight": {"shape": [8, 3, 3, 3]},
        "module.bn.weight": {"shape": [8]},
        "module.hidden.weight": {"shape": [64, 128]},
        "module.fc.weight": {"shape": [10, 64]},
        "module.fc.bias": {"shape": [10]},
    }
    assert complete.linear_layers(header) == [("hidden", "Linear 128 -> 64"), ("fc", "Linear 64 -> 10")]


def test_device_values(monkeypatch):
    values = [v for v, _ in complete.device("")]
    assert values[:2] == ["auto", "cpu"]
    assert all(v == "cuda" or re.fullmatch(r"cuda:\d+", v) for v in values[2:])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [v for v, _ in complete.device("")] == ["auto", "cpu"]


def test_data_paths_after_a_prefix(tmp_path, monkeypatch):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "adv.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert [v for v, _ in complete.data("folder:c")] == ["folder:cifar/"]
    assert [v for v, _ in complete.data("tensors:")] == ["tensors:adv.safetensors", "tensors:cifar/"]
    assert [v for v, _ in complete.data("")][0] == "digits"


# --------------------------------------------------------------------------------- man page


def _man(width: int = 80) -> subprocess.CompletedProcess:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db groff-base)")
    return subprocess.run(
        ["man", "-l", "man/flatrob.1"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**_env(), "MANWIDTH": str(width), "MANPAGER": "cat", "PAGER": "cat"},
    )


def test_man_page_renders_without_warnings():
    res = _man()
    assert res.returncode == 0 and res.stderr == "", res.stderr
    if shutil.which("groff"):  # every groff warning category, not only those man enables
        strict = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", "man/flatrob.1"], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**_env(), "MANWIDTH": "80"},
        )
        assert strict.returncode == 0 and strict.stderr == "", strict.stderr


def test_man_page_names_every_command_and_option():
    text = _man().stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert re.search(rf"^{heading}$", text, re.M), heading
    assert "FLATROB_DEBUG" in text and all(re.search(rf"^\s+{c}\b", text, re.M) for c in ("0", "1", "2", "130", "143"))
    sections = re.split(r"^FLATROB ([A-Z-]+)$", text, flags=re.M)
    by_command = {sections[i].lower(): sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    for name, command in _commands().items():
        assert name in by_command, f"man page has no section FLATROB {name.upper()}"
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", by_command[name]), f"{name} {opt}"


def test_man_page_examples_come_from_the_docs():
    examples = gen.doc_examples(gen.doc_pages())
    assert gen.shell_examples((ROOT / "README.md").read_text()), "README.md has no flatrob examples in bash blocks"
    assert len(examples) > 20, "the manual lost its flatrob examples"
    roff = (ROOT / "man/flatrob.1").read_text()
    for ex in examples:
        assert gen.roff(gen.wrap_command(ex.command)[0]) in roff


# ------------------------------------------------------------------------------------ help text


def _walk(command: TyperGroup | TyperCommand, path: str):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, command in _walk(typer.main.get_command(app), "flatrob"):
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.opts[0] if param.opts else param.name}")
    assert not missing, f"no help text: {missing}"


# -------------------------------------------------------------------------------------- pipes


def test_jsonl_and_csv_rows_are_flushed_per_batch(monkeypatch):
    class Recorder(io.StringIO):
        flushed: list[str] = []

        def flush(self):
            self.flushed.append(self.getvalue())

    for fmt in ("jsonl", "csv"):
        out = Recorder()
        out.flushed = []
        monkeypatch.setattr(sys, "stdout", out)
        with ResultWriter(fmt, "-", command="t") as w:
            w.rows([{"index": 0, "x": 1.0}])
            assert out.flushed and "1.0" in out.flushed[-1]
            w.rows([{"index": 1, "x": 2.0}])
            assert "2.0" in out.flushed[-1]


@pytest.mark.parametrize("program", ["flatrob", "python -m flatcli"])
def test_sigpipe_ends_quietly(program, tmp_path):
    """``flatrob sharpness example:digits-cnn --format jsonl | head -n 1``: exit 0, nothing on stderr."""
    exe = f"{sys.executable} -m flatcli" if program.startswith("python") else "flatrob"
    script = f'{exe} sharpness example:digits-cnn --format jsonl 2>"$1" | head -n 1; echo "${{PIPESTATUS[*]}}" >"$2"'
    err, status = tmp_path / "stderr", tmp_path / "status"
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script, "bash", str(err), str(status)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert err.read_text() == ""
    assert len(res.stdout.splitlines()) == 1 and "relative_sharpness" in json.loads(res.stdout)
    writer, head = status.read_text().split()
    assert head == "0" and writer in ("0", "141"), status.read_text()  # 141: ended by SIGPIPE, as filters are
