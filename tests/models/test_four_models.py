"""The four models people train themselves, saved every way they save them and loaded the way a user would: the
per-sample losses are the model's own, or flatrob refuses or says what it assumed in one line (issue 25).

(a) an own CNN class in a module of the user's project (``--arch four_net:Net`` run from that directory),
(b) torchvision's ResNet-18 with a 1-channel 3x3 stem and its max-pool kept, (c) torchvision's ResNet-18 as it is,
on 3x32x32, (d) timm's ResNet-18 with ``in_chans=1``. The own CNN is trained on scikit-learn's digits (upsampled
to 28x28); the ResNets (a second or two a training step on CPU) are built with random batch-norm statistics and
labelled with their own predictions, so their accuracy is 1 and no chance-accuracy note enters the picture. Saved
as a state dict ``.pt``, a Lightning-style ``.ckpt`` (built without Lightning), ``.safetensors``, timm's ``.pth.tar``
with ``state_dict`` and ``state_dict_ema``, a timm ``save_for_hf`` folder and ``flatrob convert``'s output of each.
The reference is the network's own cross-entropy on the same inputs, normalised as in training.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

import flatcli.api as fr
from tests.conftest import assert_one_error, invoke

timm = pytest.importorskip("timm")

N = 16
MNIST = ("0.1307", "0.3081")
CIFAR = ("0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616")
MODULE = "four_net"
OWN_NET = '''\
"""A user's own CNN, as in their project's ``four_net.py``."""
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.classifier = nn.Linear(32 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))
'''
SPECS = {
    "own.yaml": f"arch: {MODULE}:Net\narch_kwargs: {{width: 8}}\nmean: [0.1307]\nstd: [0.3081]\n",
    "tvstem.yaml": "arch: torchvision:resnet18\narch_kwargs: {stem_kernel: 3, stem_stride: 1, maxpool: true}\n"
                   "mean: [0.1307]\nstd: [0.3081]\n",
    "timm-as-tv.yaml": "arch: torchvision:resnet18\narch_kwargs: {stem_kernel: 7, stem_stride: 2}\n",
}


def _digits(side: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``N`` digits of the test half, upsampled to ``side`` x ``side``, in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[-N:], dtype=torch.float32).unsqueeze(1) / 16
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, channels, 1, 1), torch.tensor(digits.target[-N:], dtype=torch.int64)


def _normalised(x: torch.Tensor, mean: str, std: str) -> torch.Tensor:
    m = torch.tensor([float(v) for v in mean.split(",")]).view(1, -1, 1, 1)
    s = torch.tensor([float(v) for v in std.split(",")]).view(1, -1, 1, 1)
    return (x - m) / s


def _randomise_batchnorm(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    return net.eval()


def _train_own(cls, x, y) -> torch.nn.Module:
    """The own CNN trained on the digits train half (28x28, normalised with MNIST's mean and std)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    tx = torch.tensor(digits.images[:600], dtype=torch.float32).unsqueeze(1) / 16
    tx = _normalised(F.interpolate(tx, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1), *MNIST)
    ty = torch.tensor(digits.target[:600])
    net = cls()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        for idx in torch.randperm(len(tx)).split(50):
            opt.zero_grad()
            F.cross_entropy(net(tx[idx]), ty[idx]).backward()
            opt.step()
    return net.eval()


def _lightning(net: torch.nn.Module) -> dict:
    """What ``Trainer.save_checkpoint`` writes for a LightningModule holding the network as ``self.model`` and a
    metric with a state of its own: ``model.``-prefixed keys beside other ones, and training state."""
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["train_acc.correct"] = torch.tensor(412)
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
            "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.01}}


@dataclass(frozen=True)
class Built:
    """A network, the inputs it is measured on (a ``tensors:`` file), and its own per-sample losses."""

    data: str
    losses: torch.Tensor


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The user's project folder: ``four_net.py``, specs, data files, every model saved every way, converted."""
    folder = tmp_path_factory.mktemp("project")
    (folder / f"{MODULE}.py").write_text(OWN_NET)
    for name, text in SPECS.items():
        (folder / name).write_text(text)
    sys.path.insert(0, str(folder))  # the test's own import of the user's class; flatrob finds it by the cwd
    try:
        own_cls = __import__(MODULE).Net
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)  # flatrob imports it afresh from the project folder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = _build_all(folder, own_cls)
    finally:
        torch.set_num_threads(threads)
    yield folder, built
    for name in [name for name in sys.modules if name == MODULE or name.startswith("flatrob_file_")]:
        del sys.modules[name]


