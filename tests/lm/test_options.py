"""The language-model option groups check themselves and name the option, never a flag."""

from __future__ import annotations

import pytest

from flatcli.errors import OptionError
from flatcli.options.lm import GCGOptions, LanguageModelOptions, PromptOptions, TokenHeadOptions


@pytest.mark.parametrize("make, words", [
    (lambda: GCGOptions(search_width=0), "search_width= must be at least 1, got 0"),
    (lambda: GCGOptions(topk=-1), "topk= must be at least 1"),
    (lambda: TokenHeadOptions(positions="some"), "positions= must be one of target, all"),
    (lambda: TokenHeadOptions(weight_norm="cubed"), "weight_norm= must be one of squared, plain, none"),
    (lambda: LanguageModelOptions(dtype="fp8"), "dtype= must be one of fp32, bf16, fp16"),
    (lambda: GCGOptions(early_stop="yes"), "early_stop= must be True or False"),
])
def test_bad_values_name_the_option(make, words):
    with pytest.raises(OptionError, match=words):
        make()


def test_defaults_are_the_authors_settings():
    g = GCGOptions()
    assert (g.search_width, g.topk, g.n_replace, g.suffix_length, g.allow_non_ascii) == (512, 256, 1, 20, False)
    assert PromptOptions().chat_template == "auto" and TokenHeadOptions().positions == "target"
    error = OptionError("search_width", "{} must be at least 1, got 0")
    assert error.worded(lambda name: "--" + name.replace("_", "-")).startswith("--search-width")
