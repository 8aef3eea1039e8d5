"""`flatrob sharpness` and `flatrob inspect` end to end, in-process through the real error mapping."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from safetensors.torch import save_file

from flatcli.inputs.checkpoint import read
from flatcli.outputs.files import _umask
from flatcli.cli.tables import fmt
from flatcli.core.curvature import MEASURES
from tests.conftest import EXAMPLE

SUMMARY_KEYS = {"n", "accuracy", "classes", "features", "weight_norm", "feature_norm_min", *MEASURES}
STAT_KEYS = {"mean", "std", "median", "min", "max"}
ROW_KEYS = ["index", "label", "pred", *MEASURES]
CONFIG_KEYS = {
    "checkpoint", "checkpoint_sha256", "arch", "arch_source", "layer", "classes", "features", "data", "preprocess", "split",
    "limit", "batch_size", "device", "seed", "versions", "weight_norm", "scale", "scale_bias",
    "hutchinson_probes", "layers", "layer_method", "fisher_samples", "precision", "channels_last",
}


def test_the_library_builds_rows_from_these_keys():
    from flatcli.runs.sharpness import ROW_KEYS as LIBRARY_ROW_KEYS

    assert list(LIBRARY_ROW_KEYS) == ROW_KEYS


def test_json_contract(cli):
    res = cli("sharpness", EXAMPLE, "--format", "json", "--limit", "50", "--per-sample")
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    doc = json.loads(res.stdout)
    assert set(doc) == {"schema_version", "command", "config", "summary", "samples"}
    assert doc["schema_version"] == 1 and doc["command"] == "sharpness"
    assert set(doc["config"]) == CONFIG_KEYS
    assert doc["config"]["weight_norm"] == "squared" and doc["config"]["scale_bias"] is True
    assert set(doc["summary"]) == SUMMARY_KEYS
    for m in MEASURES:
        assert set(doc["summary"][m]) == STAT_KEYS
    assert len(doc["samples"]) == 50 and list(doc["samples"][0]) == ROW_KEYS
    assert doc["summary"]["n"] == 50 and doc["summary"]["classes"] == 10 and doc["summary"]["features"] == 32
    # data-set values are means of per-sample values
    mean = sum(r["relative_sharpness"] for r in doc["samples"]) / 50
    assert doc["summary"]["relative_sharpness"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert doc["summary"]["feature_norm_min"] == pytest.approx(min(r["feature_norm"] for r in doc["samples"]))


def test_json_without_per_sample_has_no_samples(cli):
    doc = json.loads(cli("sharpness", EXAMPLE, "--format", "json", "--limit", "10").stdout)
    assert "samples" not in doc


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_row_formats_one_row_per_sample(cli, fmt):
    res = cli("sharpness", EXAMPLE, "--format", fmt, "--limit", "37", "--batch-size", "10")
    assert res.exit_code == 0 and res.stderr == ""
    if fmt == "jsonl":
        rows = [json.loads(l) for l in res.stdout.splitlines()]
    else:
        rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 37 and list(rows[0]) == ROW_KEYS
    assert len({int(r["index"]) for r in rows}) == 37


def _cells(table: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first`` (rich's box-drawing borders)."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first:
            return cells[1:]
    raise AssertionError(f"no row {first!r} in:\n{table}")


def test_table_is_for_people(cli):
    res = cli("sharpness", EXAMPLE, "--limit", "20")
    assert res.exit_code == 0 and res.stderr == ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(res.stdout)  # a table, not a document
    doc = json.loads(cli("sharpness", EXAMPLE, "--limit", "20", "--format", "json").stdout)
    s = doc["summary"]
    for key in ("n", "accuracy", "classes", "features", "weight_norm", "feature_norm_min"):
        assert _cells(res.stdout, key) == [fmt(s[key])], key
    for measure in MEASURES:  # every measure with its statistics, in the documented column order
        assert _cells(res.stdout, measure) == [fmt(s[measure][c]) for c in ("mean", "std", "median", "min", "max")]


def test_output_file_written_atomically(cli, tmp_path):
    target = tmp_path / "out.json"
    res = cli("sharpness", EXAMPLE, "--format", "json", "--limit", "5", "--output", target)
    assert res.exit_code == 0 and res.stdout == ""
    assert json.loads(target.read_text())["summary"]["n"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert cli("sharpness", EXAMPLE, "--format", "json", "--limit", "5", "--output", "-").stdout.startswith("{")


def test_same_seed_same_numbers(cli):
    a = cli("sharpness", EXAMPLE, "--format", "json", "--limit", "40", "--hutchinson", "4", "--seed", "3").stdout
    b = cli("sharpness", EXAMPLE, "--format", "json", "--limit", "40", "--hutchinson", "4", "--seed", "3").stdout
    assert a == b


def test_weight_norm_and_scale_options(cli):
    def summary(*extra):
        return json.loads(cli("sharpness", EXAMPLE, "--format", "json", "--limit", "30", *extra).stdout)["summary"]

    base, plain = summary(), summary("--weight-norm", "plain")
    wn = base["weight_norm"]
    assert plain["relative_sharpness"]["mean"] == pytest.approx(base["relative_sharpness"]["mean"] / wn, rel=1e-10)
    scaled = summary("--scale", "10")
    assert scaled["weight_norm"] == pytest.approx(10 * wn)
    assert scaled["relative_sharpness"]["median"] < base["relative_sharpness"]["median"]
    assert scaled["accuracy"] == base["accuracy"]  # scaling W and b cannot change a prediction


def _exact_layer_trace(layer: str, limit: int) -> float:
    """Tr of the Hessian of the mean cross-entropy w.r.t. ``layer``'s weight, exactly, on the first
    ``limit`` digits test images.

    Between conv3 and the logits the example is piecewise linear in the weight (eval-mode BatchNorm,
    ReLU, average pooling, the head), so the Hessian equals the Gauss-Newton matrix and per sample
    ``Tr H = sum_c p_c ||grad_W CE(x, c)||^2``: ten per-sample gradients by ``torch.func``, no estimate.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from flatcli.inputs.data import load_data
    from flatcli.models.loading import load_model

    model = load_model(EXAMPLE).model.eval()
    ds = load_data("digits", "test", limit)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    name = f"net.{layer}.weight"

    def loss(w, x, c):
        logits = functional_call(model, ({**params, name: w}, buffers), (x[None],))
        return F.cross_entropy(logits.double(), c[None])

    with torch.no_grad():
        p = torch.softmax(model(ds.x).double(), -1)
    per_class = vmap(grad(loss), in_dims=(None, 0, 0))
    total = torch.zeros(len(ds), dtype=torch.float64)
    for c in range(p.shape[1]):
        g = per_class(params[name], ds.x, torch.full((len(ds),), c))
        total += p[:, c] * g.double().flatten(1).pow(2).sum(1)
    return float(total.mean())


