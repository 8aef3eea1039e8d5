"""Lipschitz constants of phi: graph upper bound, local estimate, and the operator norms they use.

Oracles are dense Jacobians (``torch.autograd.functional.jacobian``, float64) and their SVD.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatcli.errors import LayerError, UsageError
from flatcli.core.lipschitz import (
    SAFETY,
    Lipschitz,
    conv2d_bound,
    conv2d_circulant_bound,
    conv2d_operator_norm,
    given,
    lanczos_top_eigenvalue,
    local_estimate,
    upper_bound,
)
from flatcli.core.classifier import Classifier


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """LAPACK under a busy 2-core box thrashes with 2 OpenMP threads; one is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense(fn, shape) -> torch.Tensor:
    """The matrix of a linear (or the Jacobian at 0 of a piecewise-linear) map on inputs of ``shape``."""
    x = torch.zeros(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(fn, x)
    n_in = x.numel()
    return jac.reshape(-1, n_in)


def spec(mat: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(mat.detach().double(), ord=2))


def node(result: Lipschitz, target: str) -> dict:
    found = [r for r in result.detail["nodes"] if r["target"] == target]
    assert len(found) == 1, (target, [r["target"] for r in result.detail["nodes"]])
    return found[0]


def perturb_bn(net: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.3 + 2.0 * torch.rand(n, generator=gen))
            if m.weight is not None:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.data.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)


# ---------------------------------------------------------------- linear phi


def test_single_linear_phi_upper_is_exact_spectral_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 20), nn.Linear(20, 5))
    model = Classifier(net, mean=[0.1, 0.2, 0.3], std=[1.0, 1.0, 1.0])
    result = upper_bound(model, "2", (3, 4, 4))
    exact = spec(net[1].weight)
    assert result.kind == "upper"
    assert result.value == pytest.approx(exact, rel=1e-6)
    assert [r["target"] for r in result.detail["nodes"]] == ["x", "normalize", "0", "1"]
    assert result.detail["phi_node"] == "net_1"


def test_linear_phi_local_estimate_is_spectral_norm():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 20), nn.Linear(20, 5))
    model = Classifier(net, mean=[0.5] * 3, std=[1.0] * 3)
    x = torch.rand(4, 3, 4, 4)
    result = local_estimate(model, "2", x, iters=500)
    assert result.kind == "local"
    assert result.value == pytest.approx(spec(net[1].weight), rel=1e-5)
    assert len(result.detail["per_sample"]) == 4
    assert max(result.detail["per_sample"]) == result.value


def test_composed_linear_phi_product_of_norms_bounds_norm_of_product():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.Linear(9, 7), nn.Linear(7, 3))
    std = [0.5, 0.25, 2.0]
    model = Classifier(net, mean=[0.0] * 3, std=std)
    up = upper_bound(model, "3", (3, 2, 2))
    w1, w2 = net[1].weight.double(), net[2].weight.double()
    assert up.value == pytest.approx(spec(w1) * spec(w2) / min(std), rel=1e-6)
    scale = torch.tensor([1 / v for v in std], dtype=torch.float64).repeat_interleave(4)
    exact = spec(w2 @ w1 @ torch.diag(scale))
    assert up.value >= exact
    lo = local_estimate(model, "3", torch.rand(2, 3, 2, 2), iters=500)
    assert lo.value == pytest.approx(exact, rel=1e-4)


# ---------------------------------------------------------------- conv operator norms


