"""Nothing a file says runs code or downloads: embedded specs naming code, the import path, torch.hub.

The person at the shell may name code: ``--arch module:Class`` (or ``arch=``) is imported from the current
directory, their project, first; a checkpoint's embedded spec naming a module that lies right there is still
refused before anything is imported.

Every case runs in a subprocess (the console script, ``python -m flatcli``, or the Python API through
``python -c``) in a directory holding a planted module that leaves a marker file and prints when it is
imported, so "nothing ran" is observed, not assumed. The download cases point ``TORCH_HOME`` at a
directory with planted torch.hub cache files (pickles whose ``__reduce__`` leaves a marker) and every
proxy at an unreachable address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import save_file

from flatcli.inputs.checkpoint import read
from tests.conftest import EXAMPLE

FLATROB = str(Path(sys.executable).with_name("flatrob"))
PLANTED = """\
import pathlib
pathlib.Path(__file__).with_name("IMPORTED-" + __name__).write_text("ran")
print("PLANTED OUTPUT")
from flatcli.models.builtins.small import SmallCNN


class X(SmallCNN):
    def __init__(self, num_classes=10, in_channels=1, width=16):
        super().__init__(num_classes, in_channels, width)
"""
SPEC = "arch: {arch}\nlayer: fc\nnum_classes: 10\ninput_shape: [1, 8, 8]\n"
UNREACHABLE = "http://127.0.0.1:9"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(args, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300)


def _error_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A working directory with ``plantmod.py`` planted, checkpoints naming code, and a ``lib/`` directory
    (not the working directory) holding the same module for the opt-in."""
    d = tmp_path_factory.mktemp("planted")
    (d / "plantmod.py").write_text(PLANTED)
    (d / "lib").mkdir()
    (d / "lib" / "libmod.py").write_text(PLANTED)
    state = read(EXAMPLE).state_dict
    for name, arch in (("plant", "plantmod:X"), ("this", "this:X"), ("lib", "libmod:X")):
        save_file(state, str(d / f"{name}.safetensors"), metadata={"flatrob.spec": SPEC.format(arch=arch)})
    return d


def test_console_script_refuses_an_embedded_spec_naming_code_before_importing_it(planted):
    res = _run([FLATROB, "inspect", "this.safetensors", "--format", "json"], planted)
    assert res.returncode == 2 and res.stdout == ""  # `this` prints the Zen of Python when imported
    line = _error_line(res)
    assert "names code" in line and "--trust-embedded-code" in line and "--arch this:X" in line
    res = _run([FLATROB, "inspect", "plant.safetensors", "--format", "json"], planted)  # plantmod.py is in the cwd
    assert res.returncode == 2 and res.stdout == "" and "--trust-embedded-code" in _error_line(res)
    assert not list(planted.glob("IMPORTED-*"))


def test_python_m_flatcli_imports_from_the_current_directory_only_the_class_the_user_names(planted, tmp_path):
    """``python -m`` puts the current directory first on sys.path: a planted ``yaml.py`` (read by every spec) is
    never imported, nor a module there that the checkpoint's embedded spec names; ``--arch plantmod:X`` named on
    the command line is (the user's project), and the config says which file it came from."""
    (tmp_path / "plantmod.py").write_text(PLANTED)
    (tmp_path / "yaml.py").write_text('open(__file__ + ".IMPORTED", "w").write("ran")\nraise SystemExit("planted")\n')
    (tmp_path / "plant.safetensors").write_bytes((planted / "plant.safetensors").read_bytes())
    res = _run([sys.executable, "-m", "flatcli", "inspect", "plant.safetensors"], tmp_path)
    assert res.returncode == 2 and res.stdout == "" and "--trust-embedded-code" in _error_line(res)
    assert not list(tmp_path.glob("IMPORTED-*")) and not list(tmp_path.glob("*.IMPORTED"))
    res = _run([sys.executable, "-m", "flatcli", "sharpness", "plant.safetensors", "--arch", "plantmod:X",
                "--data", "digits", "--limit", "4", "--format", "json"], tmp_path)
    assert res.returncode == 0, res.stderr
    planted_line, document = res.stdout.split("\n", 1)
    assert planted_line == "PLANTED OUTPUT"
    assert json.loads(document)["config"]["arch_file"] == str((tmp_path / "plantmod.py").resolve())
    assert [p.name for p in tmp_path.glob("IMPORTED-*")] == ["IMPORTED-plantmod"]
    assert not list(tmp_path.glob("*.IMPORTED"))