def _build_all(folder, own_cls) -> dict[str, Built]:
    x28, y28 = _digits(28, 1)
    x32, _ = _digits(32, 3)
    own = _train_own(own_cls, x28, y28)
    torch.manual_seed(1)
    tvstem = torchvision.models.resnet18(num_classes=10)
    tvstem.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    tvstem = _randomise_batchnorm(tvstem, 1)
    torch.manual_seed(2)
    tv = _randomise_batchnorm(torchvision.models.resnet18(num_classes=10), 2)
    torch.manual_seed(3)
    tm = _randomise_batchnorm(timm.create_model("resnet18", num_classes=10, in_chans=1), 3)
    ema = copy.deepcopy(tm)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    nets = {"own": (own, x28, MNIST, y28), "tvstem": (tvstem, x28, MNIST, None), "tv": (tv, x32, CIFAR, None),
            "timm": (tm, x28, MNIST, None), "timm-ema": (ema, x28, MNIST, "timm")}
    built, labels = {}, {}
    for name, (net, x, norm, y) in nets.items():
        with torch.no_grad():
            logits = net(_normalised(x, *norm)).double()
        y = labels[y] if isinstance(y, str) else y if y is not None else logits.argmax(1)
        labels[name] = y
        data = folder / f"data-{name}.safetensors"
        save_file({"x": x.contiguous(), "y": y}, str(data))
        built[name] = Built(f"tensors:{data}", F.cross_entropy(logits, y, reduction="none"))
    for name in ("own", "tvstem", "tv", "timm"):
        state = {k: v.contiguous() for k, v in nets[name][0].state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
        torch.save(state, folder / f"{name}.pt")
    for name in ("own", "tvstem"):
        torch.save(_lightning(nets[name][0]), folder / f"{name}.ckpt")
    torch.save({"epoch": 9, "arch": "resnet18", "state_dict": tm.state_dict(), "state_dict_ema": ema.state_dict(),
                "optimizer": {}, "version": 2}, folder / "timm.pth.tar")
    timm.models.save_for_hf(tm, str(folder / "timm-hf"), model_args={"in_chans": 1}, safe_serialization=True)
    conversions = [("own.pt", "own-pt"), ("own.ckpt", "own-ckpt"), ("tvstem.pt", "tvstem-pt"),
                   ("tvstem.ckpt", "tvstem-ckpt"), ("tv.pt", "tv-pt"), ("timm.pth.tar", "timm-model"),
                   ("timm.pth.tar", "timm-ema", "--weights", "ema"),
                   ("own.pt", "own-embedded", "--spec", str(folder / "own.yaml"))]
    for source, dest, *options in conversions:
        res = invoke("convert", folder / source, folder / f"{dest}.safetensors", *options, "--format", "json")
        assert res.exit_code == 0, res.stderr
        if source == "timm.pth.tar":  # which weights were taken, and that the others are there, is said
            summary = json.loads(res.stdout)["summary"]
            taken, other = ("state_dict_ema", "state_dict") if options else ("state_dict", "state_dict_ema")
            assert summary["key"] == taken and summary["other_weights"] == [other], summary
            other_option = f"--weights {'model' if options else 'ema'}"
            assert res.stderr.count("note: took the") == 1 and other_option in res.stderr
    return built


@dataclass(frozen=True)
class Case:
    """One way of loading one model: the file, the options, and what must happen.

    ``expect``: ``"same"`` (the losses of ``reference``, by default ``model``), ``"refused"`` (exit 2, one line
    holding ``says``) or ``"noted"`` (exit 0, one stderr line holding ``says``; ``config`` what the output's config
    must record)."""

    model: str  # the network saved: own, tvstem, tv, timm
    how: str
    file: str
    args: tuple[str, ...]
    expect: str
    reference: str = ""  # the network whose losses the output must have (timm-ema: the EMA weights)
    says: str = ""
    config: tuple[tuple[str, object], ...] = ()


def _norm(values: tuple[str, str]) -> tuple[str, ...]:
    return ("--mean", values[0], "--std", values[1])


OWN_ARCH = ("--arch", f"{MODULE}:Net", *_norm(MNIST))
TV_ARCH = ("--arch", "torchvision:resnet18", "--num-classes", "10", "--input-shape", "3,32,32", *_norm(CIFAR))
TIMM_ARCH = ("--arch", "timm:resnet18", *_norm(MNIST))
CASES = [
    # (a) an own class, found in the project folder (the current directory)
    Case("own", ".pt", "own.pt", OWN_ARCH, "refused", says="flatrob convert"),
    Case("own", ".pt converted", "own-pt.safetensors", OWN_ARCH, "same"),
    Case("own", "Lightning .ckpt converted", "own-ckpt.safetensors", OWN_ARCH, "same"),
    Case("own", "safetensors --arch module:Class", "own.safetensors", OWN_ARCH, "same"),
    Case("own", "safetensors --arch file.py:Class", "own.safetensors", ("--arch", f"./{MODULE}.py:Net", *_norm(MNIST)),
         "same"),
    Case("own", "safetensors --spec", "own.safetensors", ("--spec", "own.yaml"), "same"),
    Case("own", "safetensors, no --arch", "own.safetensors", _norm(MNIST), "refused", says="matches no built-in"),
    Case("own", "embedded spec, untrusted", "own-embedded.safetensors", (), "refused", says="--trust-embedded-code"),
    Case("own", "embedded spec, trusted", "own-embedded.safetensors", ("--trust-embedded-code",), "same"),
    # (b) torchvision ResNet-18 with a 1-channel 3x3 stem, max-pool kept
    Case("tvstem", ".pt", "tvstem.pt", ("--spec", "tvstem.yaml"), "refused", says="flatrob convert"),
    Case("tvstem", "safetensors, no --arch", "tvstem.safetensors", _norm(MNIST), "noted",
         says="comes from the checkpoint's keys alone",
         config=(("arch_source", "keys"), ("arch_candidates", [{"arch": "torchvision:resnet18", "arch_kwargs": {
             "stem_kernel": 3, "stem_stride": 1, "maxpool": True}}]))),
    Case("tvstem", "safetensors --arch torchvision:resnet18", "tvstem.safetensors",
         ("--arch", "torchvision:resnet18", *_norm(MNIST)), "refused",
         says="fits torchvision:resnet18 with arch_kwargs {stem_kernel: 3, stem_stride: 1, maxpool: true} and"),
    Case("tvstem", "safetensors --spec", "tvstem.safetensors", ("--spec", "tvstem.yaml"), "same"),
    Case("tvstem", ".pt converted", "tvstem-pt.safetensors", ("--spec", "tvstem.yaml"), "same"),
    Case("tvstem", "Lightning .ckpt converted", "tvstem-ckpt.safetensors", ("--spec", "tvstem.yaml"), "same"),
    # (c) torchvision ResNet-18 as it is, on 3x32x32
    Case("tv", "safetensors, no --arch", "tv.safetensors", _norm(CIFAR), "refused",
         says="fit torchvision:resnet18, which keys alone cannot tell apart"),
    Case("tv", "safetensors --arch", "tv.safetensors", TV_ARCH, "same"),
    Case("tv", "safetensors --arch, no --mean/--std", "tv.safetensors", TV_ARCH[:-4], "noted",
         says="comes from the torchvision:resnet18 data config",
         config=(("preprocessing_sources", {"mean": "torchvision:resnet18 data config",
                                            "std": "torchvision:resnet18 data config"}),)),
    Case("tv", ".pt converted", "tv-pt.safetensors", TV_ARCH, "same"),
    # (d) timm ResNet-18 with in_chans=1
    Case("timm", ".pth.tar", "timm.pth.tar", TIMM_ARCH, "refused", says="looks like a pickle (.pth.tar)"),
    Case("timm", ".pth.tar converted", "timm-model.safetensors", TIMM_ARCH, "same"),
    Case("timm", ".pth.tar converted --weights ema", "timm-ema.safetensors", TIMM_ARCH, "same", "timm-ema"),
    Case("timm", "safetensors --arch", "timm.safetensors", TIMM_ARCH, "same"),
    Case("timm", "safetensors, no --arch", "timm.safetensors", _norm(MNIST), "refused",
         says="fit torchvision:resnet18 with arch_kwargs {stem_kernel: 7, stem_stride: 2}"),
    Case("timm", "safetensors --arch torchvision:resnet18", "timm.safetensors",
         ("--arch", "torchvision:resnet18", *_norm(MNIST)), "refused",
         says="fits torchvision:resnet18 with arch_kwargs {stem_kernel: 7, stem_stride: 2}: name it"),
    Case("timm", "safetensors as the torchvision variant it names", "timm.safetensors",
         ("--spec", "timm-as-tv.yaml", *_norm(MNIST)), "same"),
    Case("timm", "save_for_hf folder", "timm-hf", _norm(MNIST), "same"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{case.model}: {case.how}" for case in CASES])
def test_every_way_of_loading_gives_the_models_own_losses_or_says_why_not(project, case, monkeypatch):
    folder, built = project
    monkeypatch.chdir(folder)
    reference = case.reference or case.model
    data = built[reference].data
    res = invoke("sharpness", case.file, "--data", data, "--format", "json", "--per-sample", *case.args)
    if case.expect == "refused":
        assert_one_error(res, case.says)
        return
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    if case.expect == "noted":
        assert [line for line in res.stderr.splitlines() if case.says in line], res.stderr
        for key, value in case.config:
            found = doc["config"].get(key)
            found = {k: found.get(k) for k in value} if isinstance(value, dict) and found else found
            assert found == value, (key, doc["config"])
        return
    losses = torch.tensor([row["loss"] for row in doc["samples"]], dtype=torch.float64)
    torch.testing.assert_close(losses, built[reference].losses, rtol=1e-4, atol=1e-5)
    assert doc["summary"].get("sanity") is None, res.stderr
    if MODULE in doc["config"]["arch"]:  # where the user's class came from
        assert doc["config"]["arch_file"] == str((folder / f"{MODULE}.py").resolve())


def test_the_api_finds_the_users_class_in_the_current_directory(project, monkeypatch):
    """``arch=`` as ``--arch``: a module of the project, its file, or a file in a subfolder that imports its
    neighbour and the project's module."""
    folder, built = project
    monkeypatch.chdir(folder)
    (folder / "nets").mkdir(exist_ok=True)
    (folder / "nets" / "four_net_width.py").write_text("WIDTH = 8\n")
    (folder / "nets" / "wrapped.py").write_text(
        f"from four_net_width import WIDTH\nfrom {MODULE} import Net as Own\n\n\n"
        "class Net(Own):\n    def __init__(self, num_classes=10):\n        super().__init__(num_classes, WIDTH)\n")
    for arch, file in ((f"{MODULE}:Net", f"{MODULE}.py"), (f"{MODULE}.py:Net", f"{MODULE}.py"),
                       ("nets/wrapped.py:Net", "nets/wrapped.py")):
        result = fr.sharpness("own.safetensors", built["own"].data, arch=arch, mean=[0.1307], std=[0.3081])
        losses = torch.tensor([row["loss"] for row in result.samples], dtype=torch.float64)
        torch.testing.assert_close(losses, built["own"].losses, rtol=1e-4, atol=1e-5)
        assert result.config["arch_file"] == str((folder / file).resolve())
    sys.modules.pop("four_net_width", None)


def test_a_class_not_in_the_project_is_refused_saying_where_it_was_looked_for(project, tmp_path, monkeypatch):
    folder, built = project
    monkeypatch.chdir(tmp_path)
    checkpoint = str(folder / "own.safetensors")
    res = invoke("sharpness", checkpoint, "--arch", "four_net_elsewhere:Net", "--data", built["own"].data)
    assert_one_error(res, "cannot import 'four_net_elsewhere'", f"searched the current directory ({tmp_path})",
                     "path/to/models.py:ClassName")
    res = invoke("sharpness", checkpoint, "--arch", "nets/four_net.py:Net", "--data", built["own"].data)
    assert_one_error(res, "nets/four_net.py is not a file")
    (tmp_path / "needs.py").write_text("import four_net_missing_dependency\n")
    res = invoke("sharpness", checkpoint, "--arch", "needs.py:Net", "--data", built["own"].data)
    assert_one_error(res, "cannot run needs.py", "four_net_missing_dependency")
    assert not [name for name in sys.modules if name.startswith("flatrob_file_") and "needs" in str(sys.modules[name])]
