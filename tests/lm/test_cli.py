"""Language models through the CLI and the API: the same commands as for images, dispatched by the model kind."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import flatcli.api as fr
from flatcli.cli import app
from flatcli.errors import OptionError
from flatcli.runs.lm_sharpness import lm_sharpness, open_run
from tests.conftest import assert_one_error


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_sharpness_of_a_folder_on_prompts_is_the_library_run(lm_folders, prompts_csv):
    res = invoke("sharpness", lm_folders["single"], "--data", f"prompts:{prompts_csv}", "--chat-template", "none",
                 "--positions", "all", "--weight-norm", "none", "-f", "json", "--per-sample", "-q")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["command"] == "sharpness" and doc["config"]["positions"] == "all"
    assert doc["config"]["weight_norm"] == "none" and doc["config"]["tied"] is False
    from flatcli.options.lm import PromptOptions, TokenHeadOptions

    kind, prompts = open_run(str(lm_folders["single"]), f"prompts:{prompts_csv}")
    direct = lm_sharpness(kind, prompts, prompt=PromptOptions(chat_template="none"),
                          head=TokenHeadOptions(positions="all", weight_norm="none"), keep_samples=True)
    assert [r["trace_h"] for r in doc["samples"]] == pytest.approx([r["trace_h"] for r in direct.samples], rel=1e-12)
    assert all(r["input_ids"] and r["target_start"] > 0 for r in doc["samples"])


def test_gcg_through_the_cli_writes_its_trajectory_and_figure(lm_folders, prompts_csv, tmp_path):
    pytest.importorskip("matplotlib")
    path, figure = tmp_path / "gcg.jsonl", tmp_path / "fig15.png"
    res = invoke("attack", lm_folders["tied"], "--attack", "gcg", "--data", f"prompts:{prompts_csv}", "--limit", 1,
                 "--steps", 2, "--search-width", 8, "--topk", 4, "--suffix-length", 3, "--chat-template", "none",
                 "--trajectory", path, "--plot", figure, "-q")
    assert res.exit_code == 0, res.output
    from matplotlib.image import imread

    assert imread(str(figure)).shape[1] == 10 * 120  # two panels, loss and sharpness (Fig. 15)
    assert "GCG on a language model" in res.stdout
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["sample"] == 0 for r in rows)
    assert rows[-1]["loss"] <= rows[0]["loss"]


def test_inspect_reports_the_language_model(lm_folders):
    res = invoke("inspect", lm_folders["tied"], "-f", "json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"]
    assert summary["tied"] is True and summary["vocabulary"] > 0 and summary["head_weight_norm"] > 0


@pytest.mark.parametrize("args, fragment", [
    (("--layers", "x"), "--layers do not apply to a language model"),
    (("--attack", "pgd"), "a language model is attacked by gcg"),
    (("--eps", "0.1"), "--eps do not apply to GCG"),
])
def test_image_options_are_refused_for_a_language_model(lm_folders, prompts_csv, args, fragment):
    res = invoke("attack", lm_folders["single"], "--data", f"prompts:{prompts_csv}", *args)
    assert_one_error(res, fragment)


def test_language_options_are_refused_for_an_image_classifier():
    res = invoke("sharpness", "example:digits-cnn", "--positions", "all", "--limit", 4)
    assert_one_error(res, "--positions do not apply to an image classifier")
    res = invoke("attack", "example:digits-cnn", "--attack", "gcg", "--limit", 4)
    assert_one_error(res, "--attack gcg attacks a causal language model's prompts")


def test_the_api_takes_an_in_memory_model_with_its_tokenizer(lm_folders, prompts_csv, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_folders["single"], local_files_only=True)
    from_memory = fr.sharpness(model, f"prompts:{prompts_csv}", tokenizer=tokenizer, chat_template="none")
    from_folder = fr.sharpness(str(lm_folders["single"]), f"prompts:{prompts_csv}", chat_template="none")
    assert from_memory.summary["trace_h"]["mean"] == pytest.approx(from_folder.summary["trace_h"]["mean"], rel=1e-6)
    with pytest.raises(OptionError, match="tokenizer="):
        fr.sharpness(model, f"prompts:{prompts_csv}")