def test_hutchinson_agrees_with_closed_form_and_exact_layer_trace(cli):
    doc = json.loads(cli("sharpness", EXAMPLE, "--format", "json", "--hutchinson", "40", "--layers", "conv3",
                         "--layer-method", "hutchinson", "--limit", "100").stdout)
    head, conv = doc["summary"]["hutchinson"]
    assert head["layer"] == "fc" and conv["layer"] == "conv3"
    assert abs(head["trace"] - doc["summary"]["trace_h"]["mean"]) < 4 * head["trace_stderr"]
    exact = _exact_layer_trace("conv3", 100)
    assert abs(conv["trace"] - exact) < 4 * conv["trace_stderr"], (conv, exact)
    assert conv["trace_stderr"] < 0.2 * exact  # 40 probes: an estimate, but not a vague one


def _plain_checkpoint(tmp_path, with_spec: bool):
    ck = read(EXAMPLE)
    spec = yaml.safe_load(ck.metadata["flatrob.spec"])
    path = tmp_path / "model.safetensors"
    meta = {"flatrob.spec": ck.metadata["flatrob.spec"]} if with_spec else {}
    save_file({f"module.{k}": v for k, v in ck.state_dict.items()}, str(path), metadata=meta)
    return path, spec


def test_embedded_spec_and_prefix(cli, tmp_path):
    path, _ = _plain_checkpoint(tmp_path, with_spec=True)
    a = json.loads(cli("sharpness", path, "--layer", "fc", "--format", "json", "--limit", "25").stdout)
    b = json.loads(cli("sharpness", EXAMPLE, "--format", "json", "--limit", "25").stdout)
    assert a["summary"] == b["summary"]


