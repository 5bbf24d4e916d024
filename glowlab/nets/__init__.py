"""Networks that are not flow layers themselves: the U-Net velocity field of flow matching."""

from glowlab.nets.unet import UNet, timestep_embedding

__all__ = ["UNet", "timestep_embedding"]
