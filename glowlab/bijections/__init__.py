"""Bijections: ``forward(x) -> (z, logdet)`` data → latent, ``inverse(z) -> x``."""

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.base import Bijection, Sequential
from glowlab.bijections.conditioners import GlowConditioner, ResNetConditioner, ZeroConv2d
from glowlab.bijections.coupling import Coupling, checkerboard_mask
from glowlab.bijections.elementwise import Dequantize, DiagonalScale, Logit, Shift
from glowlab.bijections.permutations import ChannelPermutation, InvConv1x1, InvConv1x1LU
from glowlab.bijections.planar import Planar
from glowlab.bijections.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "Bijection",
    "ChannelPermutation",
    "Coupling",
    "Dequantize",
    "DiagonalScale",
    "GlowConditioner",
    "InvConv1x1",
    "InvConv1x1LU",
    "Logit",
    "Planar",
    "ResNetConditioner",
    "Sequential",
    "Shift",
    "Squeeze",
    "ZeroConv2d",
    "checkerboard_mask",
]
