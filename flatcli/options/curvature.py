"""The curvature options: how the head's measures are normalised and scaled, and which earlier layers count."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, integer, names, number, switch

#: ``||W||_F^2`` (the paper's proofs), ``||W||_F`` (its code), or none (the authors' language-model code).
WEIGHT_NORMS = ("squared", "plain", "none")
#: How earlier layers are measured (:mod:`flatcli.runs.layers`).
LAYER_METHODS = ("auto", "exact", "fisher-mc", "hutchinson")


@dataclass(frozen=True)
class WeightNormOptions(Group):
    """The weight norm of relative sharpness, ``||W||_F^2 * Tr(H)`` or ``||W||_F * Tr(H)``."""

    title = "Head"
    key = "head"

    weight_norm: str | None = choice(None, "Relative sharpness uses ||W||_F^2 (squared, the paper's proofs; the "
                                     "default) or ||W||_F (plain, its code); none (no weight factor, the authors' "
                                     "language-model measure) for language models only.", WEIGHT_NORMS)

    @property
    def norm(self) -> str:
        return self.weight_norm or WEIGHT_NORMS[0]


@dataclass(frozen=True)
class ScalingOptions(WeightNormOptions):
    """Scaling the head by s scales its bias too, unless told not to (sweep-scale sweeps s itself)."""

    scale_bias: bool = switch(True, "Scale the head's bias with its weight.", negatable=True)


@dataclass(frozen=True)
class HeadOptions(ScalingOptions):
    """The head as measured: its weight norm convention and the scale s of ``W -> sW``."""

    scale: float = number(1.0, "Scale the head: W -> sW (and b -> sb unless --no-scale-bias).", above=0)


@dataclass(frozen=True)
class LayerOptions(Group):
    """Earlier layers whose trace and relative sharpness are measured too (paper Fig. 14)."""

    title = "Earlier layers"
    key = "layers"

    layers: tuple[str, ...] | None = names(None, "Comma-separated earlier layers whose trace and relative sharpness "
                                           "to measure (Fig. 14; default: the spec's).")
    layer_method: str = choice("auto", "How --layers are measured: exact (per sample, k backward passes), fisher-mc "
                               "(per sample, labels drawn from p), hutchinson (data-set value, probes); auto: exact "
                               "where the network is piecewise linear in the layer, else hutchinson.", LAYER_METHODS)
    fisher_samples: int = integer(2, "Labels drawn per sample for --layer-method fisher-mc (at least 2).", minimum=2)
    hutchinson: int = integer(0, "Hutchinson probes (0: off for the head, 100 for the layers measured by Hutchinson; "
                              "else at least 2).", minimum=0)


@dataclass(frozen=True)
class TakeoffOptions(Group):
    """The take-off point of a trajectory (§6.1): first step whose normalised loss reaches tau."""

    title = "Trajectories"
    key = "takeoff"

    takeoff: float = number(0.1, "Take-off threshold tau on the normalised loss, in (0, 1].", above=0, maximum=1)