def test_the_api_refuses_embedded_code_and_imports_from_the_current_directory_only_what_it_names(planted):
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        import flatcli.api as fr
        from flatcli.errors import SpecError
        out = {}
        def attempt(name, *args, **kwargs):
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    fr.inspect(*args, **kwargs)
                out[name] = "ok"
            except SpecError as e:
                out[name] = str(e)
            out[name + " stdout"] = buffer.getvalue()
        attempt("embedded", "plant.safetensors")
        attempt("this", "this.safetensors")
        sys.path.insert(0, "lib")  # not the current directory: found, once the user trusts the spec
        attempt("untrusted lib", "lib.safetensors")
        attempt("trusted lib", "lib.safetensors", trust_embedded_code=True)
        out["imported before arch="] = sorted(p.name for p in __import__("pathlib").Path().rglob("IMPORTED-*"))
        attempt("arch", "plant.safetensors", arch="plantmod:X")  # named by the caller: found in the cwd
        out["this imported"] = "this" in sys.modules
        print(json.dumps(out))
    """)
    res = _run([sys.executable, "-c", script], planted)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert "names code" in out["embedded"] and "trust_embedded_code=True" in out["embedded"]
    assert "names code" in out["this"] and out["this stdout"] == "" and out["this imported"] is False
    assert "names code" in out["untrusted lib"]
    assert out["trusted lib"] == "ok" and out["trusted lib stdout"] == "PLANTED OUTPUT\n"
    assert out["imported before arch="] == ["IMPORTED-libmod"]  # only the trusted import ran
    assert out["arch"] == "ok" and out["arch stdout"] == "PLANTED OUTPUT\n"
    assert sorted(p.name for p in planted.rglob("IMPORTED-*")) == ["IMPORTED-libmod", "IMPORTED-plantmod"]


# ------------------------------------------------------------------------------------------------
# Downloads: torch.hub is never reached while a network is built
# ------------------------------------------------------------------------------------------------

PLANT_PICKLE = textwrap.dedent("""
    import sys, torch
    class Plant:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('unpickled')" % sys.argv[2],))
    torch.save(Plant(), sys.argv[1])
""")

DOWNLOADS = textwrap.dedent("""
    import contextlib, io, json, os, sys, urllib.request
    import torch, torchvision.models as tvm, typer
    from safetensors.torch import save_file
    from flatcli.cli.app import app
    from flatcli.errors import SpecError
    from flatcli.models.offline import offline

    out = {}
    def cli(name, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = typer.main.get_command(app).main(list(args), prog_name="flatrob", standalone_mode=False)
        out[name] = [code, err.getvalue()]

    torch.manual_seed(0)
    save_file(tvm.shufflenet_v2_x0_5(num_classes=10).state_dict(), "shuffle.safetensors",
              metadata={"flatrob.spec": "arch: torchvision:shufflenet_v2_x0_5\\nlayer: fc\\n"})
    save_file({"fc.weight": torch.zeros(10, 4)}, "frcnn.safetensors",
              metadata={"flatrob.spec": "arch: torchvision:fasterrcnn_mobilenet_v3_large_fpn\\nlayer: fc\\n"
                                        "num_classes: 10\\n"})
    cli("classifier", "inspect", "shuffle.safetensors")
    cli("detection", "inspect", "frcnn.safetensors")
    def fresh_hub():
        torch.hub.set_dir(os.path.abspath("fresh"))  # a cache directory that does not exist yet

    for name, call in (("hub cached", lambda: torch.hub.load_state_dict_from_url(sys.argv[1])),
                       ("hub fresh", lambda: torch.hub.load_state_dict_from_url(sys.argv[2])),
                       ("network", lambda: urllib.request.urlopen("http://example.com/weights.pth", timeout=5))):
        if name == "hub fresh":
            fresh_hub()
        try:
            with offline("a test build"):
                call()
            out[name] = "not refused"
        except SpecError as exc:
            out[name] = str(exc)
    print(json.dumps(out))
""")


def test_building_never_downloads_nor_reads_a_planted_hub_cache(tmp_path):
    import torchvision.models as tvm

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    marker = tmp_path / "UNPICKLED"
    urls = [tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url, tvm.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url,
            tvm.ResNet18_Weights.IMAGENET1K_V1.url]
    for url in urls:  # what fasterrcnn's default backbone, shufflenet and resnet18 would load from the cache
        subprocess.run([sys.executable, "-c", PLANT_PICKLE, str(hub / url.rsplit("/", 1)[1]), str(marker)],
                       check=True, timeout=300)
    planted = sorted(p.name for p in hub.iterdir())
    proxies = {k: UNREACHABLE for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    res = _run([sys.executable, "-c", DOWNLOADS, urls[2], "https://example.com/not-cached-1234abcd.pth"], tmp_path,
               TORCH_HOME=str(tmp_path / "torch"), no_proxy="", NO_PROXY="", **proxies)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert out["classifier"][0] == 0, out["classifier"]  # a classification builder builds offline, weights=None
    code, err = out["detection"]
    assert code == 2 and "not a classification model" in err and err.count("\n") == 1
    assert "torch.hub's cache" in out["hub cached"] and "a test build" in out["hub cached"]
    assert "torch.hub's cache" in out["hub fresh"]
    assert "network connection" in out["network"]
    assert not marker.exists()  # no planted pickle was unpickled
    assert sorted(p.name for p in hub.iterdir()) == planted  # nothing downloaded into the cache
    assert not (tmp_path / "fresh").exists()  # nor a cache directory created
