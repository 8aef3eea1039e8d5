"""Exact layer traces against ``torch.autograd.functional.hessian`` in float64, per sample and for the batch mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatcli.core.layer_curvature import SquaredGradNorms, class_gradient, layer_traces
from flatcli.models.builtins.small import mlp, small_cnn

RTOL = 1e-10


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus a strided 1x1 shortcut, ReLU, max-pool, avg-pool, fc: a ResNet block in small."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="reflect")
        self.bn2 = nn.BatchNorm2d(4)
        self.short = nn.Conv2d(2, 4, 1, stride=2, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 3, 2, dilation=2, padding="same")
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.short(x)
        out = self.pool(torch.relu(out))
        out = F.leaky_relu(self.conv3(out), 0.1)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class Tokens(nn.Module):
    """A Linear applied to every token of a (B, T, d) sequence, ReLU, mean over tokens, then the head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.embed(x.view(x.shape[0], -1, 4))).mean(1))


class WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.gelu(self.hidden(x.flatten(1))))


def _randomise_bn(net: nn.Module, gen: torch.Generator) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=torch.float64) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.2)


CASES = {
    "mlp": (lambda: mlp(5, in_features=8, hidden=(7, 6)), (6, 8), ["layers.0", "layers.2"]),
    "bn-maxpool-cnn": (lambda: small_cnn(4, 1, 2), (5, 1, 6, 6), ["conv1", "conv2", "conv3", "bn2"]),
    "residual": (Residual, (4, 2, 8, 8), ["conv1", "conv2", "short", "conv3", "bn1"]),
    "tokens": (Tokens, (4, 3, 4), ["embed"]),
}


def _case(name):
    build, shape, layers = CASES[name]
    torch.manual_seed(0)
    net = build().double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _randomise_bn(net, gen)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, net.fc.out_features, (shape[0],), generator=gen)
    return net, x, y, layers


def _hessian_trace(net, name, x, y) -> float:
    """Trace of the autograd Hessian of the mean cross-entropy over (x, y) w.r.t. ``name``'s weight."""
    key = f"{name}.weight"
    params = dict(net.named_parameters())
    w0 = params[key].detach()

    def loss(w):
        return F.cross_entropy(functional_call(net, {**params, key: w}, (x,)), y)

    h = torch.autograd.functional.hessian(loss, w0, vectorize=True)
    return float(h.reshape(w0.numel(), w0.numel()).diagonal().sum())


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_trace_is_the_hessian_trace_per_sample_and_for_the_batch_mean(case):
    net, x, y, layers = _case(case)
    modules = [net.get_submodule(n) for n in layers]
    res = layer_traces(net, x, modules, layers)
    assert res.trace.dtype == torch.float64 and res.stderr is None
    for j, name in enumerate(layers):
        for i in range(len(x)):
            oracle = _hessian_trace(net, name, x[i : i + 1], y[i : i + 1])
            assert res.trace[j, i].item() == pytest.approx(oracle, rel=RTOL, abs=1e-300), (name, i)
        assert res.trace[j].mean().item() == pytest.approx(_hessian_trace(net, name, x, y), rel=RTOL), name


def test_the_head_reduces_to_the_closed_form():
    net, x, y, _ = _case("bn-maxpool-cnn")
    from flatcli.core.curvature import head_measures
    from flatcli.models.head import HeadSplit

    with HeadSplit(net, net.fc, "fc") as split:
        phi = split.features(x)
    closed = head_measures(phi, net.fc.weight, net.fc.bias, y)["trace_h"]
    assert torch.allclose(layer_traces(net, x, [net.fc], ["fc"]).trace[0], closed, rtol=1e-12)


def test_gelu_gives_the_gauss_newton_trace_not_the_hessian():
    """After a GELU the identity gives Tr(J^T (diag p - p p^T) J), which differs from the Hessian's trace."""
    torch.manual_seed(0)
    net = WithGELU().double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    res = layer_traces(net, x, [net.hidden], ["hidden"]).trace[0]
    for i in range(3):
        w0 = net.hidden.weight.detach()
        params = dict(net.named_parameters())
        jac = torch.autograd.functional.jacobian(
            lambda w: functional_call(net, {**params, "hidden.weight": w}, (x[i : i + 1],))[0], w0
        ).reshape(4, -1)
        p = torch.softmax(net(x[i : i + 1])[0], 0)
        gn = torch.trace(jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).item()
        assert res[i].item() == pytest.approx(gn, rel=RTOL)
        hess = _hessian_trace(net, "hidden", x[i : i + 1], y[i : i + 1])
        assert abs(hess - gn) > 1e-3 * abs(gn)  # not the Hessian: a GELU bends the logits


def test_monte_carlo_is_unbiased_with_an_honest_standard_error():
    net, x, y, layers = _case("bn-maxpool-cnn")
    modules = [net.get_submodule(n) for n in layers]
    exact = layer_traces(net, x, modules, layers).trace
    gen = torch.Generator().manual_seed(0)
    mc = layer_traces(net, x, modules, layers, draws=40, generator=gen)
    z = (mc.trace - exact) / mc.stderr.clamp_min(1e-300)
    assert z.abs().max() < 5, z
    assert (mc.stderr > 0).all()
    with pytest.raises(ValueError, match="2 draws"):
        layer_traces(net, x, modules, layers, draws=1)


def test_class_gradient_is_p_minus_e_c_without_cancellation():
    p = torch.tensor([[1 - 3e-17, 1e-17, 2e-17]], dtype=torch.float64)
    v = class_gradient(p, torch.tensor([0]))
    assert v[0, 0].item() == pytest.approx(-3e-17, rel=1e-12)
    assert v[0, 1:].tolist() == p[0, 1:].tolist()


@pytest.mark.parametrize("ghost", [True, False])
def test_both_norm_paths_agree_with_materialised_per_sample_gradients(ghost, monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    a = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    g = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    norms = SquaredGradNorms(conv, a)
    if ghost and norms.gram is None or not ghost and norms.gram is not None:
        norms.gram = norms._input_gram() if ghost else None
    expected = []
    for i in range(3):
        (gw,) = torch.autograd.grad(conv(a[i : i + 1]), conv.weight, grad_outputs=g[i : i + 1])
        expected.append(gw.pow(2).sum().item())
    assert norms(g).tolist() == pytest.approx(expected, rel=1e-12)
