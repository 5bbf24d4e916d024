"""Multiscale flow models and the classic recipes."""

from glowlab.models.multiscale import FlowOutput, Level, MultiscaleFlow
from glowlab.models.recipes import glow, nice, realnvp

__all__ = ["FlowOutput", "Level", "MultiscaleFlow", "glow", "nice", "realnvp"]
