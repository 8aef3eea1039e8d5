"""The Python API (flatcli.api): the manual's example runs, and every command gives the CLI's numbers.

The example of docs/api.md is written to a module and imported (so its ``Net`` class can also be named to the
CLI as ``--arch readme_example:Net``); its trained network is saved as a safetensors checkpoint and its
data as a ``tensors:`` file, and each CLI command run on them must give the same summary and rows as the
API did on the in-memory network and ``DataLoader``.
"""

from __future__ import annotations

import importlib
import json
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import flatcli.api as fr
from flatcli.errors import DataError, DetectorError, LayerError, OptionError, UsageError
from flatcli.inputs.data import load_data
from tests.conftest import EXAMPLE, invoke

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def readme_example() -> str:
    """The Python block that follows the ``api-example`` marker in docs/api.md."""
    text = API_PAGE.read_text(encoding="utf-8")
    found = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/api.md lost its API example"
    return found.group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The manual's example imported as a module, plus its network and data as files for the CLI."""
    root = tmp_path_factory.mktemp("readme")
    (root / "readme_example.py").write_text(readme_example(), encoding="utf-8")
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("readme_example")
    finally:
        sys.path.remove(str(root))
    ckpt = root / "net.safetensors"
    save_file({k: v.contiguous() for k, v in module.net.state_dict().items()}, str(ckpt))
    data = root / "digits.safetensors"
    save_file({"x": module.x.contiguous(), "y": module.y.to(torch.int64), "index": torch.arange(len(module.y))},
              str(data))
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({"arch": "readme_example:Net", "layer": "fc", "input_shape": [1, 8, 8],
                                    "mean": [0.3], "std": [0.4]}))
    yield module, ckpt, data, spec, root
    sys.modules.pop("readme_example", None)


def cli_json(example, *args) -> dict:
    _, ckpt, data, spec, root = example
    sys.path.insert(0, str(root))  # the person at the shell names the code: --spec with arch module:Class
    try:
        res = invoke(args[0], ckpt, "--spec", spec, "--data", f"tensors:{data}", "--device", "cpu", "--format", "json",
                     "--quiet", *args[1:])
    finally:
        sys.path.remove(str(root))
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def doc(result) -> dict:
    return json.loads(result.to_json())


def test_readme_example_runs_and_gives_real_numbers(example):
    m = example[0]
    s = m.sharp.summary
    assert s["n"] == 1797 and s["accuracy"] > 0.95 and s["relative_sharpness"]["mean"] > 0
    assert len(m.sharp.samples) == 1797 and m.sharp.samples[0]["index"] == 0
    assert m.attack.summary["robust_accuracy"] < m.attack.summary["clean_accuracy"]
    assert [r["scale"] for r in m.sweep.summary["scales"]] == [1.0, 10.0, 100.0]
    assert m.radius.summary["radii"][0]["delta"] > 0 and m.radius.summary["lipschitz"]["kind"] == "upper"
    assert 0.5 <= m.detect.summary["accuracy_mean"] <= 1.0
    assert m.detect.artifacts["detector"].meta["weights_sha256"]
    assert m.net.training  # the network's own mode is left as it was


@pytest.mark.parametrize(
    "name, args",
    [
        ("sharp", ("sharpness", "--per-sample")),
        ("attack", ("attack", "--norm", "linf", "--eps", "0.1", "--alpha", "0.01", "--steps", "20", "--per-sample")),
        ("sweep", ("sweep-scale", "--scales", "1,10,100", "--per-sample")),
        ("radius", ("bound", "--epsilon", "0.1", "--per-sample")),
        ("detect", ("detect", "--method", "components", "--eps", "0.1", "--alpha", "0.01", "--steps", "20",
                    "--per-sample")),
    ],
)
def test_api_and_cli_give_the_same_numbers(example, name, args):
    api_doc = doc(getattr(example[0], name))
    cli_doc = cli_json(example, *args)
    assert api_doc["summary"] == cli_doc["summary"]
    assert api_doc["samples"] == cli_doc["samples"]
    # the settings agree too; only what names the model and the data differs
    differ = {"checkpoint", "checkpoint_sha256", "weights_sha256", "arch", "arch_source", "arch_file", "data",
              "versions"}
    assert {k: v for k, v in api_doc["config"].items() if k not in differ} == \
           {k: v for k, v in cli_doc["config"].items() if k not in differ}


def test_numbers_only_bound_is_the_cli_s():
    api_doc = doc(fr.bound(kappa=0.8, lipschitz=12, r=3.1, classes=10, features=512, epsilon=[0.01, 0.1]))
    res = invoke("bound", "--kappa", "0.8", "--lipschitz", "12", "--r", "3.1", "--classes", "10", "--features", "512",
                 "--epsilon", "0.01,0.1", "--format", "json")
    cli_doc = json.loads(res.stdout)
    assert api_doc["summary"] == cli_doc["summary"] and len(api_doc["summary"]["radii"]) == 2


