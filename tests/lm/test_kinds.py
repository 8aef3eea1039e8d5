"""The model-kind seam: an image classifier's rows are its images, with the head split's logits and features."""

from __future__ import annotations

import torch

from flatcli.core.curvature import head_measures
from flatcli.core.token_curvature import token_measures
from flatcli.models.kinds import KINDS, CausalLM, ImageClassifier
from flatcli.models.loading import from_module
from flatcli.models.registry import build_network


def test_registry_names_both_kinds():
    assert KINDS == {"image-classifier": ImageClassifier, "causal-lm": CausalLM}
    assert (ImageClassifier.perturbs, CausalLM.perturbs) == ("pixels", "tokens")


def test_image_classifier_rows_are_images():
    torch.manual_seed(0)
    net = build_network("small-cnn", num_classes=5, in_channels=1, kwargs={}).eval()
    kind = ImageClassifier(from_module(net, mean=(0.5,), std=(0.25,)))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        rows = kind.head_batch(x, y)
        expected = net((x - 0.5) / 0.25)
    assert rows.features.shape == (4, kind.head.in_features)
    torch.testing.assert_close(rows.logits, expected)
    assert rows.owner.tolist() == [0, 1, 2, 3] and rows.labels is y
    assert kind.describe_inputs()["kind"] == "image-classifier"


def test_token_measures_in_chunks_equal_the_whole_head():
    """The chunked two-pass form equals :func:`head_measures` on the whole head, whatever the chunk."""
    torch.manual_seed(1)
    phi, w, b = torch.randn(7, 6), torch.randn(23, 6) * 3, torch.randn(23)
    phi[0] *= 40  # a confident row: 1 - p_top formed without cancellation
    y = torch.randint(0, 23, (7,))
    y[0] = int((phi[0] @ w.T + b).argmax())
    whole = head_measures(phi, w, b, y)
    for values in (7, 7 * 5, 7 * 23):
        chunked = token_measures(phi, w, b, y, values=values)
        for key in ("trace_h", "prob_term", "confidence", "loss", "p_true", "feature_norm"):
            torch.testing.assert_close(chunked[key], whole[key], rtol=1e-12, atol=0)
        assert chunked["pred"].tolist() == whole["pred"].tolist()


def test_sequence_means_equal_target_and_all_position_measures():
    from flatcli.core.token_curvature import all_positions_measures, sequence_means, target_measures

    torch.manual_seed(2)
    phi, w = torch.randn(3, 9, 5), torch.randn(31, 5) * 2
    ids = torch.randint(0, 31, (3, 9))
    target, every = sequence_means(phi, w, None, ids, 6, values=50)
    expected = target_measures(phi, w, None, ids, 6)
    for key, value in expected.items():
        torch.testing.assert_close(target[key], value, rtol=1e-12, atol=0)
    for key, value in all_positions_measures(phi, w, None).items():
        torch.testing.assert_close(every[key], value, rtol=1e-12, atol=0)


def test_causal_lm_rows_are_token_positions(tokenizer):
    """A causal LM's rows: one per position, labels the next tokens; the image closed form applies unchanged."""
    from .conftest import tiny_llama

    kind = CausalLM(tiny_llama(len(tokenizer)), tokenizer)
    ids = torch.tensor([[1, 5, 9, 14], [1, 7, 7, 30]])
    with torch.no_grad():
        rows = kind.head_batch(ids)
        logits = kind.model(input_ids=ids).logits
    torch.testing.assert_close(rows.logits, logits.reshape(8, -1))
    assert rows.labels.tolist() == [5, 9, 14, -100, 7, 7, 30, -100] and rows.owner.tolist() == [0] * 4 + [1] * 4
    keep = rows.labels >= 0
    whole = head_measures(rows.features[keep], kind.head.weight, None, rows.labels[keep])
    chunked = token_measures(rows.features[keep], kind.head.weight, None, rows.labels[keep], values=30)
    torch.testing.assert_close(chunked["trace_h"], whole["trace_h"], rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked["loss"], whole["loss"], rtol=1e-12, atol=0)
    assert kind.describe_inputs()["perturbs"] == "tokens"


def test_features_stop_at_the_head_after_the_checked_pass(tokenizer):
    """The first pass runs the whole model (the head check); later ones end at the head's input, equal to the
    whole pass's, without running the head."""
    from .conftest import tiny_llama

    kind = CausalLM(tiny_llama(len(tokenizer)), tokenizer)
    ids = torch.tensor([[1, 5, 9, 14], [1, 7, 7, 30]])
    calls = []
    kind.head.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    with torch.no_grad():
        first = kind.features(ids)
        later = kind.features(ids)
    assert len(calls) == 1  # the head ran in the checked pass only
    torch.testing.assert_close(later, first, rtol=0, atol=0)


def test_closed_form_head_is_a_float64_copy_only_within_the_chunk_budget(tokenizer, monkeypatch):
    """Within :data:`CHUNK_VALUES` the closed forms read a float64 copy made once; beyond it the head's own
    tensors (converted chunk by chunk); the measures are the same either way."""
    from flatcli.core import token_curvature
    from flatcli.core.token_curvature import sequence_means

    from .conftest import tiny_llama

    model = tiny_llama(len(tokenizer))
    small, large = CausalLM(model, tokenizer), CausalLM(model, tokenizer)
    w, b = small.closed_form_head()
    assert w.dtype == torch.float64 and small.closed_form_head()[0] is w and b is None
    torch.testing.assert_close(w, model.lm_head.weight.double(), rtol=0, atol=0)
    monkeypatch.setattr(token_curvature, "CHUNK_VALUES", model.lm_head.weight.numel() - 1)
    own = large.closed_form_head()[0]
    assert own.dtype == torch.float32 and own.data_ptr() == model.lm_head.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 14, 22, 3]])
    with torch.no_grad():
        phi = small.features(ids)
    one = sequence_means(phi, *small.closed_form_head(), ids, 3)
    other = sequence_means(phi, *large.closed_form_head(), ids, 3)
    for a, c in zip(one, other):
        for key in a:
            torch.testing.assert_close(a[key], c[key], rtol=0, atol=0)