CONV_CASES = [
    dict(cin=3, cout=4, k=3, hw=(7, 6), stride=1, padding=1, dilation=1, groups=1),
    dict(cin=4, cout=6, k=3, hw=(7, 7), stride=2, padding=1, dilation=1, groups=1),
    dict(cin=4, cout=4, k=3, hw=(8, 6), stride=1, padding=2, dilation=2, groups=1),
    dict(cin=4, cout=6, k=3, hw=(6, 6), stride=1, padding=0, dilation=1, groups=2),
    dict(cin=2, cout=3, k=4, hw=(6, 5), stride=1, padding="same", dilation=1, groups=1),
    dict(cin=3, cout=5, k=5, hw=(5, 5), stride=3, padding=2, dilation=1, groups=1),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: f"s{c['stride']}p{c['padding']}d{c['dilation']}g{c['groups']}"
)
def test_conv_operator_norm_matches_dense_matrix(case):
    torch.manual_seed(3)
    conv = nn.Conv2d(case["cin"], case["cout"], case["k"], stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=case["groups"], bias=False).double()
    exact = spec(dense(conv, (1, case["cin"], *case["hw"])))
    kw = dict(padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    est, converged, _ = conv2d_operator_norm(conv.weight, case["hw"], stride=case["stride"], iters=2000, **kw)
    assert converged
    assert est == pytest.approx(exact, rel=1e-4)
    assert conv2d_circulant_bound(conv.weight, case["hw"], **kw) >= exact * (1 - 1e-9)
    bound, info = conv2d_bound(conv.weight, case["hw"], stride=case["stride"], iters=2000, **kw)
    assert exact <= bound <= exact * (1 + SAFETY) * (1 + 1e-4), info


def test_conv_bound_falls_back_to_circulant_when_not_converged():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    exact = spec(dense(conv, (1, 3, 20, 20)))  # 1200 inputs: too many for the dense fallback
    bound, info = conv2d_bound(conv.weight, (20, 20), stride=2, padding=1, iters=2)
    assert not info["converged"] and info["method"].startswith("circulant")
    assert bound >= exact
    assert info["estimate"] <= exact * (1 + 1e-6)  # the iteration approaches from below


def test_conv_bound_falls_back_to_exact_dense_for_small_inputs():
    torch.manual_seed(4)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=False).double()
    exact = spec(dense(conv, (1, 16, 4, 4)))
    bound, info = conv2d_bound(conv.weight, (4, 4), padding=1, iters=2)
    assert not info["converged"] and info["method"].startswith("exact (dense")
    assert bound == pytest.approx(exact, rel=1e-9)


def test_conv_1x1_is_exact():
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 4, 1, stride=2, bias=False).double()
    exact = spec(dense(conv, (1, 6, 5, 5)))
    bound, info = conv2d_bound(conv.weight, (5, 5), stride=2)
    assert bound == pytest.approx(exact, rel=1e-9) and info["method"] == "exact (1x1)"


def test_lanczos_matches_eigvalsh():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(80, 50, generator=gen, dtype=torch.float64)
    gram = a.T @ a
    theta, converged, _ = lanczos_top_eigenvalue(lambda v: gram @ v, torch.randn(50, generator=gen), max_matvecs=200)
    assert converged
    assert theta == pytest.approx(float(torch.linalg.eigvalsh(gram)[-1]), rel=1e-9)


# ---------------------------------------------------------------- pooling


def _pool_model(pool: nn.Module | None, fn=None, c: int = 2) -> Classifier:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = pool if pool is not None else nn.Identity()
            self.fc = nn.Linear(1, 1)  # replaced lazily below

        def forward(self, x):
            out = self.pool(x) if fn is None else fn(x)
            return self.fc(torch.flatten(out, 1))

    return Classifier(Net(), mean=[0.0] * c, std=[1.0] * c)


AVG_CASES = [
    ("avg k2", nn.AvgPool2d(2), None, (6, 6)),
    ("avg k3 s2 p1", nn.AvgPool2d(3, stride=2, padding=1), None, (7, 7)),
    ("avg k3 s2 p1 no-pad-count", nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), None, (7, 6)),
    ("avg k2 ceil", nn.AvgPool2d(2, ceil_mode=True), None, (5, 5)),
    ("adaptive 7->3", nn.AdaptiveAvgPool2d((3, 3)), None, (7, 7)),
    ("adaptive 1", nn.AdaptiveAvgPool2d(1), None, (5, 4)),
    ("F.avg_pool2d k3 s1", None, lambda x: F.avg_pool2d(x, 3, 1), (6, 6)),
    ("F.adaptive_avg_pool2d 2", None, lambda x: F.adaptive_avg_pool2d(x, 2), (5, 5)),
    ("mean", None, lambda x: x.mean((2, 3)), (4, 5)),
]