def test_a_checkpoint_by_name_gives_the_cli_s_document():
    api_doc = doc(fr.sharpness(EXAMPLE, limit=50, device="cpu", hutchinson=4))
    cli_doc = json.loads(invoke("sharpness", EXAMPLE, "--limit", "50", "--hutchinson", "4", "--format", "json",
                                "--per-sample").stdout)
    for d in (api_doc, cli_doc):
        d["config"].pop("versions")
    assert api_doc == cli_doc


def test_every_form_of_data_gives_the_same_numbers():
    ds = load_data("digits", "test", 40)
    x, y = ds.x, ds.y

    class Pairs(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], int(y[i])

    forms = [(x, y), (x.numpy(), y.numpy()), TensorDataset(x, y), Pairs(), DataLoader(TensorDataset(x, y), batch_size=7,
                                                                                      shuffle=True), ds]
    summaries = [fr.sharpness(EXAMPLE, data, device="cpu", batch_size=16).summary for data in forms]
    for s in summaries[1:]:
        assert s == summaries[0]
    assert summaries[0] == fr.sharpness(EXAMPLE, "digits", limit=40, device="cpu", batch_size=16).summary


def test_an_in_memory_network_is_measured_like_its_checkpoint():
    loaded = fr.load(EXAMPLE, device="cpu")
    net = loaded.model.net
    mean, std = loaded.spec.mean, loaded.spec.std
    by_module = fr.sharpness(net, "digits", mean=mean, std=std, limit=30, device="cpu", samples=False)
    by_file = fr.sharpness(EXAMPLE, "digits", limit=30, device="cpu", samples=False)
    assert by_module.summary == by_file.summary and by_module.samples is None
    assert by_module.config["weights_sha256"] and by_module.config["checkpoint"] is None
    assert by_module.config["layer"] == "fc" and by_module.config["arch_source"] == "module"


def test_a_detector_fitted_on_one_network_is_refused_on_another(tmp_path):
    torch.manual_seed(0)
    ds = load_data("digits", "test", 60)
    a = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    b = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    fitted = fr.detect(a, ds, eps=0.3, alpha=0.05, steps=3, folds=2, device="cpu", save=str(tmp_path / "d.json"))
    det = fitted.artifacts["detector"]
    assert fr.detect(a, ds, detector=det, device="cpu").summary["checkpoint_match"] is True
    assert fr.detect(a, ds, detector=str(tmp_path / "d.json"), device="cpu").summary["n"] == 60
    with pytest.raises(DetectorError, match="another model"):
        fr.detect(b, ds, detector=det, device="cpu")


def test_progress_and_streamed_rows():
    seen, rows = [], []
    res = fr.sharpness(EXAMPLE, limit=50, batch_size=16, device="cpu", samples=False, on_rows=rows.extend,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen == [(16, 50), (32, 50), (48, 50), (50, 50)]
    assert len(rows) == 50 and res.samples is None


def flat_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda: fr.sharpness(object(), "digits"), UsageError, "nn.Module"),
        (lambda: fr.sharpness(nn.Sequential(nn.Flatten(), nn.ReLU()), "digits"), LayerError, "no nn.Linear"),
        (lambda: fr.sharpness(flat_net(), 42), UsageError, "data must be"),
        (lambda: fr.sharpness(flat_net()), UsageError, "pass data="),
        (lambda: fr.sharpness(flat_net(), (torch.rand(4, 64), torch.zeros(4))), DataError, "4 dimensions"),
        (lambda: fr.sharpness(flat_net(), TensorDataset(torch.rand(4, 1, 8, 8) * 3, torch.zeros(4).long())),
         DataError, "outside [0, 1]"),
        (lambda: fr.sharpness(EXAMPLE, "digits", batch_size=0), OptionError, "batch_size= must be at least 1"),
        (lambda: fr.bound(epsilon=0.1), OptionError, "kappa="),
        (lambda: fr.attack(EXAMPLE, "digits", steps=-1), OptionError, "steps="),
        (lambda: fr.attack(EXAMPLE, "digits", stepz=3), TypeError, "unexpected keyword argument 'stepz'"),
    ],
)
def test_bad_input_raises_the_library_errors(call, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        call()


def test_options_come_as_groups_or_keywords_and_errors_name_the_option():
    """The API takes an option group or its fields as keywords (the keywords apply over the group); an option out
    of range is named as a keyword, never as a flag; the signature lists every option."""
    from flatcli.options import AttackOptions, DataOptions

    net = flat_net()
    data = (torch.rand(6, 1, 8, 8), torch.arange(6) % 10)
    by_keywords = fr.attack(net, data, steps=2, eps=0.1, alpha=0.05, batch_size=4)
    by_groups = fr.attack(net, data, AttackOptions(steps=2, eps=0.1), DataOptions(batch_size=4), alpha=0.05)
    assert json.dumps(by_keywords.summary) == json.dumps(by_groups.summary)  # NaN where no sample is censored
    with pytest.raises(OptionError) as caught:
        fr.attack(net, data, AttackOptions(steps=2), takeoff=2.0)
    assert "takeoff=" in str(caught.value) and "--" not in str(caught.value)
    assert {"steps", "batch_size", "takeoff", "seed"} <= set(inspect.signature(fr.attack).parameters)
