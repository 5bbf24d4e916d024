"""The choices of a model's prior and dequantizer, as config nodes (``model/prior``,
``model/dequantization``), each holding only its own options."""

from __future__ import annotations

from dataclasses import dataclass

from glowlab.validation import check_int, check_positive, choose

PRIORS = ("learned", "standard", "planar")
DEQUANTIZATION = ("uniform", "variational", "gaussian")


@dataclass(frozen=True)
class PriorChoice:
    """``learned``: Glow's learned factor-out priors ``p(z₂|z₁)`` and learned top prior;
    ``standard``: N(0, I) everywhere (a learned top when class-conditional); ``planar``:
    learned factor-outs and ``layers`` planar flows on the top latent."""

    kind: str = "learned"
    layers: int = 4

    def __post_init__(self) -> None:
        choose("prior", self.kind, PRIORS)
        check_int("prior layers", self.layers)


@dataclass(frozen=True)
class DequantizationChoice:
    """``uniform``: ``u ~ U[0, 1)`` (bpd bounds the discrete likelihood); ``variational``:
    Flow++'s ``q(u|x)`` with ``width`` hidden channels and ``depth`` couplings; ``gaussian``:
    noise augmentation (TarFlow), the bin centres plus ``N(0, σ²)`` noise with ``sigma`` on the
    ``[-1, 1]`` image scale. The model then reports ``noisy_bpd``, the density of the noisy
    images, not a bound on the discrete data (see ``glowlab.bijections.Dequantize``).

    References: Theis et al., 2016; Ho et al., "Flow++", 2019; Zhai et al., "Normalizing flows
    are capable generative models" (TarFlow), 2025.
    """

    kind: str = "uniform"
    width: int = 32
    depth: int = 4
    sigma: float = 0.05

    def __post_init__(self) -> None:
        choose("dequantization", self.kind, DEQUANTIZATION)
        check_int("dequantization width", self.width)
        check_int("dequantization depth", self.depth)
        check_positive("model.dequantization.sigma", self.sigma)

    @property
    def noise_sigma(self) -> float | None:
        """``sigma`` for Gaussian noise augmentation, else None (uniform or variational)."""
        return float(self.sigma) if self.kind == "gaussian" else None


def prior_choice(prior: str | PriorChoice) -> PriorChoice:
    """A ``PriorChoice`` from itself or a kind's name (the Python API's shortcut)."""
    return prior if isinstance(prior, PriorChoice) else PriorChoice(prior)


def dequantization_choice(dequantization: str | DequantizationChoice) -> DequantizationChoice:
    """A ``DequantizationChoice`` from itself or a kind's name."""
    if isinstance(dequantization, DequantizationChoice):
        return dequantization
    return DequantizationChoice(dequantization)
