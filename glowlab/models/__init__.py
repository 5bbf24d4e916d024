"""Multiscale flow models: the coupling recipes and the other flow families."""

from glowlab.models.families import ffjord, maf, resflow
from glowlab.models.multiscale import FlowOutput, Level, MultiscaleFlow
from glowlab.models.recipes import glow, nice, realnvp

__all__ = [
    "FlowOutput",
    "Level",
    "MultiscaleFlow",
    "ffjord",
    "glow",
    "maf",
    "nice",
    "realnvp",
    "resflow",
]
