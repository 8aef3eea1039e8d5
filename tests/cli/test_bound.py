"""``flatrob bound``: numbers-only mode, lists, --from-json pipelines, checkpoint mode, --check, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from flatcli.core.radius import certified_radius
from tests.conftest import EXAMPLE, assert_one_error, invoke

NUMBERS = ["--kappa", "0.8", "--lipschitz", "12", "--r", "3.1", "--classes", "10", "--features", "512"]
ROW_KEYS = [
    "kappa", "lipschitz", "r", "classes", "features", "grad", "epsilon",
    "delta", "saturation", "feature_step", "first_order", "second_order", "third_order",
]
SAMPLE_KEYS = [
    "index", "label", "pred", "loss", "input_norm", "epsilon", "kappa", "feature_norm", "grad",
    "delta", "feature_step", "first_order", "second_order", "third_order",
]
RADIUS_KEYS = [
    "epsilon", "kappa", "lipschitz", "r", "classes", "features", "grad",
    "delta", "saturation", "feature_step", "first_order", "second_order", "third_order", "per_sample_delta",
]


def test_the_library_builds_rows_from_these_keys():
    """The row contracts are constants of the library (rows are built from them); pinned here."""
    from flatcli.runs import bound, bound_numbers

    assert list(bound_numbers.NUMBER_ROW_KEYS) == ROW_KEYS
    assert list(bound.ROW_KEYS) == SAMPLE_KEYS and bound.CHECK_KEYS == ("loss_increase", "exceeds")
    assert list(bound.RADIUS_KEYS) + ["per_sample_delta"] == RADIUS_KEYS


#: The local Lipschitz estimate (jvp power iteration) dominates checkpoint runs: fewer iterations in tests.
FAST = ["--local-iters", "10"]
SUMMARY_KEYS = [
    "n", "accuracy", "classes", "features", "weight_norm", "kappa", "r", "grad",
    "lipschitz", "assumptions", "radii", "per_sample",
]


def bound_json(*args, input=None) -> dict:
    res = invoke("bound", *args, "--format", "json", input=input)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# ------------------------------------------------------------------------------------------------
# Numbers-only mode
# ------------------------------------------------------------------------------------------------


def test_numbers_json_keys_and_values_are_pinned():
    doc = bound_json(*NUMBERS, "--epsilon", "0.1")
    assert list(doc) == ["schema_version", "command", "config", "summary"]
    assert doc["schema_version"] == 1 and doc["command"] == "bound"
    assert list(doc["config"]) == ["mode", "weight_norm", "at_minimum", "lipschitz_kind", "grid", "versions"]
    assert doc["config"]["mode"] == "numbers" and doc["config"]["weight_norm"] == "squared"
    assert "torch" not in doc["config"]["versions"]
    assert list(doc["summary"]) == ["radii"]
    (row,) = doc["summary"]["radii"]
    assert list(row) == ROW_KEYS
    want = certified_radius(kappa=0.8, lipschitz=12, r=3.1, classes=10, features=512, epsilon=0.1)
    assert row["delta"] == pytest.approx(float(want.delta), rel=1e-12)
    assert row["saturation"] == pytest.approx(3.1 / 12 * (24 * 0.1 / (10 * 512 * 12**3)) ** (1 / 3), rel=1e-12)
    assert row["first_order"] == 0.0 and row["grad"] == 0.0
    assert row["first_order"] + row["second_order"] + row["third_order"] == pytest.approx(0.1, rel=1e-9)
    assert row["delta"] == pytest.approx(row["r"] * row["feature_step"] / row["lipschitz"], rel=1e-12)
    assert row["classes"] == 10 and isinstance(row["classes"], int)


def test_numbers_table_names_the_radius():
    res = invoke("bound", *NUMBERS, "--epsilon", "0.1")
    assert res.exit_code == 0, res.stderr
    assert "Certified radius" in res.stdout and "0.001672" in res.stdout
    assert res.stderr == ""


def test_grad_adds_the_first_order_term_and_at_minimum_drops_it():
    (plain,) = bound_json(*NUMBERS, "--epsilon", "0.1")["summary"]["radii"]
    (first,) = bound_json(*NUMBERS, "--epsilon", "0.1", "--grad", "5")["summary"]["radii"]
    assert first["grad"] == 5.0 and first["first_order"] > 0 and first["delta"] < plain["delta"]
    assert first["first_order"] == pytest.approx(5.0 * first["feature_step"], rel=1e-12)
    doc = bound_json(*NUMBERS, "--epsilon", "0.1", "--at-minimum")
    assert doc["config"]["at_minimum"] is True
    assert doc["summary"]["radii"][0]["delta"] == plain["delta"]


def test_lists_give_one_row_each_in_product_order():
    rows = bound_json(*NUMBERS, "--epsilon", "0.01,0.1,1")["summary"]["radii"]
    assert [r["epsilon"] for r in rows] == [0.01, 0.1, 1.0]
    assert rows[0]["delta"] < rows[1]["delta"] < rows[2]["delta"]
    args = ["--kappa", "0.1,10", "--lipschitz", "12", "--r", "3.1", "--classes", "10", "--features", "512"]
    rows = bound_json(*args, "--epsilon", "0.01,0.1")["summary"]["radii"]
    assert [(r["kappa"], r["epsilon"]) for r in rows] == [(0.1, 0.01), (0.1, 0.1), (10.0, 0.01), (10.0, 0.1)]
    assert rows[2]["delta"] < rows[0]["delta"]  # sharper, smaller radius


def test_jsonl_and_csv_rows():
    res = invoke("bound", *NUMBERS, "--epsilon", "0.01,0.1,1", "--format", "jsonl")
    assert res.exit_code == 0, res.stderr
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(lines) == 3 and list(lines[0]) == ROW_KEYS
    res = invoke("bound", *NUMBERS, "--epsilon", "0.01,0.1,1", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 3 and list(rows[0]) == ROW_KEYS
    assert float(rows[1]["delta"]) == pytest.approx(lines[1]["delta"], rel=1e-12)


def test_output_file_is_written(tmp_path):
    out = tmp_path / "b.json"
    res = invoke("bound", *NUMBERS, "--epsilon", "0.1", "-f", "json", "-o", str(out))
    assert res.exit_code == 0 and res.stdout == ""
    assert json.loads(out.read_text())["summary"]["radii"][0]["epsilon"] == 0.1


def test_numbers_mode_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from flatcli.cli import app\n"
        f"res = CliRunner().invoke(app, ['bound', *{NUMBERS!r}, '--epsilon', '0.01,0.1', '-f', 'json'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_numbers_mode_answers_fast_from_the_shell():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-m", "flatcli", "bound", *NUMBERS, "--epsilon", "0.1", "-f", "csv"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout.startswith("kappa,lipschitz,")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.5, f"numbers-only mode took {cpu:.2f} s of CPU"  # typically ~0.4 s; CPU time is load-proof


# ------------------------------------------------------------------------------------------------
# --from-json: the sharpness pipeline
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharpness_docs() -> dict[str, str]:
    out = {}
    for norm in ("squared", "plain"):
        res = invoke("sharpness", EXAMPLE, "--limit", "24", "--format", "json", "--weight-norm", norm)
        assert res.exit_code == 0, res.stderr
        out[norm] = res.stdout
    return out


def test_from_json_reads_sharpness_output_from_stdin(sharpness_docs):
    sharp = json.loads(sharpness_docs["squared"])["summary"]
    doc = bound_json("--from-json", "-", "--lipschitz", "12,50", "--epsilon", "0.1", input=sharpness_docs["squared"])
    assert doc["config"]["mode"] == "from-json" and doc["config"]["source"] == "stdin"
    assert doc["config"]["source_checkpoint"] == EXAMPLE or doc["config"]["source_checkpoint"]
    rows = doc["summary"]["radii"]
    assert [r["lipschitz"] for r in rows] == [12.0, 50.0]
    row = rows[0]
    assert row["kappa"] == sharp["relative_sharpness"]["mean"]
    assert row["r"] == sharp["feature_norm_min"]
    assert (row["classes"], row["features"]) == (sharp["classes"], sharp["features"]) == (10, 32)
    assert row["grad"] == pytest.approx(sharp["weight_norm"] * sharp["grad_norm"]["mean"], rel=1e-12)
    want = certified_radius(kappa=row["kappa"], lipschitz=12, r=row["r"], classes=10, features=32, epsilon=0.1, grad=row["grad"])
    assert row["delta"] == pytest.approx(float(want.delta), rel=1e-12)


def test_from_json_converts_plain_weight_norm_to_squared(sharpness_docs, tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(sharpness_docs["plain"])
    res = invoke("bound", "--from-json", str(path), "-L", "12", "--epsilon", "0.1", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert "converted" in res.stderr  # a note, on stderr only
    doc = json.loads(res.stdout)
    assert doc["config"]["source_weight_norm"] == "plain" and "converted" in doc["config"]["kappa_from"]
    squared = bound_json("--from-json", "-", "-L", "12", "--epsilon", "0.1", input=sharpness_docs["squared"])
    assert doc["summary"]["radii"][0]["kappa"] == pytest.approx(squared["summary"]["radii"][0]["kappa"], rel=1e-12)


def test_from_json_at_minimum_and_grad_override(sharpness_docs):
    doc = bound_json("--from-json", "-", "-L", "12", "--epsilon", "0.1", "--at-minimum", input=sharpness_docs["squared"])
    assert doc["summary"]["radii"][0]["grad"] == 0.0
    doc = bound_json("--from-json", "-", "-L", "12", "--epsilon", "0.1", "--grad", "0.5", input=sharpness_docs["squared"])
    assert doc["summary"]["radii"][0]["grad"] == 0.5 and doc["config"]["grad_from"] == "--grad"


@pytest.mark.parametrize(
    "stdin, fragments",
    [
        ("", ["empty"]),
        ("not json", ["not JSON"]),
        ('{"command": "attack", "summary": {}}', ["not `flatrob sharpness", "attack"]),
        ('{"command": "sharpness", "config": {}, "summary": {"weight_norm": 1.0}}', ["relative_sharpness"]),
    ],
)
def test_from_json_refuses_other_input(stdin, fragments):
    assert_one_error(invoke("bound", "--from-json", "-", "-L", "12", "--epsilon", "0.1", input=stdin), *fragments)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([*NUMBERS, "--epsilon", "-0.1"], ["--epsilon", "positive"]),
        ([*NUMBERS, "--epsilon", "0.1,,1"], ["--epsilon"]),
        ([*NUMBERS, "--epsilon", "abc"], ["--epsilon", "abc"]),
        ([*NUMBERS, "--epsilon", "nan"], ["--epsilon"]),
        (NUMBERS, ["--epsilon", "required"]),
        (["--kappa", "0.8", "--lipschitz", "12", "--classes", "10", "--epsilon", "0.1"], ["--r", "--features", "missing"]),
        (["--kappa", "-1", *NUMBERS[2:], "--epsilon", "0.1"], ["--kappa", ">= 0"]),
        ([*NUMBERS[:8], "--features", "2.5", "--epsilon", "0.1"], ["--features", "whole number"]),
        ([*NUMBERS[:2], "--lipschitz", "0", *NUMBERS[4:], "--epsilon", "0.1"], ["--lipschitz", "positive"]),
        ([*NUMBERS[:2], "--lipschitz", "upper", *NUMBERS[4:], "--epsilon", "0.1"], ["upper", "checkpoint"]),
        ([*NUMBERS, "--epsilon", "0.1", "--grad", "1", "--at-minimum"], ["--grad", "--at-minimum"]),
        ([*NUMBERS, "--epsilon", "0.1", "--check"], ["--check", "checkpoint"]),
        ([*NUMBERS, "--epsilon", "0.1", "--limit", "5"], ["--limit", "checkpoint"]),
        ([EXAMPLE, "--kappa", "0.8", "--epsilon", "0.1"], ["--kappa", "checkpoint"]),
        ([EXAMPLE, "--from-json", "-", "--epsilon", "0.1"], ["checkpoint", "--from-json"]),
        ([EXAMPLE, "--epsilon", "0.1", "--lipschitz", "1,2"], ["--lipschitz", "one value"]),
        ([EXAMPLE, "--epsilon", "0.1", "--check-steps", "5"], ["--check-steps", "--check"]),
        ([EXAMPLE, "--epsilon", "0.1", "--loss", "cw"], ["--loss", "--check"]),
        ([*NUMBERS, "--epsilon", "0.1", "--loss", "cw"], ["--loss", "checkpoint"]),
        ([EXAMPLE, "--epsilon", "0.1", "--local-iters", "0"], ["--local-iters", "from 1 to"]),
        ([*NUMBERS, "--epsilon", "0.1", "--local-iters", "5"], ["--local-iters", "checkpoint"]),
        ([EXAMPLE, "--epsilon", "0.1", "--lipschitz", "big"], ["--lipschitz", "big"]),
        (["--from-json", "-", "--kappa", "1", "--lipschitz", "12", "--epsilon", "0.1"], ["--from-json", "--kappa"]),
        (["--from-json", "-", "--epsilon", "0.1"], ["--lipschitz"]),
        (["--from-json", "/nonexistent/s.json", "-L", "3", "--epsilon", "0.1"], ["does not exist"]),
        (["no-such-file.safetensors", "--epsilon", "0.1"], []),
        ([EXAMPLE, "--epsilon", "0.1", "-o", "/nonexistent-dir/b.json"], ["/nonexistent-dir"]),
    ],
)
def test_bad_input_is_one_error_line(args, fragments):
    assert_one_error(invoke("bound", *args), *fragments)


def test_no_file_is_created_on_failure(tmp_path):
    out = tmp_path / "never.json"
    assert_one_error(invoke("bound", *NUMBERS, "--epsilon", "-1", "-f", "json", "-o", str(out)), "--epsilon")
    assert_one_error(invoke("bound", "--from-json", "-", "-L", "3", "--epsilon", "0.1", "-o", str(out), input="[]"))
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Checkpoint mode
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_doc() -> dict:
    return bound_json(EXAMPLE, "--epsilon", "0.1,1", "--limit", "16", "--per-sample", "--local-iters", "10")


def test_checkpoint_json_keys_are_pinned(example_doc):
    doc = example_doc
    assert list(doc) == ["schema_version", "command", "config", "summary", "samples"]
    cfg = doc["config"]
    assert cfg["mode"] == "checkpoint" and cfg["weight_norm"] == "squared" and cfg["lipschitz_kind"] == "upper"
    assert cfg["epsilons"] == [0.1, 1.0] and cfg["at_minimum"] is False and cfg["local_iters"] == 10
    s = doc["summary"]
    assert list(s) == SUMMARY_KEYS
    assert [list(r) for r in s["radii"]] == [RADIUS_KEYS, RADIUS_KEYS]
    assert list(s["assumptions"]) == ["input_norm", "minimum", "feature_norm", "lipschitz"]
    assert list(s["assumptions"]["minimum"]) == [
        "assumed", "grad_norm_mean", "grad_norm_max", "mean_grad_norm", "first_order_term",
    ]
    assert {"used", "kind", "certificate", "upper", "local", "upper_over_local"} <= set(s["lipschitz"])
    assert len(doc["samples"]) == 16 * 2 and list(doc["samples"][0]) == SAMPLE_KEYS


def test_checkpoint_measures_match_sharpness_and_the_solver(example_doc, sharpness_docs):
    s = example_doc["summary"]
    # same first 16 test samples: kappa, r, k, m agree with `flatrob sharpness`
    res = invoke("sharpness", EXAMPLE, "--limit", "16", "--format", "json")
    sharp = json.loads(res.stdout)["summary"]
    assert s["kappa"] == pytest.approx(sharp["relative_sharpness"]["mean"], rel=1e-9)
    assert s["r"] == pytest.approx(sharp["feature_norm_min"], rel=1e-9)
    assert (s["classes"], s["features"], s["n"]) == (10, 32, 16)
    lip = s["lipschitz"]
    assert lip["certificate"] is True and lip["used"] == lip["upper"]
    assert lip["upper"] > 0 and lip["local"] is None and lip["upper_over_local"] is None  # local only when asked
    a = s["assumptions"]
    assert a["input_norm"]["max"] > 1 and a["input_norm"]["holds"] is False  # images: ||x|| <= 1 fails
    assert a["feature_norm"]["min"] == s["r"] and a["lipschitz"]["kind"] == "upper"
    for row in s["radii"]:
        want = certified_radius(
            kappa=s["kappa"], lipschitz=lip["used"], r=s["r"], classes=10, features=32, epsilon=row["epsilon"], grad=s["grad"]
        )
        assert row["delta"] == pytest.approx(float(want.delta), rel=1e-12)
    samples = example_doc["samples"]
    for row in samples[:16]:
        want = certified_radius(
            kappa=row["kappa"], lipschitz=lip["used"], r=row["feature_norm"], classes=10, features=32,
            epsilon=row["epsilon"], grad=row["grad"],
        )
        assert row["delta"] == pytest.approx(float(want.delta), rel=1e-12)
    deltas = [r["delta"] for r in samples if r["epsilon"] == 0.1]
    assert s["radii"][0]["per_sample_delta"]["min"] == pytest.approx(min(deltas))


# ------------------------------------------------------------------------------------------------
# --check on a small MLP trained here
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory) -> Path:
    import torch
    import torch.nn.functional as F
    import yaml
    from safetensors.torch import save_file

    from flatcli.inputs.data import load_data
    from flatcli.models.registry import build_network

    torch.manual_seed(0)
    train = load_data("digits", "train")
    kwargs = {"in_features": 64, "hidden": [32]}
    net = build_network("mlp", num_classes=10, in_channels=1, kwargs=kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(train.x), train.y).backward()
        opt.step()
    spec = {"arch": "mlp", "arch_kwargs": kwargs, "layer": "fc", "num_classes": 10, "input_shape": [1, 8, 8], "data": "digits"}
    path = tmp_path_factory.mktemp("mlp") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"flatrob.spec": yaml.safe_dump(spec)})
    return path


def test_check_with_upper_lipschitz_finds_no_violation(mlp_checkpoint):
    res = invoke("bound", mlp_checkpoint, *FAST, "--epsilon", "0.1,1", "--limit", "64", "--lipschitz", "upper", "--check", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert "VIOLATED" not in res.stderr and "check: no sample" in res.stderr
    s = json.loads(res.stdout)["summary"]
    chk = s["check"]
    assert chk["violations"] == 0 and chk["broken_assumptions"] == [] and chk["caveat"] is None
    for p in chk["per_epsilon"]:
        assert p["violations"] == 0 and 0 <= p["max_loss_increase"] <= p["epsilon"]
    # the attack did move the loss: the check is not vacuous
    assert chk["per_epsilon"][0]["max_loss_increase"] > 1e-3 * 0.1
    assert s["lipschitz"]["upper"] >= s["lipschitz"]["local"]


def test_check_violation_is_loud_and_names_the_assumption(mlp_checkpoint):
    res = invoke("bound", mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "16", "--lipschitz", "0.01", "--check",
                 "--check-steps", "10", "-f", "jsonl", "--quiet")
    assert res.exit_code == 0
    assert "BOUND VIOLATED" in res.stderr and "broken assumption: phi is L-Lipschitz" in res.stderr
    assert "||x|| <= 1" in res.stderr
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert list(rows[0]) == SAMPLE_KEYS + ["loss_increase", "exceeds"]
    assert any(r["exceeds"] for r in rows)


def test_dataset_gradient_term_is_the_norm_of_the_mean_gradient(mlp_checkpoint):
    import torch
    import torch.nn.functional as F

    from flatcli.inputs.data import load_data
    from flatcli.models.loading import load_model

    s = bound_json(mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "16", "--lipschitz", "5")["summary"]
    loaded = load_model(str(mlp_checkpoint))
    test = load_data("digits", "test", 16)
    model = loaded.model.double()
    loss = F.cross_entropy(model(test.x.double()), test.y)
    (g,) = torch.autograd.grad(loss, loaded.head.weight)
    w = loaded.head.weight.detach()
    assert s["assumptions"]["minimum"]["mean_grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    assert s["grad"] == pytest.approx(w.norm().item() * g.norm().item(), rel=1e-5)
    at_min = bound_json(mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "16", "--lipschitz", "5", "--at-minimum")["summary"]
    assert at_min["grad"] == 0.0 and at_min["radii"][0]["delta"] > s["radii"][0]["delta"]
    assert at_min["assumptions"]["minimum"]["first_order_term"] == "dropped (--at-minimum)"


def test_checkpoint_table_and_jsonl(mlp_checkpoint):
    res = invoke("bound", mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "4", "--lipschitz", "7", "-f", "jsonl")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(rows) == 4 and list(rows[0]) == SAMPLE_KEYS
    res = invoke("bound", mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "4", "--lipschitz", "7", "--at-minimum")
    assert res.exit_code == 0, res.stderr
    for title in ("Lipschitz", "Assumptions", "Data-set radius", "Per-sample radii"):
        assert title in res.stdout


def test_check_with_the_margin_loss_still_measures_the_cross_entropy(mlp_checkpoint):
    res = invoke("bound", mlp_checkpoint, *FAST, "--epsilon", "0.1", "--limit", "16", "--check", "--check-steps", "5",
                 "--loss", "cw", "-f", "json", "--quiet")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["config"]["check_loss"] == "cw" and "cw loss" in doc["summary"]["check"]["method"]
    assert doc["summary"]["check"]["per_epsilon"][0]["max_loss_increase"] > 0
def test_a_vision_transformer_gets_a_local_estimate(tmp_path):
    """Double backward through fused attention is not implemented; the local estimate uses the math backend."""
    import torch
    import yaml
    from safetensors.torch import save_file
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    kwargs = {"image_size": 8, "patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}
    net = VisionTransformer(**kwargs, num_classes=10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    save_file({"x": torch.rand(6, 3, 8, 8), "y": torch.randint(0, 10, (6,))}, str(tmp_path / "x.safetensors"))
    (tmp_path / "vit.yaml").write_text(yaml.safe_dump({
        "arch": "torchvision.models.vision_transformer:VisionTransformer", "arch_kwargs": kwargs,
        "layer": "heads.head", "input_shape": [3, 8, 8]}))
    res = invoke("bound", tmp_path / "vit.safetensors", "--spec", tmp_path / "vit.yaml", "--data",
                 f"tensors:{tmp_path / 'x.safetensors'}", "--epsilon", "0.1", "--lipschitz", "local", "-f", "json")
    assert res.exit_code == 0, res.stderr
    lip = json.loads(res.stdout)["summary"]["lipschitz"]
    assert lip["kind"] == "local" and lip["used"] > 0
    res = invoke("bound", tmp_path / "vit.safetensors", "--spec", tmp_path / "vit.yaml", "--data",
                 f"tensors:{tmp_path / 'x.safetensors'}", "--epsilon", "0.1")
    assert_one_error(res, "cannot bound the Lipschitz constant", "as a number (the lipschitz option)")  # no sound rule for LayerNorm
