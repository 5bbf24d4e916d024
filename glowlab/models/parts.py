"""The choices of a model's prior and dequantizer, as config nodes (``model/prior``,
``model/dequantization``), each holding only its own options."""

from __future__ import annotations

from dataclasses import dataclass

from glowlab.validation import check_positive, choose

PRIORS = ("learned", "standard", "planar")
DEQUANTIZATION = ("uniform", "variational")


@dataclass(frozen=True)
class PriorChoice:
    """``learned``: Glow's learned factor-out priors ``p(z₂|z₁)`` and learned top prior;
    ``standard``: N(0, I) everywhere (a learned top when class-conditional); ``planar``:
    learned factor-outs and ``layers`` planar flows on the top latent."""

    kind: str = "learned"
    layers: int = 4

    def __post_init__(self) -> None:
        choose("prior", self.kind, PRIORS)
        check_positive("prior layers", self.layers)


@dataclass(frozen=True)
class DequantizationChoice:
    """``uniform``: ``u ~ U[0, 1)`` (bpd bounds the discrete likelihood); ``variational``:
    Flow++'s ``q(u|x)`` with ``width`` hidden channels and ``depth`` couplings."""

    kind: str = "uniform"
    width: int = 32
    depth: int = 4

    def __post_init__(self) -> None:
        choose("dequantization", self.kind, DEQUANTIZATION)
        check_positive("dequantization width", self.width)
        check_positive("dequantization depth", self.depth)


def prior_choice(prior: str | PriorChoice) -> PriorChoice:
    """A ``PriorChoice`` from itself or a kind's name (the Python API's shortcut)."""
    return prior if isinstance(prior, PriorChoice) else PriorChoice(prior)


def dequantization_choice(dequantization: str | DequantizationChoice) -> DequantizationChoice:
    """A ``DequantizationChoice`` from itself or a kind's name."""
    if isinstance(dequantization, DequantizationChoice):
        return dequantization
    return DequantizationChoice(dequantization)