@pytest.mark.parametrize("name,pool,fn,hw", AVG_CASES, ids=[c[0] for c in AVG_CASES])
def test_average_pooling_norms_match_dense_matrices(name, pool, fn, hw):
    model = _pool_model(pool, fn)
    op = (lambda x: pool(x)) if fn is None else fn
    out = op(torch.zeros(1, 2, *hw))
    model.net.fc = nn.Linear(out[0].numel(), 3)
    result = upper_bound(model, "fc", (2, *hw))
    exact = spec(dense(op, (1, 2, *hw)))
    assert result.value == pytest.approx(exact, rel=1e-9)


MAX_CASES = [
    ("max k2", lambda x: F.max_pool2d(x, 2), (6, 6)),
    ("max k3 s2 p1", lambda x: F.max_pool2d(x, 3, stride=2, padding=1), (8, 8)),
    ("max k3 s1 d2", lambda x: F.max_pool2d(x, 3, stride=1, dilation=2), (7, 7)),
    ("max k2 ceil", lambda x: F.max_pool2d(x, 2, ceil_mode=True), (5, 5)),
    ("max k3 s1", lambda x: F.max_pool2d(x, 3, 1), (6, 5)),
    ("adaptive max 7->3", lambda x: F.adaptive_max_pool2d(x, 3), (7, 7)),
]


