"""The Square attack (Andriushchenko et al. 2020): gradient-free random search, run by torchattacks' ``Square``.

A gradient-free attack is the standard check for gradient masking (Carlini et al., "On Evaluating
Adversarial Robustness"): it only compares losses of queried points, so a saturated softmax whose input
gradient is zero does not stop it. torchattacks' implementation (a port of the authors' code) is used
as it is, on the callable's logits (any scaling of the head), with its defaults (``p_init`` 0.8, the
rescaled ``p`` schedule): ``steps`` is its query budget per restart, ``loss`` ``cw`` its ``margin``
loss (``z_y - max_{j != y} z_j``, minimised; the :func:`flatcli.core.attack_losses.cw_loss` with the sign
flipped) and ``ce`` its cross-entropy. It attacks the samples the model classifies correctly and
returns, per sample, the first point it finds misclassified, else the clean input; restarts go on
from the samples not yet broken. Untargeted only.

torchattacks seeds torch's global generator; the seed is drawn from the batch's generator (so a batch
is attacked the same way on every run and every rank) and the global generators are restored
afterwards. Nothing is recorded along its path: with ``record=True`` the recorder gets ``x_0`` (the
clean input) and the adversarial, a two-point trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatcli.core.attack_losses import attack_loss
from flatcli.core.attacks.base import Attack, AttackResult, Forward
from flatcli.core.attacks.recording import Recorder
from flatcli.errors import MissingExtraError

#: Our loss name -> torchattacks' ``Square(loss=...)``.
LIBRARY_LOSS = {"cw": "margin", "ce": "ce"}
#: Query budget per restart when ``queries`` is not given (torchattacks' default).
DEFAULT_QUERIES = 5000
#: The most queries (one forward pass of the batch each).
MAX_QUERIES = 100_000
P_INIT = 0.8
INSTALL_HINT = "pip install 'flatrob[square]' (torchattacks)"


def require_torchattacks() -> None:
    """Fail with one clear :class:`MissingExtraError` when torchattacks is not installed."""
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"the square attack needs torchattacks, which is not installed: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class Square(Attack):
    """A Square configuration (``steps`` = queries per restart); :meth:`run` applies it."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = DEFAULT_QUERIES
    restarts: int = 1
    loss: str = "cw"

    kind = "square"
    summary = "gradient-free random search (torchattacks' Square), a budget of queries instead of steps"
    steps_option = "queries"
    min_steps = 1
    max_steps = MAX_QUERIES
    losses = tuple(LIBRARY_LOSS)
    targets = False
    draws_own_start = True  # vertical stripes in linf, squares in l2, on every restart
    random_start = False
    recorded_steps = 1  # x_0 and the adversarial
    rounds = 1  # torchattacks restarts from the samples not yet broken
    refusals = {
        "alpha": ("Square sets its own steps (squares of a shrinking size); drop {}",),
        "steps": ("{} does not apply: Square counts queries, not steps; use {} N", "queries"),
        "random_start": ("Square starts from its own random stripes; drop {}",),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_torchattacks()

    def config(self) -> dict:
        import torchattacks

        return {**super().config(), "queries": self.steps, "p_init": P_INIT,
                "library": f"torchattacks {torchattacks.__version__} Square"}

    def describe(self) -> str:
        return f"Square-{self.norm} eps {self.eps:g}, {self.steps} queries, loss {self.loss}"

    def attempt(self, forward: Forward, x0: Tensor, y: Tensor, *, target: Tensor | None, recorder: Recorder | None,
                generator: torch.Generator | None, final: bool) -> AttackResult:
        """Attack the batch ``x0`` (labels ``y``) through ``forward``'s logits; see the module docstring."""
        import torchattacks

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        net = _Logits(forward, x0.device).eval()
        atk = torchattacks.Square(net, norm="Linf" if self.norm == "linf" else "L2", eps=self.eps,
                                  n_queries=self.steps, n_restarts=self.restarts, p_init=P_INIT,
                                  loss=LIBRARY_LOSS[self.loss], seed=seed)
        devices = [x0.device] if x0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            x_adv = atk(x0, y).detach()
        with torch.no_grad():
            if recorder is not None:
                recorder(x0, *forward(x0))
            logits, phi = forward(x_adv)
        result = AttackResult(x_adv=x_adv, restart=torch.zeros(0), x_start=x0, logits=logits.detach(),
                              objective=attack_loss(logits.detach(), y, None, self.loss))
        if recorder is not None:
            recorder(x_adv, logits, phi)
        return result


class _Logits(nn.Module):
    """``x -> logits`` of a ``(logits, phi)`` callable, as the ``nn.Module`` torchattacks attacks.

    Holds an empty parameter on the input's device so torchattacks finds the device without printing.
    """

    def __init__(self, forward: Forward, device: torch.device):
        super().__init__()
        self._forward = forward
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]
