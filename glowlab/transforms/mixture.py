"""Flow++'s logistic-mixture CDF transform, applied elementwise.

``y = σ⁻¹(F(x)) · exp(a) + b`` with the mixture CDF ``F(x) = Σ_k π_k σ((x − μ_k) / s_k)``.
Parameters per element, last dimension (``3K + 2``): ``K`` mixture logits (``π = softmax``),
``K`` means, ``K`` log-scales ``log s``, then the output log-scale ``a`` and shift ``b``.

Numerics. ``F`` itself is never formed: ``σ⁻¹(F) = log F − log(1 − F)`` with both terms
log-sum-exps of log-sigmoids, so ``F`` cannot round to 0 or 1 and the map stays smooth and
strictly increasing on all of ℝ in float32 as in float64 — no clamp on ``F`` is needed, and
nothing ever cuts the map's invertibility. The clamps act on parameters only: ``log s`` and
``a`` pass through ``soft_clamp`` (``B · tanh(· / B)``, ``B = LOG_SCALE_BOUND``), which keeps
``exp`` finite and the gradients nonzero.

Initialisation. Component ``k`` (of ``K``) is centred at ``μ_k + c_k`` with the fixed offset
``c_k = CENTRE_SPREAD · (2k − K + 1) / K``. Without it, zero parameters would give ``K``
identical components, the identity map — and identical gradients for every component forever,
so the mixture could never use more than one. With it, all-zero parameters give
``y = σ⁻¹(mean_k σ(x − c_k))``: the identity for ``K = 1`` and otherwise a smooth increasing
map within ``max_k |c_k| < CENTRE_SPREAD`` of it (``σ⁻¹(F)`` lies between the smallest and the
largest ``x − c_k``), with slope 1 in both tails.

Inverse. ``σ⁻¹(F(x))`` also lies between ``min_k`` and ``max_k`` of ``(x − μ_k) / s_k``, so the
solution of ``σ⁻¹(F(x)) = ℓ`` lies in ``[min_k(μ_k + s_k ℓ), max_k(μ_k + s_k ℓ)]``; bisection
halves that bracket ``BISECTION_STEPS`` times (a bracket of width 10¹⁸ ends below 10⁻¹²). The
bisection runs without autograd: no gradient flows through the inverse.

References: Ho, Chen, Srinivas, Duan & Abbeel, "Flow++", 2019 (eq. 2 and section 3.1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from glowlab.transforms.base import ElementwiseTransform, soft_clamp

CENTRE_SPREAD = 0.5
LOG_SCALE_BOUND = 7.0
BISECTION_STEPS = 100


class _Mixture(NamedTuple):
    """Unpacked parameters: ``(..., K)`` for the components, ``(...)`` for ``a`` and ``b``."""

    log_weights: Tensor
    means: Tensor
    log_scales: Tensor
    log_out_scale: Tensor
    shift: Tensor


def _unpack(params: Tensor) -> _Mixture:
    if params.shape[-1] < 5 or (params.shape[-1] - 2) % 3:
        raise ValueError(
            f"params has {params.shape[-1]} values per element; a logistic mixture of K "
            "components needs 3K + 2 (K >= 1)"
        )
    k = (params.shape[-1] - 2) // 3
    offsets = CENTRE_SPREAD * (2 * torch.arange(k, device=params.device) - k + 1) / k
    return _Mixture(
        log_weights=torch.log_softmax(params[..., :k], dim=-1),
        means=params[..., k : 2 * k] + offsets.to(params.dtype),
        log_scales=soft_clamp(params[..., 2 * k : 3 * k], LOG_SCALE_BOUND),
        log_out_scale=soft_clamp(params[..., 3 * k], LOG_SCALE_BOUND),
        shift=params[..., 3 * k + 1],
    )


def _log_sigmoids(x: Tensor, mix: _Mixture) -> tuple[Tensor, Tensor]:
    """``log σ(u_k)`` and ``log σ(−u_k)`` for ``u_k = (x − μ_k) / s_k``: ``(...) -> (..., K)``."""
    u = (x[..., None] - mix.means) * torch.exp(-mix.log_scales)
    return F.logsigmoid(u), F.logsigmoid(-u)


def _log_cdf_and_survival(
    log_sig: Tensor, log_sig_neg: Tensor, mix: _Mixture
) -> tuple[Tensor, Tensor]:
    """``log F`` and ``log(1 − F)``: log-sum-exps over the components, ``(..., K) -> (...)``."""
    return (
        torch.logsumexp(mix.log_weights + log_sig, dim=-1),
        torch.logsumexp(mix.log_weights + log_sig_neg, dim=-1),
    )


@torch.no_grad()
def _bisect(logit_target: Tensor, mix: _Mixture) -> Tensor:
    """The ``x`` with ``σ⁻¹(F(x)) = logit_target``, bracketed from the parameters."""
    ends = mix.means + torch.exp(mix.log_scales) * logit_target[..., None]  # (..., K)
    low, high = ends.amin(dim=-1), ends.amax(dim=-1)
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        log_cdf, log_survival = _log_cdf_and_survival(*_log_sigmoids(mid, mix), mix)
        above = log_cdf - log_survival > logit_target
        low, high = torch.where(above, low, mid), torch.where(above, mid, high)
    return (low + high) / 2


def logistic_mixture_transform(
    x: Tensor, params: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Apply the map (or its inverse) elementwise: ``x (...)``, ``params (..., 3K + 2)``.

    Returns ``(y, log|dy/dx|)``, both shaped like ``x``; for the inverse, the log-derivative
    is that of the forward map at the returned point (so callers negate it).
    """
    mix = _unpack(params)
    if inverse:
        x = _bisect((x - mix.shift) * torch.exp(-mix.log_out_scale), mix)
    log_sig, log_sig_neg = _log_sigmoids(x, mix)
    log_cdf, log_survival = _log_cdf_and_survival(log_sig, log_sig_neg, mix)
    # F' = Σ_k π_k σ(u_k) σ(−u_k) / s_k and d σ⁻¹(F) / dx = F' / (F (1 − F))
    log_density = torch.logsumexp(mix.log_weights - mix.log_scales + log_sig + log_sig_neg, dim=-1)
    log_derivative = mix.log_out_scale + log_density - log_cdf - log_survival
    if inverse:
        return x, log_derivative
    return (log_cdf - log_survival) * torch.exp(mix.log_out_scale) + mix.shift, log_derivative


class LogisticMixture(ElementwiseTransform):
    """Flow++'s logistic-mixture CDF with ``components`` components (``3K + 2`` parameters per
    element); its inverse is a bisection, so ``exact_inverse`` is False and no gradient flows
    through ``inverse``."""

    exact_inverse = False

    def __init__(self, channels: int | None = None, components: int = 4) -> None:
        super().__init__(channels)
        if not isinstance(components, int) or components < 1:
            raise ValueError(f"mixture components={components!r} must be an integer >= 1")
        self.components = components
        self.n_params = 3 * components + 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return logistic_mixture_transform(x, params)

    def inverse(self, z: Tensor, params: Tensor) -> Tensor:
        return logistic_mixture_transform(z, params, inverse=True)[0]
