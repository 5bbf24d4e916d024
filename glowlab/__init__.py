"""glowlab: exact, fast multiscale normalizing flows for images."""

from glowlab.models import MultiscaleFlow, ffjord, glow, maf, nice, realnvp, resflow
from glowlab.models.flow_matching import flow_matching
from glowlab.models.transformers import jet, tarflow

__version__ = "0.1.0"
__all__ = ["MultiscaleFlow", "__version__", "ffjord", "glow", "maf", "nice", "realnvp", "resflow"]
__all__ += ["flow_matching"]
__all__ += ["jet", "tarflow"]
