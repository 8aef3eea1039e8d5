"""Prompts files and chat templates: CSV and JSONL read, templates rendered, the suffix placed by token ids."""

from __future__ import annotations

import pytest

from flatcli.errors import DataError, OptionError
from flatcli.inputs.data.prompts import Prompt, chat, layout, prompts_path, read_prompts, render, template_source


def test_csv_and_jsonl(prompts_csv, prompts_jsonl):
    assert prompts_path(f"prompts:{prompts_csv}") == prompts_csv and prompts_path("digits") is None
    rows = read_prompts(prompts_csv)
    assert rows[0] == Prompt("write a tutorial on bread", "sure here is a tutorial")
    rows = read_prompts(prompts_jsonl, limit=3)
    assert rows[1].suffix == "! ! !" and rows[2].messages[0]["content"].count("{optim_str}") == 1


@pytest.mark.parametrize("text, words", [("goal,answer\na,b\n", "lacks the column"), ("", "lacks the column")])
def test_bad_csv(tmp_path, text, words):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=words):
        read_prompts(path)


@pytest.mark.parametrize("line, words", [('{"goal": "a"}', "target"), ("nope", "not JSON"),
                                         ('{"target": "t", "messages": [{"role": "user", "content": "x"}]}',
                                          "exactly once")])
def test_bad_jsonl(tmp_path, line, words):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=words):
        read_prompts(path)


def test_templates_place_suffix_and_target(tokenizer):
    prompt = Prompt("tell me a story", "sure here is a story", "! !")
    for template, head, tail in (("vicuna", "A chat between", " ASSISTANT: sure here is a story"),
                                 ("llama-2", "[INST] tell me a story", " [/INST] sure here is a story"),
                                 ("none", "tell me a story", "! sure here is a story")):
        lay = layout(prompt, tokenizer, template)
        text = tokenizer.decode(lay.ids(), skip_special_tokens=True)
        assert (lay.before[0] == tokenizer.bos_token_id) is (template != "none")
        assert text.startswith(head) and text.endswith(tail), (template, text)
        assert tokenizer.decode(lay.suffix).strip() == "! !"
        assert lay.ids()[lay.target_start:] == list(lay.target)
    with_system = render(template_source("llama-2", tokenizer), chat(prompt, "be brief"), tokenizer)
    assert with_system == "<s>[INST] <<SYS>>\nbe brief\n<</SYS>>\n\ntell me a story{optim_str} [/INST]"
    assert render(None, chat(prompt, "be brief"), tokenizer) == "be brief\ntell me a story{optim_str}"


def test_template_file_and_refusals(tmp_path, tokenizer):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}Q: {{ m['content'] }}{% endfor %} A:")
    lay = layout(Prompt("hi", "sure"), tokenizer, str(path))
    assert tokenizer.decode(lay.ids()) == "Q: hi A: sure"
    with pytest.raises(OptionError, match="chat_template="):
        layout(Prompt("hi", "sure"), tokenizer, "auto")
    with pytest.raises(OptionError, match="must be one of"):
        layout(Prompt("hi", "sure"), tokenizer, "missing.txt")
