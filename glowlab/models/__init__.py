"""Multiscale flow models: the coupling recipes and the other flow families."""

from glowlab.models.families import ffjord, maf, resflow
from glowlab.models.flow_matching import flow_matching
from glowlab.models.multiscale import FlowOutput, Level, MultiscaleFlow
from glowlab.models.options import ModelOptions
from glowlab.models.recipes import glow, nice, realnvp
from glowlab.models.transformers import jet, tarflow

__all__ = [
    "FlowOutput",
    "Level",
    "ModelOptions",
    "MultiscaleFlow",
    "ffjord",
    "flow_matching",
    "glow",
    "jet",
    "maf",
    "nice",
    "realnvp",
    "resflow",
    "tarflow",
]
