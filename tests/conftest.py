from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from flatcli.cli import app


def load_generate_docs():
    """``scripts/generate_docs.py`` as a module (the docs and shell tests read what it generates)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "generate_docs.py"
    spec = importlib.util.spec_from_file_location("generate_docs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

EXAMPLE = "example:digits-cnn"

#: torchrun as torch ships it (``torch.distributed.run``): always there when torch is, so no test skips it.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on a machine without a CUDA device (``scripts/gpu-check`` runs them)."""
    cuda = [item for item in items if "cuda" in item.keywords]
    if cuda:
        import torch

        if not torch.cuda.is_available():
            for item in cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def run_context(loaded, data, *, batch_size: int = 256, seed: int = 0, resume=None):
    """A one-process :class:`~flatcli.runtime.loop.RunContext` on the CPU, for calling ``flatcli.runs``."""
    import torch

    from flatcli.runtime.loop import RunContext

    return RunContext(loaded=loaded, data=data, device=torch.device("cpu"), batch_size=batch_size, seed=seed,
                      resume=resume)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    """Run ``flatrob ARGS`` in-process through the real error mapping, stdout and stderr apart."""
    runner = CliRunner()
    res = runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)


@pytest.fixture
def cli():
    return invoke


def assert_one_error(res: Result, *fragments: str) -> None:
    """Exit 2, exactly one ``Error:`` line (the only line) on stderr, no traceback, nothing on stdout."""
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


def train_digits_cnn(width: int = 8, epochs: int = 8, seed: int = 0):
    """A small BatchNorm CNN (built-in ``small-cnn``) trained in seconds on the digits train split, in eval mode.

    Adam, batches of 64, fixed seed, one thread (restored afterwards): about 0.98 test accuracy; a model
    other than the bundled example for the attack tests.
    """
    import torch
    import torch.nn.functional as F

    from flatcli.core.classifier import Classifier
    from flatcli.inputs.data import load_data
    from flatcli.models.registry import build_network

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        train = load_data("digits", "train")
        net = build_network("small-cnn", num_classes=10, in_channels=1, kwargs={"width": width})
        model = Classifier(net, [0.3], [0.4])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(train.x), generator=order).split(64):
                opt.zero_grad()
                F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def trained_cnn():
    """:func:`train_digits_cnn` as a loaded model (head ``fc``), trained once per session."""
    from flatcli.models.loading import from_module

    return from_module(train_digits_cnn(), layer="fc")
