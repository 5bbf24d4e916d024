"""Networks that are not flow layers themselves: coupling conditioners, masked convolutions,
Transformers (TarFlow's causal blocks, Jet's ViT), the velocity fields of the ODE flows
(FFJORD's concat convolutions, flow matching's U-Net)."""

from glowlab.nets.conditioners import (
    FlowPPConditioner,
    GlowConditioner,
    ResNetConditioner,
    ZeroConv2d,
)
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.nets.masked import MaskedConvConditioner
from glowlab.nets.transformer import Transformer, ViTConditioner
from glowlab.nets.unet import UNet, timestep_embedding

__all__ = [
    "ConcatConvDynamics",
    "FlowPPConditioner",
    "GlowConditioner",
    "MaskedConvConditioner",
    "ResNetConditioner",
    "UNet",
    "ZeroConv2d",
    "Transformer",
    "ViTConditioner",
    "timestep_embedding",
]
