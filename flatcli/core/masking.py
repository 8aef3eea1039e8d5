"""The gradient-masking verdict of one scale: is the robustness real, or does the attack only fail to see?

Carlini et al. ("On Evaluating Adversarial Robustness") and AutoAttack's checks name the signs that a
first-order attack is being fooled rather than the model being robust; three of them are measured here,
each against a threshold ``t`` on robust accuracies (fractions):

* a margin-loss PGD (``robust_cw``, the loss whose steps do not depend on the softmax saturating) or a
  gradient-free attack (``robust_square``) leaves fewer samples correct: ``robust - other > t``;
* transfer beats the attack: the adversarials crafted at s=1 fool the model at ``s`` more often than its
  own attack does, ``robust - transfer > t``;
* most first-step input gradients are zero or underflow: ``zero_grad_fraction > 1/2``.

Any one raises the verdict; the reason lists every sign found.
"""

from __future__ import annotations

#: Default threshold on robust accuracy differences (5 points).
DEFAULT_THRESHOLD = 0.05
#: Share of vanished first-step gradients above which the gradients are called masked.
ZERO_GRAD_SHARE = 0.5


def masking_verdict(robust: float | None, *, robust_cw: float | None = None, robust_square: float | None = None,
                    transfer: float | None = None, zero_grad_fraction: float | None = None,
                    threshold: float = DEFAULT_THRESHOLD) -> tuple[bool, str | None]:
    """``(masking, reason)``: whether any sign of gradient masking shows (reason ``None`` when none does)."""
    if robust is None:
        return False, None
    reasons = []
    for name, other in (("margin-loss PGD", robust_cw), ("Square", robust_square), ("transfer from s=1", transfer)):
        if other is not None and robust - other > threshold:
            reasons.append(f"{name} leaves {other:.3f} correct, the attack {robust:.3f}")
    if zero_grad_fraction is not None and zero_grad_fraction > ZERO_GRAD_SHARE:
        reasons.append(f"{zero_grad_fraction:.0%} of the first-step input gradients are zero")
    return (True, "; ".join(reasons)) if reasons else (False, None)
