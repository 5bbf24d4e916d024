"""Bits per dim of integer images under a flow, through the likelihood bounds it supports.

A flow models dequantized images ``v = (x + u) / 2^n_bits``. With ``K`` draws
``u_k ~ q(u | x)`` and log weights ``w_k = log p(x + u_k) - log q(u_k | x)`` (nats; ``log q = 0``
for uniform ``q``, the rescaling's ``-D·n_bits·ln 2`` included in ``log p``):

- the dequantization bound ``(1/K) Σ_k w_k`` estimates ``E_q[w] <= log P(x)`` (Theis et al.
  2016 for uniform ``q``, Ho et al. 2019 for a variational one);
- the importance-weighted bound ``log (1/K) Σ_k exp(w_k)`` is a lower bound on ``log P(x)``
  in expectation that tightens as ``K`` grows and equals the former at ``K = 1`` (Burda et al.
  2016; reported for Flow++ by Ho et al. 2019).

Both come from the same draws; bits per dim ``= -bound / (D ln 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from glowlab.models.multiscale import MultiscaleFlow
from glowlab.tools.loading import model_labels
from glowlab.tools.progress import track


@dataclass(frozen=True)
class LikelihoodBound:
    """A lower bound on ``log P(x)``: ``reduce(log_weights)`` -> nats ``(B,)`` from the
    float64 log weights ``(B, K)`` of ``K`` dequantization draws (``dequantization_log_weights``).

    ``name`` is what reports call it; ``note`` says what it is and is not.
    """

    name: str
    note: str
    reduce: Callable[[Tensor], Tensor]


def _mean_log_weight(log_weights: Tensor) -> Tensor:
    return log_weights.mean(dim=1)


def _importance_weighted(log_weights: Tensor) -> Tensor:
    return torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1])


UNIFORM_DEQUANTIZATION = LikelihoodBound(
    name="uniform dequantization bound",
    note=(
        "mean over the noise draws of -log p((x + u) / 2^n_bits) with u ~ U[0,1)^D, in bits "
        "per dim (an upper bound on the discrete bpd, the number papers report); the model "
        "has no variational dequantizer, so no variational or importance-weighted bound is "
        "computed"
    ),
    reduce=_mean_log_weight,
)

VARIATIONAL_DEQUANTIZATION = LikelihoodBound(
    name="variational dequantization bound",
    note=(
        "mean over the noise draws u ~ q(u|x) of -[log p((x + u) / 2^n_bits) - log q(u|x)], in "
        "bits per dim: the variational bound the model was trained on (Flow++), an upper bound "
        "on the discrete bpd"
    ),
    reduce=_mean_log_weight,
)

IMPORTANCE_WEIGHTED = LikelihoodBound(
    name="importance-weighted bound",
    note=(
        "-log (1/K sum_k exp(log p((x + u_k) / 2^n_bits) - log q(u_k|x))) / (D ln 2) over the "
        "K = samples draws u_k ~ q(u|x), the same draws as the variational bound: never above "
        "it, equal at K = 1, and tending to the discrete bpd -log2 P(x) / D as K grows "
        "(Burda et al. 2016; the number Flow++ reports)"
    ),
    reduce=_importance_weighted,
)

NOISE_AUGMENTED = LikelihoodBound(
    name="Gaussian noise-augmented density",
    note=(
        "noisy_bpd: mean over the noise draws eps ~ N(0, I) of -log p(y) / (D ln 2) for the "
        "noisy image y = x + 1/2 + 2^n_bits * (sigma/2) * eps in pixel units (Gaussian noise "
        "augmentation, TarFlow): a density of continuous noisy images, NOT a bound on the "
        "discrete bpd, so never compare it with the bpd of other models"
    ),
    reduce=_mean_log_weight,
)

IMPORTANCE_WEIGHTED_ABSENT = (
    "null: the model dequantizes uniformly (no variational dequantizer q(u|x) to "
    "importance-weight); the uniform dequantization bound is the number to report"
)


def model_bounds(model: MultiscaleFlow) -> tuple[LikelihoodBound, ...]:
    """The bounds to report for ``model``, its training bound first: uniform dequantization,
    or the variational and importance-weighted bounds of a variational dequantizer; for a
    noise-augmented model, its noisy-image density (not a bound: ``NOISE_AUGMENTED``)."""
    if getattr(model, "noise_sigma", None) is not None:
        return (NOISE_AUGMENTED,)
    if model.dequantizer is None:
        return (UNIFORM_DEQUANTIZATION,)
    return (VARIATIONAL_DEQUANTIZATION, IMPORTANCE_WEIGHTED)


def dequantization_log_weights(
    model: MultiscaleFlow, x: Tensor, y: Tensor | None, samples: int, generator: torch.Generator
) -> Tensor:
    """``w_k = log p(x + u_k) - log q(u_k | x)`` in nats, float64 ``(B, samples)``.

    Draw ``k`` passes ``noise = torch.rand(x.shape, generator=generator)`` (drawn on the CPU)
    to the model: ``u_k`` itself for uniform dequantization, ``ε = Φ⁻¹(noise)`` for a
    variational dequantizer.
    """
    draws = []
    for _ in range(samples):
        noise = torch.rand(x.shape, generator=generator).to(x.device, model._dtype())
        draws.append(model.log_prob(x, y, noise).double())
    return torch.stack(draws, dim=1)


@torch.no_grad()
def per_image_bounds(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    bounds: Sequence[LikelihoodBound],
    samples: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Bits per dim of every image under each of ``bounds``, all from the same draws:
    ``{bound.name: float64 (N,)}``, with the labels ``(N,)``.

    ``batches`` yields ``(uint8 (B, C, H, W), long (B,))``. Batch ``i`` draws its noise from
    ``torch.Generator().manual_seed(seed + i)``, as ``FlowModule``'s test step does, so
    ``samples=1``, ``seed=1234`` and the run's eval batch size reproduce its ``test/bpd``.
    ``progress`` draws a bar over the batches (`glowlab.tools.progress.track`).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 (noise draws per image)")
    if not bounds:
        raise ValueError("bounds is empty; pass at least one LikelihoodBound")
    device = next(model.parameters()).device
    bpd: dict[str, list[Tensor]] = {bound.name: [] for bound in bounds}
    labels = []
    for i, (x, y) in enumerate(track(batches, "bits per dim", progress)):
        generator = torch.Generator().manual_seed(seed + i)
        x = x.to(device)
        y_model = model_labels(model, y.to(device))
        log_weights = dequantization_log_weights(model, x, y_model, samples, generator)
        for bound in bounds:
            bpd[bound.name].append(model.nats_to_bpd(bound.reduce(log_weights)).cpu())
        labels.append(y)
    if not labels:
        raise ValueError("no images to score: the split or folder is empty")
    return {name: torch.cat(parts) for name, parts in bpd.items()}, torch.cat(labels)


def per_image_bpd(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 1,
    seed: int = 0,
    bound: LikelihoodBound | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Bits per dim of every image under ``bound`` (default: the model's training bound,
    ``model_bounds(model)[0]``): float64 ``(N,)``, with the labels ``(N,)``.

    Noise seeding as in ``per_image_bounds``.
    """
    bound = bound or model_bounds(model)[0]
    bpd, labels = per_image_bounds(model, batches, [bound], samples, seed, progress)
    return bpd[bound.name], labels
