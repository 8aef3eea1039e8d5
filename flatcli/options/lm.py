"""The language-model options: how a prompt is laid out, which positions of the head count, and GCG's search."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, integer, switch, text
from flatcli.options.curvature import WeightNormOptions

#: Positions whose head curvature is averaged: those predicting the target (GCG's objective), or every one.
POSITIONS = ("target", "all")
#: Precisions a language model's weights are loaded in.
LM_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PromptOptions(Group):
    """How each prompt becomes tokens: the chat template and the system prompt."""

    title = "Prompts"
    key = "prompt"

    chat_template: str = text("auto", "Chat template: auto (the tokenizer's, else none), none (system, goal + "
                              "suffix, target as plain text), vicuna or llama-2 (the fastchat templates the paper's "
                              "authors used), or a .jinja file.", metavar="NAME|FILE")
    system: str | None = text(None, "System prompt placed before the user turn (default: the template's own).")


@dataclass(frozen=True)
class PositionOptions(Group):
    """Which token positions of a language model the head's curvature is averaged over."""

    title = "Language-model head"
    key = "positions"

    positions: str = choice("target", "Average trace_h over the positions that predict the target (the Hessian of "
                            "GCG's objective) or over all positions (the authors' code).", POSITIONS)


@dataclass(frozen=True)
class TokenHeadOptions(PositionOptions, WeightNormOptions):
    """What a language-model run measures: the positions, and the weight factor of relative sharpness
    (``none``, with ``positions="all"``, is the authors' LLM measure)."""


@dataclass(frozen=True)
class LanguageModelOptions(Group):
    """How a causal language model is loaded: precision, and the config and tokenizer of a single file."""

    title = "Language model"
    key = "lm"

    dtype: str = choice("fp32", "Precision the language model's weights are loaded in; the closed forms stay "
                        "float64.", LM_DTYPES)
    config: str | None = text(None, "The config.json of a language model given as a single .safetensors file.",
                              metavar="FILE")
    tokenizer: str | None = text(None, "The tokenizer of a single .safetensors language model: its folder, or its "
                                 "tokenizer.json (with the tokenizer_config.json beside it, if any); replaces a "
                                 "folder's own.", metavar="DIR|FILE")


@dataclass(frozen=True)
class GCGOptions(Group):
    """Greedy coordinate gradient (Zou et al. 2023): candidates from the token gradient, the best one kept."""

    title = "GCG"
    key = "gcg"

    search_width: int = integer(512, "Candidate suffixes evaluated per step.", minimum=1)
    topk: int = integer(256, "Tokens per suffix position taken from the gradient's most negative entries.",
                        minimum=1)
    n_replace: int = integer(1, "Suffix positions replaced in each candidate.", minimum=1)
    suffix_length: int = integer(20, "Tokens of the initial suffix (repeats of --suffix-init's first token when "
                                 "--suffix-init is not given).", minimum=1)
    suffix_init: str | None = text(None, "Initial suffix text (default: '!' tokens, --suffix-length of them; a "
                                   "prompt's own 'suffix' wins).")
    allow_non_ascii: bool = switch(False, "Let candidates use tokens that are not printable ASCII.")
    early_stop: bool = switch(False, "Stop a prompt once greedy decoding reproduces its target.")
    candidate_batch: int = integer(128, "Candidates per forward pass (bounds memory).", minimum=1)
    prefix_cache: bool = switch(True, "Run the tokens before the suffix once and reuse their key/value cache (dropped, "
                                "with a note, when it changes the loss).", negatable=True)
