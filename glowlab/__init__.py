"""glowlab: exact, fast multiscale normalizing flows for images."""

from glowlab.models import MultiscaleFlow, glow, nice, realnvp

__version__ = "0.1.0"
__all__ = ["MultiscaleFlow", "__version__", "glow", "nice", "realnvp"]