def test_spec_file_for_checkpoint_without_one(cli, tmp_path):
    path, spec = _plain_checkpoint(tmp_path, with_spec=False)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    a = json.loads(cli("sharpness", path, "--spec", spec_file, "--format", "json", "--limit", "25").stdout)
    b = json.loads(cli("sharpness", EXAMPLE, "--format", "json", "--limit", "25").stdout)
    assert a["summary"] == b["summary"] and a["config"]["arch_source"] == "spec"
    # Without a spec the architecture is detected (no normalisation then: different numbers, same shapes).
    c = json.loads(cli("sharpness", path, "--format", "json", "--limit", "25").stdout)
    assert c["config"]["arch_source"] == "detected" and c["config"]["arch"] == "small-cnn"
    # --arch overrides
    d = json.loads(cli("sharpness", path, "--arch", "small-cnn", "--format", "json", "--limit", "5").stdout)
    assert d["config"]["arch_source"] == "option"


def test_data_override_tensors(cli, tmp_path):
    from flatcli.inputs.data import load_data
    from flatcli.inputs.data.tensors import save_tensors

    ds = load_data("digits", "test", limit=12)
    f = tmp_path / "x.safetensors"
    save_tensors(f, ds.x, ds.y, ds.index + 1000)
    doc = json.loads(cli("sharpness", EXAMPLE, "--data", f"tensors:{f}", "--format", "json", "--per-sample").stdout)
    assert [r["index"] for r in doc["samples"]] == (ds.index + 1000).tolist()


def test_inspect(cli):
    res = cli("inspect", EXAMPLE, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    s = doc["summary"]
    assert s["arch"] == "small-cnn" and s["layer"] == "fc" and s["parameters"] > 1000
    assert s["linear_layers"] == [{"layer": "fc", "in_features": 32, "out_features": 10, "bias": True, "head": True}]
    assert "small-cnn" in s["embedded_spec"]
    table = cli("inspect", EXAMPLE)
    assert table.exit_code == 0 and "fc" in table.stdout


def test_example_is_small_accurate_and_self_describing():
    ck = read(EXAMPLE)
    assert ck.path.stat().st_size < 1_000_000
    assert float(ck.metadata["test_accuracy"]) > 0.95
    assert yaml.safe_load(ck.metadata["flatrob.spec"])["layer"] == "fc"


def test_layers_naming_the_head_gives_its_hutchinson_trace_next_to_the_closed_form(cli):
    res = cli("sharpness", EXAMPLE, "--limit", "40", "--layers", "fc", "--format", "json")
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)["summary"]["hutchinson"]
    assert row["layer"] == "fc" and row["probes"] == 100 and abs(row["z"]) < 4
    assert row["closed_form_trace"] == json.loads(res.stdout)["summary"]["trace_h"]["mean"]
def test_layers_columns_in_csv_rows_and_the_table(cli):
    res = cli("sharpness", EXAMPLE, "--limit", "10", "--layers", "conv3", "--format", "csv")
    assert res.exit_code == 0 and res.stderr == ""
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 10 and float(rows[0]["trace_h@conv3"]) > 0 and "relative_sharpness@conv3" in rows[0]
    table = cli("sharpness", EXAMPLE, "--limit", "10", "--layers", "conv3").stdout
    assert "Earlier layers" in table and "trace_h@conv3" in table
