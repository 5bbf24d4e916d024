"""Fréchet distance (FID) between the features of a model's samples and of real images.

``FID = ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))`` of the Gaussians (mean, unbiased
covariance) fitted to the two sets of features, computed in float64 by torchmetrics'
``FrechetInceptionDistance``. Keyed ``fid`` with Inception features, ``fid_<network>`` with
another feature network, so numbers of different networks are never mixed.

References: Heusel et al., "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium", 2017.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from glowlab.metrics.registry import register
from glowlab.metrics.sample_quality import GivenFeatures, SampleQuality


def frechet_state(dim: int) -> FrechetInceptionDistance:
    """torchmetrics' FID fed features ``(N, dim)`` directly: float64, the real features kept
    over ``reset``, not summed over DDP ranks (every rank draws the same samples)."""
    state = FrechetInceptionDistance(
        GivenFeatures(dim), reset_real_features=False, sync_on_compute=False
    )
    return state.set_dtype(torch.float64)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between features ``(N, d)`` and ``(M, d)``, by the code the :class:`FID` metric runs."""
    state = frechet_state(real.shape[1])
    state.update(real.double(), real=True)
    state.update(fake.double(), real=False)
    return state.compute().item()


@register
class FID(SampleQuality):
    """FID of ``n`` samples against ``n`` real images (options: :class:`SampleQuality`)."""

    name = "fid"
    what = "FID (Fréchet distance of the Gaussians fitted to the features)"

    def make_state(self, dim: int) -> FrechetInceptionDistance:
        return frechet_state(dim)

    def distance(self) -> dict[str, float]:
        return {self.key: self.state.compute().item()}
