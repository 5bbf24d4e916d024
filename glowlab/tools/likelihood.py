"""Bits per dim of integer images under a flow, through a pluggable likelihood bound.

A flow models dequantized images ``v = (x + u) / 2^n_bits``; any distribution ``q(u | x)`` on
the unit cube gives a lower bound ``log P(x) >= E_q[log p(x + u) - log q(u | x)]``. Today the
models only have uniform ``q``; a variational dequantizer (Flow++) would add a second
``LikelihoodBound`` (and an importance-weighted one) without changing the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from glowlab.models.multiscale import MultiscaleFlow
from glowlab.tools.loading import model_labels

Estimator = Callable[[MultiscaleFlow, Tensor, Tensor | None, int, torch.Generator], Tensor]


@dataclass(frozen=True)
class LikelihoodBound:
    """A lower bound on ``log P(x)``: ``estimate(model, x, y, samples, generator)`` -> nats
    ``(B,)`` from ``samples`` draws of noise taken from ``generator`` (CPU).

    ``name`` is what reports call it; ``note`` says what it is and is not.
    """

    name: str
    note: str
    estimate: Estimator


def _uniform_estimate(
    model: MultiscaleFlow, x: Tensor, y: Tensor | None, samples: int, generator: torch.Generator
) -> Tensor:
    total = x.new_zeros(x.shape[0], dtype=torch.float64)
    for _ in range(samples):
        noise = torch.rand(x.shape, generator=generator).to(x.device, model._dtype())
        total += model.log_prob(x, y, noise).double()
    return total / samples


UNIFORM_DEQUANTIZATION = LikelihoodBound(
    name="uniform dequantization bound",
    note=(
        "mean over the noise draws of -log p((x + u) / 2^n_bits) with u ~ U[0,1)^D, in bits "
        "per dim (an upper bound on the discrete bpd, the number papers report); the model "
        "has no variational dequantizer, so no variational or importance-weighted bound is "
        "computed"
    ),
    estimate=_uniform_estimate,
)


@torch.no_grad()
def per_image_bpd(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 1,
    seed: int = 0,
    bound: LikelihoodBound = UNIFORM_DEQUANTIZATION,
) -> tuple[Tensor, Tensor]:
    """Bits per dim of every image: float64 ``(N,)``, with the labels ``(N,)``.

    ``batches`` yields ``(uint8 (B, C, H, W), long (B,))``. Batch ``i`` draws its noise from
    ``torch.Generator().manual_seed(seed + i)``, as ``FlowModule``'s test step does, so
    ``samples=1``, ``seed=1234`` and the run's eval batch size reproduce its ``test/bpd``.
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 (noise draws per image)")
    device = next(model.parameters()).device
    bpd, labels = [], []
    for i, (x, y) in enumerate(batches):
        generator = torch.Generator().manual_seed(seed + i)
        x = x.to(device)
        log_prob = bound.estimate(model, x, model_labels(model, y.to(device)), samples, generator)
        bpd.append(model.nats_to_bpd(log_prob).cpu())
        labels.append(y)
    if not bpd:
        raise ValueError("no images to score: the split or folder is empty")
    return torch.cat(bpd), torch.cat(labels)
