"""Option groups: every shared option declared once, read by the CLI, the API, the runs and the docs.

See :mod:`flatcli.options.base` for what an option is. The groups: :class:`ModelOptions`,
:class:`DataOptions`, :class:`RunOptions`, :class:`SpeedOptions`, :class:`ResumeOptions`,
:class:`CheckpointListOptions`, :class:`AttackOptions`, :class:`WeightNormOptions`, :class:`ScalingOptions`,
:class:`HeadOptions`, :class:`LayerOptions`,
:class:`TakeoffOptions`, :class:`OutputOptions`.
"""

from flatcli.options.attack import AttackOptions, PGDOptions
from flatcli.options.base import Group, Spec, flag_of, gather
from flatcli.options.curvature import HeadOptions, LayerOptions, ScalingOptions, TakeoffOptions, WeightNormOptions
from flatcli.options.data import DataOptions
from flatcli.options.model import ModelOptions
from flatcli.options.output import OutputOptions
from flatcli.options.run import CheckpointListOptions, ResumeOptions, RunOptions, SpeedOptions

__all__ = ["Group", "Spec", "flag_of", "gather", "AttackOptions", "PGDOptions", "HeadOptions", "ScalingOptions", "WeightNormOptions", "LayerOptions", "TakeoffOptions",
           "DataOptions", "ModelOptions", "OutputOptions", "CheckpointListOptions", "ResumeOptions", "RunOptions",
           "SpeedOptions"]
