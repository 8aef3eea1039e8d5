"""A causal language model given as one .safetensors file with its --config and --tokenizer: the folder's numbers."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

import flatcli.api as fr
from flatcli.cli import app
from flatcli.errors import CheckpointError, OptionError
from flatcli.options.lm import LanguageModelOptions
from tests.conftest import assert_one_error


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", params=["single", "tied"])
def single_file(request, lm_folders, tmp_path_factory):
    """``(folder, weights, config, tokenizer folder)``: a folder's model as loose files under other names."""
    folder = lm_folders[request.param]
    root = tmp_path_factory.mktemp("loose")
    weights, config, tok = root / "weights.safetensors", root / "llama.json", root / "tok"
    shutil.copy(folder / "model.safetensors", weights)
    shutil.copy(folder / "config.json", config)
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, tok / name)
    return folder, weights, config, tok


def test_a_single_file_with_config_and_tokenizer_gives_the_folders_numbers(single_file, prompts_csv):
    folder, weights, config, tok = single_file
    data = f"prompts:{prompts_csv}"
    whole = fr.sharpness(str(folder), data, chat_template="none")
    for tokenizer in (tok, tok / "tokenizer.json"):
        loose = fr.sharpness(str(weights), data, config=str(config), tokenizer=str(tokenizer), chat_template="none")
        assert loose.samples == whole.samples and loose.summary == whole.summary
        assert loose.config["checkpoint"] == str(weights) and loose.config["tied"] == whole.config["tied"]


def test_the_cli_reads_a_single_file_for_sharpness_attack_and_inspect(single_file, prompts_csv, tmp_path):
    folder, weights, config, tok = single_file
    loose = ("--config", config, "--tokenizer", tok)
    gcg = ("--attack", "gcg", "--data", f"prompts:{prompts_csv}", "--limit", 1, "--steps", 1, "--search-width", 4,
           "--topk", 4, "--suffix-length", 2, "--chat-template", "none", "-f", "json", "-q")
    a, b = invoke("attack", weights, *loose, *gcg), invoke("attack", folder, *gcg)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout)["summary"] == json.loads(b.stdout)["summary"]
    res = invoke("inspect", weights, *loose, "-f", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["vocabulary"] == 120


def test_lm_weights_without_config_say_what_is_missing(single_file, prompts_csv):
    _, weights, config, _ = single_file
    for args in (("sharpness", weights, "--data", f"prompts:{prompts_csv}"), ("inspect", weights)):
        assert_one_error(invoke(*args), "--config and --tokenizer are needed", "causal language model's weights")
    assert_one_error(invoke("sharpness", weights), "a language model reads prompts")
    assert_one_error(invoke("inspect", weights, "--config", config), "--tokenizer is needed")
    assert_one_error(invoke("inspect", weights, "--tokenizer", config.parent / "tok"), "--config is needed")


def test_image_checkpoints_are_unchanged_and_refuse_the_language_options():
    res = invoke("inspect", "example:digits-cnn", "-f", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]
    assert_one_error(invoke("inspect", "example:digits-cnn", "--tokenizer", "x"), "--tokenizer do not apply to an "
                     "image classifier")


def test_the_files_read_are_inputs_no_output_may_replace(single_file, prompts_csv):
    _, weights, config, tok = single_file
    base = ("sharpness", weights, "--config", config, "--tokenizer", tok / "tokenizer.json", "--data",
            f"prompts:{prompts_csv}", "-f", "json")
    for target, name in ((config, "--config file"), (tok / "tokenizer_config.json", "--tokenizer file"),
                         (prompts_csv, "--data file"), (weights, "checkpoint")):
        before = target.read_bytes()
        assert_one_error(invoke(*base, "-o", target), name)
        assert target.read_bytes() == before


def test_a_single_file_is_held_to_the_folders_rules(single_file, tmp_path, tokenizer):
    folder, weights, config, tok = single_file
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps({**json.loads(config.read_text()),
                                  "auto_map": {"AutoModelForCausalLM": "modeling_loose_flatrob.EvilForCausalLM"}}))
    (tmp_path / "modeling_loose_flatrob.py").write_text("raise SystemExit('imported')\n")
    with pytest.raises(CheckpointError, match="auto_map"):
        fr.inspect(str(weights), config=str(remote), tokenizer=str(tok))
    assert not any("modeling_loose_flatrob" in name for name in sys.modules)
    with pytest.raises(OptionError, match="config= goes with a single .safetensors file"):
        fr.inspect(str(folder), config=str(config))
    with pytest.raises(OptionError, match="tokenizer= is given twice"):
        fr.sharpness(str(weights), "prompts:x.csv", LanguageModelOptions(tokenizer=str(tok)), tokenizer=tokenizer)
    with pytest.raises(OptionError, match="tokenizer= .* is neither a folder nor a file"):
        fr.inspect(str(weights), config=str(config), tokenizer=str(tmp_path / "absent"))
