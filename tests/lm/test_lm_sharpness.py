"""Per-token head sharpness of a causal LM equals the float64 autograd Hessian of the mean target cross-entropy."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from flatcli.errors import CheckpointError, LayerError
from flatcli.inputs.data.prompts import read_prompts
from flatcli.models.kinds import CausalLM
from flatcli.options.lm import PromptOptions, TokenHeadOptions
from flatcli.runs.lm_sharpness import lm_sharpness


def oracle_trace(model, ids: list[int], target_start: int, position: int | None = None) -> float:
    """Tr of the Hessian w.r.t. the head of the mean target cross-entropy (of the target token at ``position``
    only, when given), features from the model's last hidden state held fixed, by
    ``torch.autograd.functional.hessian`` in float64."""
    x = torch.tensor([ids])
    with torch.no_grad():
        phi = model(input_ids=x, output_hidden_states=True).hidden_states[-1][0].double()
    rows = slice(target_start - 1, len(ids) - 1) if position is None else slice(position - 1, position)
    targets = x[0, target_start:] if position is None else x[0, position:position + 1]
    w0 = model.lm_head.weight.detach().double()

    def loss(w):
        return F.cross_entropy(phi[rows] @ w.T, targets)

    h = torch.autograd.functional.hessian(loss, w0, vectorize=True)
    n = w0.numel()
    return float(h.reshape(n, n).diagonal().sum())


@pytest.mark.parametrize("name", ["single", "sharded", "tied"])
def test_trace_equals_autograd_hessian(lm_folders, prompts_csv, name):
    kind = CausalLM.from_folder(lm_folders[name])
    prompts = read_prompts(prompts_csv)
    result = lm_sharpness(kind, prompts, prompt=PromptOptions(chat_template="vicuna"), keep_samples=True)
    assert result.config["tied"] is (name == "tied")
    for row in result.samples:
        expected = oracle_trace(kind.model, row["input_ids"], row["target_start"])
        assert row["trace_h"] == pytest.approx(expected, rel=1e-10)
        norm_sq = float((kind.head.weight.detach().double() ** 2).sum())
        assert row["relative_sharpness"] == pytest.approx(norm_sq * expected, rel=1e-10)
    assert result.summary["n"] == 3 and result.summary["vocabulary"] == len(kind.tokenizer)
    row = result.samples[0]
    assert len(row["trace_h_tokens"]) == row["target_length"]
    for t, value in enumerate(row["trace_h_tokens"]):
        position = row["target_start"] + t
        assert value == pytest.approx(oracle_trace(kind.model, row["input_ids"], row["target_start"], position),
                                      rel=1e-10)


def test_float32_model_within_1e6_of_float64_oracle(lm_folders, prompts_csv):
    kind = CausalLM.from_folder(lm_folders["single"])
    rows = lm_sharpness(kind, read_prompts(prompts_csv), prompt=PromptOptions(chat_template="llama-2"),
                        keep_samples=True).samples
    exact = CausalLM.from_folder(lm_folders["single"], dtype="fp64")
    for row in rows:
        assert row["trace_h"] == pytest.approx(oracle_trace(exact.model, row["input_ids"], row["target_start"]),
                                               rel=1e-6)


def test_sharded_equals_single_and_rows_recompute(lm_folders, prompts_jsonl):
    assert (lm_folders["sharded"] / "model.safetensors.index.json").is_file()
    prompts = read_prompts(prompts_jsonl)
    results = [lm_sharpness(CausalLM.from_folder(lm_folders[n]), prompts, keep_samples=True)
               for n in ("single", "sharded")]
    assert results[0].samples == results[1].samples
    assert results[0].config["chat_template"] == "none"  # auto without a template of the tokenizer's own
    model = CausalLM.from_folder(lm_folders["single"]).model
    for row in results[0].samples:
        x = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].double()
        ts = row["target_start"]
        assert row["loss"] == pytest.approx(float(F.cross_entropy(logits[ts - 1:-1], x[0, ts:])), rel=1e-5)


def test_all_positions_without_weight_norm_is_the_authors_measure(lm_folders, prompts_csv):
    kind = CausalLM.from_folder(lm_folders["single"])
    prompts = read_prompts(prompts_csv)
    rows = lm_sharpness(kind, prompts, head=TokenHeadOptions(positions="all", weight_norm="none"),
                        keep_samples=True).samples
    for row in rows:
        x = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            out = kind.model(input_ids=x, output_hidden_states=True)
        p = torch.softmax(out.logits[0].double(), -1)
        phi = out.hidden_states[-1][0].double()
        expected = ((p * (1 - p)).sum(-1) * (phi * phi).sum(-1)).mean()
        assert row["trace_h"] == row["relative_sharpness"] == pytest.approx(float(expected), rel=1e-6)
        assert row["trace_h"] == row["trace_h_all_positions"]


def test_logit_soft_capping_is_refused(tmp_path, tokenizer, prompts_csv):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, head_dim=4, final_logit_softcapping=0.5)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(LayerError, match="soft-capping"):
        lm_sharpness(CausalLM.from_folder(tmp_path), read_prompts(prompts_csv))


def copied(source, folder) -> dict:
    """A copy of the model folder ``source`` at ``folder``; its config."""
    folder.mkdir(parents=True)
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return json.loads((folder / "config.json").read_text())


def test_remote_code_refused_and_never_imported(tmp_path, lm_folders):
    folder = tmp_path / "remote"
    config = copied(lm_folders["single"], folder)
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil_flatrob.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil_flatrob.py").write_text("raise SystemExit('imported')\n")
    with pytest.raises(CheckpointError, match="auto_map"):
        CausalLM.from_folder(folder)
    assert not any("modeling_evil_flatrob" in name for name in sys.modules)


def test_unknown_architecture_and_pickles_refused(tmp_path, lm_folders):
    folder = tmp_path / "odd"
    config = copied(lm_folders["single"], folder)
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["EvilForCausalLM"]}))
    with pytest.raises(CheckpointError, match="does not ship"):
        CausalLM.from_folder(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        CausalLM.from_folder(folder)


def test_in_memory_model_and_folder_dispatch(lm_folders, tokenizer, prompts_csv, tmp_path):
    from flatcli.errors import OptionError
    from flatcli.models.kinds.hf_folder import is_causal_lm_folder

    from .conftest import tiny_llama

    assert is_causal_lm_folder(lm_folders["single"]) and not is_causal_lm_folder(tmp_path)
    model = tiny_llama(len(tokenizer))
    with pytest.raises(OptionError, match="give tokenizer="):
        CausalLM.open(model)
    with pytest.raises(OptionError, match="dtype= must be one of"):
        CausalLM.open(lm_folders["single"], dtype="fp8")
    result = lm_sharpness(CausalLM.open(model, tokenizer), read_prompts(prompts_csv), keep_samples=True)
    on_disk = lm_sharpness(CausalLM.open(lm_folders["single"]), read_prompts(prompts_csv), keep_samples=True)
    for a, b in zip(result.samples, on_disk.samples):  # sdpa in memory, eager from the folder
        assert a["input_ids"] == b["input_ids"] and a["trace_h"] == pytest.approx(b["trace_h"], rel=1e-5)
    assert result.notes and "no chat template" in result.notes[0]
    assert result.config["checkpoint"] == "in-memory LlamaForCausalLM"


def test_hub_reference_from_the_local_cache_only(lm_folders, tmp_path):
    from flatcli.models.kinds.hf_folder import resolve

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    copied(lm_folders["single"], snapshot)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    assert resolve("hf-hub:org/tiny", cache_dir=tmp_path) == snapshot
    with pytest.raises(CheckpointError, match="local hub cache"):
        resolve("hf-hub:org/absent", cache_dir=tmp_path)


def test_inspect_reports_the_head(lm_folders):
    info = CausalLM.from_folder(lm_folders["tied"]).inspect()
    weight = CausalLM.from_folder(lm_folders["tied"]).model.get_input_embeddings().weight.detach().double()
    assert info["tied"] is True and info["chat_template"] is False and info["dtype"] == "float32"
    assert (info["vocabulary"], info["hidden"]) == tuple(weight.shape)
    assert info["head_weight_norm"] == pytest.approx(float(weight.norm()), rel=1e-12)
    assert info["architecture"] == "LlamaForCausalLM"


def test_open_run_reads_model_and_prompts(lm_folders, prompts_csv):
    from flatcli.errors import OptionError
    from flatcli.runs.lm_sharpness import open_run

    kind, prompts = open_run(str(lm_folders["single"]), f"prompts:{prompts_csv}", limit=2)
    assert len(prompts) == 2 and kind.head.out_features == len(kind.tokenizer)
    with pytest.raises(OptionError, match="data= prompts:FILE"):
        open_run(str(lm_folders["single"]), "digits")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_models(lm_folders, prompts_csv, dtype):
    """Weights in half precision: the closed form still runs in float64 on the captured features, near fp32's."""
    prompts = read_prompts(prompts_csv)
    half = lm_sharpness(CausalLM.from_folder(lm_folders["single"], dtype=dtype), prompts, keep_samples=True)
    full = lm_sharpness(CausalLM.from_folder(lm_folders["single"]), prompts, keep_samples=True)
    assert half.config["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    for a, b in zip(half.samples, full.samples):
        assert a["trace_h"] == pytest.approx(b["trace_h"], rel=5e-2)
