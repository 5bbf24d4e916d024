"""Bijections: ``forward(x) -> (z, logdet)`` data → latent, ``inverse(z) -> x``."""

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.autoregressive import MaskedAutoregressive
from glowlab.bijections.base import Bijection, Sequential
from glowlab.bijections.cnf import CNF
from glowlab.bijections.coupling import Coupling, checkerboard_mask
from glowlab.bijections.dequantization import Dequantize
from glowlab.bijections.elementwise import DiagonalScale, Logit, Shift
from glowlab.bijections.patchify import Patchify
from glowlab.bijections.permutations import ChannelPermutation, InvConv1x1, InvConv1x1LU
from glowlab.bijections.planar import Planar
from glowlab.bijections.residual import ResidualBlock
from glowlab.bijections.squeeze import Squeeze
from glowlab.bijections.tarflow import TarFlowBlock

__all__ = [
    "CNF",
    "ActNorm",
    "Bijection",
    "ChannelPermutation",
    "Coupling",
    "Dequantize",
    "DiagonalScale",
    "InvConv1x1",
    "InvConv1x1LU",
    "Logit",
    "MaskedAutoregressive",
    "Patchify",
    "Planar",
    "ResidualBlock",
    "Sequential",
    "Shift",
    "Squeeze",
    "TarFlowBlock",
    "checkerboard_mask",
]
