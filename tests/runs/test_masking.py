"""Is it robust or masked? The D.3 masking on the bundled example and on a CNN trained here, and why the
margin loss is immune to it (flatcli.runs.sweep diagnostics, flatcli.core.attack_losses)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flatcli.core.attacks import make_attack
from flatcli.core.head_scaling import Scaling
from flatcli.inputs.data import load_data
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model
from flatcli.runs.sweep import SweepSettings, sweep_scale
from tests.conftest import EXAMPLE, run_context

SCALES = (1.0, 100.0)
PER_SCALE = {"attack_eps": 0.1, "attack_alpha": 0.025}  # 8x8 digits barely move at 8/255


@pytest.fixture(scope="module")
def example():
    return load_model(EXAMPLE, device="cpu")


@pytest.fixture(params=["example", "trained"])
def model(request, example, trained_cnn):
    return example if request.param == "example" else trained_cnn


@pytest.fixture(scope="module")
def data():
    return load_data("digits", "test", limit=80)


def test_ce_pgd_is_masked_at_s100_and_the_verdict_says_so(model, data):
    settings = dataclasses.replace(SweepSettings.from_options(scales=SCALES, steps=1, **PER_SCALE), examples=0)
    one, hundred = sweep_scale(run_context(model, data), settings).summary["scales"]
    # CE-PGD fails at s=100: robust accuracy is near clean accuracy, the first-step gradients are zero
    assert hundred["robust_accuracy"] >= hundred["clean_accuracy"] - 0.05
    assert hundred["robust_accuracy"] > one["robust_accuracy"] + 0.4
    assert hundred["zero_grad_fraction"] > 0.8 and one["zero_grad_fraction"] == 0
    # the margin loss is not fooled: within a few points of its s=1 value (the same, in fact)
    assert abs(hundred["robust_accuracy_cw"] - one["robust_accuracy_cw"]) <= 0.03
    assert hundred["robust_accuracy_cw"] < hundred["robust_accuracy"] - 0.4
    assert hundred["masking"] is True and "margin-loss PGD" in hundred["masking_reason"]
    assert "transfer from s=1" in hundred["masking_reason"] and "gradients are zero" in hundred["masking_reason"]
    assert one["masking"] is False and one["masking_reason"] is None
    # flat by the median: scaling does not sharpen the network
    assert hundred["sharpness_median"] < 1e-100 < one["sharpness_median"]


@pytest.mark.parametrize("norm, loss", [("linf", "cw"), ("linf", "dlr"), ("l2", "cw"), ("l2", "dlr")])
def test_margin_loss_pgd_makes_the_same_adversarials_at_every_scale(model, data, norm, loss):
    """With the bias scaled the logits are s z: sign(s g) = sign(g) and s g / ||s g|| = g / ||g||, so PGD on a
    margin loss walks the same path at every s, up to float rounding (s W phi is not s (W phi) to the last bit)."""
    eps, alpha = (0.1, 0.025) if norm == "linf" else (0.5, 0.1)
    attack = make_attack("pgd", "uncanny", norm=norm, eps=eps, alpha=alpha, loss=loss)
    x, y = data.x, data.y
    with HeadSplit(model.model, model.head, model.layer) as split:
        reference = attack.run(split, x, y).x_adv
        for s in (2.5, 10.0, 100.0):
            adv = attack.run(split.with_scaling(Scaling(s)), x, y).x_adv
            torch.testing.assert_close(adv, reference, rtol=0, atol=1e-5)
        ce = make_attack("pgd", "uncanny", norm=norm, eps=eps, alpha=alpha, loss="ce")
        stalled = ce.run(split.with_scaling(Scaling(100.0)), x, y).x_adv  # the cross-entropy's does not
        assert (stalled - ce.run(split, x, y).x_adv).abs().amax() > 0.01


def test_square_is_scale_invariant_and_leaves_the_global_generator_alone(trained_cnn, data):
    pytest.importorskip("torchattacks")
    square = make_attack("square", "uncanny", eps=0.1, queries=60)
    x, y = data.x[:30], data.y[:30]
    state = torch.random.get_rng_state()
    with HeadSplit(trained_cnn.model, trained_cnn.head, trained_cnn.layer) as split:
        gen = [torch.Generator().manual_seed(5) for _ in range(2)]
        a = square.run(split, x, y, generator=gen[0], record=True)
        b = square.run(split.with_scaling(Scaling(100.0)), x, y, generator=gen[1])
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)
    assert (a.x_adv - x).abs().amax() <= 0.1 + 1e-6 and a.phi.shape[0] == 2
    assert (a.logits.argmax(1) != y).any()  # it breaks some samples with 60 queries
