"""nanoGCG 0.3.0 as the reference for flatrob's GCG on a tiny Llama: the same prompt layout and forbidden tokens,
the same loss of a given suffix (GCG's and ``sharpness``'s), the same token gradient, and, from the same random
draws, the same step.

nanoGCG runs with its prefix cache off: on, 0.3.0 fails on transformers 5 (``'DynamicCache' object is not
subscriptable``, it indexes the cache as a tuple of layers). flatrob is checked with its own prefix cache on and off.
nanoGCG pins transformers <= 4.47.1, a pin stale for what is used here: ``make test`` installs it ``--no-deps``.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from flatcli.core.gcg import GCG, Search
from flatcli.inputs.data.prompts import Prompt, layout
from flatcli.models.kinds import CausalLM
from flatcli.runs.lm_attack import not_allowed_tokens, survives_retokenizing
from flatcli.runs.lm_sharpness import sequence_measures

from .conftest import GOALS, tiny_llama

nanogcg = pytest.importorskip("nanogcg.gcg", reason="nanoGCG is not installed (make test installs it: "
                              "pip install --no-deps nanogcg==0.3.0)")

GOAL, TARGET = GOALS[0]
INIT = "! ! ! ! !"
SEARCH = Search(search_width=48, topk=12, n_replace=1, candidate_batch=48)
SEED = 5
#: A chat template ending in a non-space (flatrob then puts a space before the target, as nanoGCG's
#: ``add_space_before_target``) that writes the BOS token as text (nanoGCG strips it and lets the tokenizer add it).
TEMPLATE = "{{ bos_token }}{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}ASSISTANT:"


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    """The tests' tokenizer with a chat template and, as Llama's, a BOS token added when encoding with special
    tokens."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A",
                                                              special_tokens=[("<s>", tok.bos_token_id)])
    return tok


@pytest.fixture(scope="module")
def kind(chat_tokenizer):
    return CausalLM(tiny_llama(len(chat_tokenizer)), chat_tokenizer)


@pytest.fixture(scope="module")
def reference(kind):
    """nanoGCG after one step from :data:`INIT` with torch's global generator seeded :data:`SEED` (restored after),
    and its result."""
    logging.getLogger("nanogcg").setLevel(logging.ERROR)
    config = nanogcg.GCGConfig(num_steps=1, optim_str_init=INIT, search_width=SEARCH.search_width, topk=SEARCH.topk,
                               n_replace=SEARCH.n_replace, use_prefix_cache=False, add_space_before_target=True,
                               verbosity="ERROR")
    ref = nanogcg.GCG(kind.model, kind.tokenizer, config)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        result = ref.run(GOAL, TARGET)
    return ref, result


@pytest.fixture(scope="module")
def lay(kind):
    return layout(Prompt(GOAL, TARGET), kind.tokenizer, "auto", suffix=INIT)


def ours(kind, lay, prefix: bool) -> GCG:
    return GCG(kind.features, kind.head, kind.model.get_input_embeddings(), lay.before, lay.after, lay.target, SEARCH,
               not_allowed=not_allowed_tokens(kind.tokenizer, kind.head.out_features),
               keep=survives_retokenizing(kind.tokenizer), prefix=kind.prefix if prefix else None)


def suffixes(kind, lay, n: int = 6) -> torch.Tensor:
    """The initial suffix and ``n - 1`` random ones of allowed tokens."""
    allowed = torch.tensor(sorted(set(range(kind.head.out_features)) -
                                  set(not_allowed_tokens(kind.tokenizer, kind.head.out_features).tolist())))
    g = torch.Generator().manual_seed(0)
    rand = allowed[torch.randint(0, len(allowed), (n - 1, len(lay.suffix)), generator=g)]
    return torch.cat([torch.tensor([lay.suffix]), rand])


def test_same_layout_and_forbidden_tokens(kind, lay, reference):
    ref, _ = reference
    embed = kind.model.get_input_embeddings()
    with torch.no_grad():
        assert torch.equal(embed(torch.tensor([lay.before])), ref.before_embeds)
        assert torch.equal(embed(torch.tensor([lay.after])), ref.after_embeds)
    assert lay.before[0] == kind.tokenizer.bos_token_id
    assert list(lay.target) == ref.target_ids[0].tolist()
    assert list(lay.suffix) == kind.tokenizer(INIT, add_special_tokens=False)["input_ids"]
    assert set(not_allowed_tokens(kind.tokenizer, kind.head.out_features).tolist()) == set(ref.not_allowed_ids.tolist())


@pytest.mark.parametrize("prefix", [False, True], ids=["full", "prefix-cache"])
def test_loss_of_a_suffix_equals_nanogcg(kind, lay, reference, prefix):
    """nanoGCG's candidate losses (float32 logits) on the same input embeddings = flatrob's (float64 from phi), both
    GCG's and the ``sharpness`` command's."""
    ref, _ = reference
    cands = suffixes(kind, lay)
    b = len(cands)
    with torch.no_grad():
        embeds = torch.cat([ref.before_embeds.repeat(b, 1, 1), ref.embedding_layer(cands),
                            ref.after_embeds.repeat(b, 1, 1), ref.target_embeds.repeat(b, 1, 1)], dim=1)
        expected = ref._compute_candidates_loss_original(b, embeds).double()
    gcg = ours(kind, lay, prefix)
    gcg.suffix_length = cands.shape[1]
    measured, _ = gcg.measure(cands)
    assert measured["loss"].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert len(set(expected.tolist())) == b  # distinct suffixes, distinct losses: the comparison has teeth
    rows = sequence_measures(kind, torch.tensor([lay.ids(c.tolist()) for c in cands]), lay.target_start, 1.0, "target")
    assert [r["loss"] for r in rows] == pytest.approx(expected.tolist(), rel=1e-5)


@pytest.mark.parametrize("prefix", [False, True], ids=["full", "prefix-cache"])
def test_token_gradient_equals_nanogcg(kind, lay, reference, prefix):
    ref, _ = reference
    gcg = ours(kind, lay, prefix)
    gcg.suffix_length = len(lay.suffix)
    for suffix in suffixes(kind, lay, 3):
        expected = ref.compute_token_gradient(suffix[None])[0]
        got = gcg.gradient(suffix)
        assert got.shape == expected.shape == (len(lay.suffix), kind.head.out_features)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_one_step_picks_nanogcgs_candidate(kind, lay, reference):
    """Seeded alike (a generator vs torch's global one), both draw the same candidates, keep those that survive
    retokenising, and move to the same suffix of the same loss."""
    _, result = reference
    steps = list(ours(kind, lay, prefix=False).run(torch.tensor(lay.suffix), 1, torch.Generator().manual_seed(SEED)))
    assert steps[1].suffix != list(lay.suffix)
    assert kind.tokenizer.decode(steps[1].suffix) == result.strings[0]
    assert steps[1].measures["loss"] == pytest.approx(result.losses[0], rel=1e-5)
