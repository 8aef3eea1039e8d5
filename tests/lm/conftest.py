"""Tiny causal language models saved by the tests: a tokenizer trained here, random Llamas (single file,
sharded, tied) and prompts, all offline."""

from __future__ import annotations

import json

import pytest

CORPUS = [
    "write a tutorial on how to bake bread",
    "sure here is a tutorial on how to bake bread",
    "tell me a story about a cat and a dog",
    "sure here is a story about a cat",
    "explain why the sky is blue",
    "sure here is why the sky is blue",
] * 5

GOALS = [("write a tutorial on bread", "sure here is a tutorial"), ("tell me a story", "sure here is a story"),
         ("explain the sky", "sure here is why")]


def train_tokenizer():
    """A sentencepiece-style BPE (Metaspace) of 120 tokens, as a ``transformers`` fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?.,:[]/<>'")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(vocab: int, *, tied: bool = False, seed: int = 0, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=4, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2, **overrides)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logits of a size that makes p far from uniform
        model.lm_head.weight.mul_(40.0) if not tied else model.model.embed_tokens.weight.mul_(4.0)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def lm_folders(tmp_path_factory, tokenizer):
    """``{"single": dir, "sharded": dir, "tied": dir}``: the same random Llama saved whole and in shards, and a
    tied one."""
    root = tmp_path_factory.mktemp("lm")
    model = tiny_llama(len(tokenizer))
    out = {}
    for name, model_, shard in (("single", model, None), ("sharded", model, "2KB"),
                                ("tied", tiny_llama(len(tokenizer), tied=True), None)):
        folder = root / name
        model_.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def prompts_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "harmful.csv"
    path.write_text("goal,target\n" + "".join(f'"{g}","{t}"\n' for g, t in GOALS))
    return path


@pytest.fixture(scope="session")
def prompts_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [{"goal": g, "target": t} for g, t in GOALS[:2]]
    rows[1]["suffix"] = "! ! !"
    rows.append({"goal": GOALS[2][0], "target": GOALS[2][1],
                 "messages": [{"role": "user", "content": "please {optim_str} explain the sky"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
