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
afterwards. Nothing is recorded along its path: with ``record=True`` the result holds ``x_0`` (the
clean input) and the adversarial as a two-point trajectory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from flatcli.core.attack_losses import attack_loss
from flatcli.core.pgd import Forward, PGDResult, check_ball, check_count, check_restarts
from flatcli.errors import UsageError

#: Our loss name -> torchattacks' ``Square(loss=...)``.
LIBRARY_LOSS = {"cw": "margin", "ce": "ce"}
#: Query budget per restart when ``--queries`` is not given (torchattacks' default).
DEFAULT_QUERIES = 5000
#: The largest --queries (one forward pass of the batch each).
MAX_QUERIES = 100_000
P_INIT = 0.8
INSTALL_HINT = "pip install 'flatrob[square]' (torchattacks)"


def require_torchattacks() -> None:
    """Fail with one clear :class:`UsageError` when torchattacks is not installed."""
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        raise UsageError(f"--attack square needs torchattacks, which is not installed: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class Square:
    """A Square configuration (``steps`` = queries per restart); :meth:`run` applies it."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = DEFAULT_QUERIES
    restarts: int = 1
    loss: str = "cw"

    kind = "square"
    random_start = False  # its own initialisation (vertical stripes in linf, squares in l2)
    recorded_steps = 1  # x_0 and the adversarial

    def __post_init__(self) -> None:
        check_ball(self.loss, self.norm, eps=self.eps)
        if self.loss not in LIBRARY_LOSS:
            raise UsageError(f"--attack square takes --loss cw (its margin loss) or ce, not {self.loss}")
        check_count("--queries", self.steps, 1, MAX_QUERIES)
        check_restarts(self.restarts, None)  # its own random initialisation per restart
        require_torchattacks()

    def config(self) -> dict:
        import torchattacks

        return {"attack": self.kind, **asdict(self), "queries": self.steps, "p_init": P_INIT,
                "library": f"torchattacks {torchattacks.__version__} Square"}

    def with_(self, **changes) -> "Square":
        return replace(self, **changes)

    def run(self, forward: Forward, x: Tensor, y: Tensor, *, target: Tensor | None = None, record: bool = False,
            keep_iterates: bool = False, generator: torch.Generator | None = None) -> PGDResult:
        """Attack the batch ``x`` (labels ``y``) through ``forward``'s logits; see the module docstring."""
        if target is not None:
            raise UsageError("--attack square is untargeted here; drop --targeted")
        import torchattacks

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        net = _Logits(forward, x.device).eval()
        atk = torchattacks.Square(net, norm="Linf" if self.norm == "linf" else "L2", eps=self.eps,
                                  n_queries=self.steps, n_restarts=self.restarts, p_init=P_INIT,
                                  loss=LIBRARY_LOSS[self.loss], seed=seed)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            x_adv = atk(x.detach(), y).detach()
        result = PGDResult(x_adv=x_adv, restart=torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
                           x_start=x.detach())
        with torch.no_grad():
            if record:
                logits0, phi0 = forward(x)
            logits, phi = forward(x_adv)
        result.logits = logits.detach()
        result.objective = attack_loss(result.logits, y, None, self.loss)
        if record:
            result.phi = torch.stack([phi0.detach(), phi.detach()])
            result.logits_by_step = torch.stack([logits0.detach(), result.logits])
            delta = (x_adv - x).flatten(1)
            zeros = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
            result.dist_l2 = torch.stack([zeros, torch.linalg.vector_norm(delta, dim=1)])
            result.dist_linf = torch.stack([zeros, delta.abs().amax(dim=1)])
            if keep_iterates:
                result.x_by_step = torch.stack([x.detach(), x_adv])
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