@pytest.mark.parametrize("name,fn,hw", MAX_CASES, ids=[c[0] for c in MAX_CASES])
def test_max_pooling_bound_is_attained_and_not_exceeded(name, fn, hw):
    for module_form in (False, True):
        if module_form:
            pools = {"max k2": nn.MaxPool2d(2), "max k3 s2 p1": nn.MaxPool2d(3, 2, 1),
                     "max k3 s1 d2": nn.MaxPool2d(3, 1, dilation=2), "max k2 ceil": nn.MaxPool2d(2, ceil_mode=True),
                     "max k3 s1": nn.MaxPool2d(3, 1), "adaptive max 7->3": nn.AdaptiveMaxPool2d(3)}
            model = _pool_model(pools[name], None, c=1)
        else:
            model = _pool_model(None, fn, c=1)
        out = fn(torch.zeros(1, 1, *hw))
        model.net.fc = nn.Linear(out.numel(), 2)
        bound = upper_bound(model, "fc", (1, *hw)).value
        # a unit bump at the pixel covered by most windows raises every one of them: attained
        zero = fn(torch.zeros(1, 1, *hw))
        attained = 0.0
        for p in range(hw[0] * hw[1]):
            bump = torch.zeros(hw[0] * hw[1])
            bump[p] = 1.0
            attained = max(attained, float((fn(bump.view(1, 1, *hw)) - zero).norm()))
        assert bound == pytest.approx(attained, rel=1e-12), module_form
        gen = torch.Generator().manual_seed(7)
        a, b = torch.randn(64, 1, *hw, generator=gen), torch.randn(64, 1, *hw, generator=gen)
        ratio = (fn(a) - fn(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= bound * (1 + 1e-6)


# ---------------------------------------------------------------- graph rules


class Branchy(nn.Module):
    """Strided conv stem, BN, residual block with a 1x1 stride-2 shortcut, torch.cat, pools, MLP."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(8, 12, 1, stride=2, bias=False)
        self.side = nn.Conv2d(12, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(16, 10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        out = F.relu(self.bn(self.stem(x)))
        res = self.conv2(F.relu(self.bn1(self.conv1(out))))
        out = F.relu(res + self.shortcut(out))
        out = torch.cat([out, torch.tanh(self.side(out))], 1)
        out = self.avg(self.pool(out))
        return self.fc(F.leaky_relu(self.proj(torch.flatten(out, 1)), 0.1))


def test_graph_rules_residual_cat_bn_and_soundness():
    torch.manual_seed(8)
    net = Branchy()
    perturb_bn(net)
    model = Classifier(net, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]).eval()
    up = upper_bound(model, "fc", (3, 12, 12))
    recs = {r["target"]: r for r in up.detail["nodes"] if r["kind"][0].isupper()}  # modules
    recs.update({r["node"]: r for r in up.detail["nodes"] if not r["kind"][0].isupper()})  # functions
    assert recs["normalize"]["factor"] == pytest.approx(1 / 0.2)
    bn = net.bn
    assert recs["bn"]["factor"] == pytest.approx(float((bn.weight / (bn.running_var + bn.eps).sqrt()).abs().max().detach()))
    add = recs["add"]
    assert add["rule"] == "sum"
    assert add["bound"] == pytest.approx(recs["conv2"]["bound"] + recs["shortcut"]["bound"])
    cat = recs["cat"]
    assert cat["rule"] == "l2-sum"
    assert cat["bound"] == pytest.approx(math.hypot(recs["relu_2"]["bound"], recs["tanh"]["bound"]))
    assert recs["pool"]["factor"] == 1.0 and recs["avg"]["factor"] == pytest.approx(1 / 3)
    assert recs["leaky_relu"]["factor"] == 1.0
    assert up.value == recs["leaky_relu"]["bound"] == recs["proj"]["bound"]
    # sound against the data: random points, and the local estimate
    x = torch.rand(3, 3, 12, 12)
    lo = local_estimate(model, "fc", x, iters=100)
    assert 0 < lo.value <= up.value
    feats = []
    model.net.fc.register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    with torch.no_grad():
        y = x + 1e-3 * torch.randn_like(x)
        model(x), model(y)
    ratio = (feats[0] - feats[1]).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= lo.value * 1.5 <= up.value


class Arith(nn.Module):
    """Linear arithmetic with known operator norms."""

    def __init__(self, hw):
        super().__init__()
        self.fc = nn.Linear(2 * 2 * hw[0] * hw[1] + 2, 2)

    def forward(self, x):
        a = 2.0 * x - 0.5                      # |2|, constant shift
        b = x / torch.tensor([4.0, -8.0]).view(1, 2, 1, 1)    # 1/4
        c = torch.cat([a, b], 1)               # sqrt(4 + 1/16)
        d = x.mean((2, 3), keepdim=True) + x   # broadcast: 1 + 1
        e = torch.cat([c.flatten(1), d.mean((2, 3)), ], 1)
        return self.fc(e.view(e.size(0), -1))


def test_arithmetic_rules_exact_on_linear_graph():
    hw = (3, 4)
    net = Arith(hw)
    model = Classifier(net, mean=[0.0, 0.0], std=[1.0, 1.0])
    up = upper_bound(model, "fc", (2, *hw))
    recs = {r["node"]: r for r in up.detail["nodes"]}
    assert recs["mul"]["factor"] == 2.0 and recs["sub"]["bound"] == 2.0
    assert recs["truediv"]["factor"] == 0.25
    assert recs["cat"]["bound"] == pytest.approx(math.sqrt(4 + 1 / 16))
    assert recs["add"]["bound"] == pytest.approx(2.0)  # mean broadcast back: 1/sqrt(12) * sqrt(12)
    assert recs["mean_1"]["factor"] == pytest.approx(1 / math.sqrt(12))
    exact_parts = [math.sqrt(4 + 1 / 16), 2.0 / math.sqrt(12)]
    assert up.value == pytest.approx(math.hypot(*exact_parts))
    # every rule is exact here but the l2-sum of two correlated branches: compare with the dense norm

    def phi(x):
        scale = torch.tensor([4.0, -8.0], dtype=x.dtype).view(1, 2, 1, 1)
        c = torch.cat([2 * x, x / scale], 1).flatten(1)
        return torch.cat([c, (x.mean((2, 3), keepdim=True) + x).mean((2, 3))], 1)

    assert up.value >= spec(dense(phi, (1, 2, *hw))) * (1 - 1e-12)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        a = 2.0 * x
        a.mul_(4.0)  # later uses of a see 8 x
        b = F.relu(a, inplace=True)
        return self.fc(torch.flatten(a + 0.0 * b, 1))


class InPlaceOnView(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        a = 2.0 * x
        v = a.view(a.size(0), -1)
        a.mul_(4.0)  # v sees it too
        return self.fc(v)


def test_inplace_operations_rebind_their_input():
    model = Classifier(InPlace(), [0.0] * 3, [1.0] * 3)
    up = upper_bound(model, "fc", (3, 2, 2))
    assert up.value == pytest.approx(8.0)
    model = Classifier(InPlaceOnView(), [0.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match="in-place operation on a tensor that shares memory"):
        upper_bound(model, "fc", (3, 2, 2))


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class WithSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.layer3 = nn.Sequential(nn.Sequential())
        self.layer3[0].se = SqueezeExcite(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out = self.layer3[0].se(self.conv(x))
        return self.fc(out.mean((2, 3)))


class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(self.norm(torch.flatten(x, 1)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.fc(torch.flatten(x, 1))


def test_unsupported_operations_raise_usage_error_naming_them():
    model = Classifier(WithSE(), [0.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match=r"through layer3\.0\.se \(SqueezeExcite\).*lipschitz option"):
        upper_bound(model, "fc", (3, 4, 4))
    model = Classifier(WithNorm(), [0.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match=r"through norm \(LayerNorm\): unsupported module; give the Lipschitz constant of phi as a number"):
        upper_bound(model, "fc", (3, 2, 2))
    model = Classifier(Untraceable(), [0.0] * 3, [1.0] * 3)
    with pytest.raises(UsageError, match="torch.fx cannot trace"):
        upper_bound(model, "fc", (3, 2, 2))
    # the local estimate needs no graph
    assert local_estimate(model, "fc", torch.rand(2, 3, 2, 2), iters=20).value > 0


def test_given():
    assert given(12) == Lipschitz(12.0, "given", {})
    for bad in (0, -1, float("inf"), float("nan"), "abc"):
        with pytest.raises(UsageError, match="lipschitz="):
            given(bad)


def test_head_errors_and_modes_restored():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2))
    model = Classifier(net, [0.0] * 3, [1.0] * 3)
    with pytest.raises(LayerError):
        upper_bound(model, "9", (3, 2, 2))
    with pytest.raises(LayerError):
        upper_bound(model, "3", (3, 2, 2))
    with pytest.raises(LayerError):
        local_estimate(model, "nope", torch.rand(1, 3, 2, 2))
    model.train()
    up = upper_bound(model, "4", (3, 2, 2))
    lo = local_estimate(model, "4", torch.rand(3, 3, 2, 2))
    assert model.training and net[2].training
    assert up.value == pytest.approx(spec(net[1].weight), rel=1e-6)  # dropout counted in eval mode
    assert lo.value <= up.value * (1 + 1e-6)


# ---------------------------------------------------------------- built-in architectures

from flatcli.models.builtins import BUILTINS  # noqa: E402
from flatcli.models.registry import build_network  # noqa: E402

# (input shape, power iterations, local batch, local iterations). ResNet-18 and WRN-28-4 at 8x8 (they
# pool adaptively) to keep the file fast; VGG (five max-pools) and DenseNet-121 at 32x32. The first
# three converge (the production path); DenseNet-121 with 5 iterations exercises the fallbacks.
BUILTIN_SETTINGS = {
    "resnet18": ((3, 8, 8), 300, 2, 10),
    "wrn28-4": ((3, 8, 8), 300, 2, 10),
    "vgg11-bn": ((3, 32, 32), 300, 2, 10),
    "densenet121": ((3, 32, 32), 5, 2, 5),
    "small-cnn": ((1, 8, 8), 200, 4, 50),
    "mlp": ((1, 8, 8), 200, 4, 50),
}


@pytest.mark.parametrize("arch", sorted(BUILTINS))
def test_builtin_upper_bound_dominates_local_estimate(arch):
    shape, iters, batch, local_iters = BUILTIN_SETTINGS.get(arch, ((3, 32, 32), 10, 2, 10))
    kwargs = {"in_features": shape[0] * shape[1] * shape[2]} if arch == "mlp" else {}
    torch.manual_seed(9)
    net = build_network(arch, num_classes=10, in_channels=shape[0], kwargs=kwargs)
    perturb_bn(net)
    model = Classifier(net, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    head = BUILTINS[arch].head
    up = upper_bound(model, head, shape, iters=iters)
    lo = local_estimate(model, head, torch.rand(batch, *shape), iters=local_iters)
    assert up.kind == "upper" and lo.kind == "local"
    assert math.isfinite(up.value) and 0 < lo.value <= up.value
