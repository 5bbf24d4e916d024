"""Monotonic rational-quadratic splines with linear tails (neural spline flows).

Each element has ``K`` bins on ``[-bound, bound]``; outside the interval the map is the
identity. Parameters per element, last dimension: ``K`` width logits, ``K`` height logits and
``K - 1`` interior derivative pre-activations (``3K - 1`` in all). All zeros give the identity.

References: Durkan, Bekasov, Murray & Papamakarios, "Neural spline flows", 2019 (eqs. 4-8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from glowlab.transforms.base import ElementwiseTransform
from glowlab.validation import check_positive

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
_IDENTITY_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))  # softplus(0 + shift) + min = 1


def _knots(logits: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Bin sizes ``(..., K)`` and knot positions ``(..., K + 1)`` on ``[-bound, bound]``."""
    bins = logits.shape[-1]
    sizes = MIN_BIN + (1 - MIN_BIN * bins) * torch.softmax(logits, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))
    knots = 2 * bound * knots - bound
    knots[..., 0], knots[..., -1] = -bound, bound
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(
    x: Tensor, params: Tensor, bound: float = 3.0, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) elementwise: ``x (...)``, ``params (..., 3K - 1)``.

    Returns ``(y, log|dy/dx|)``, both shaped like ``x``; for the inverse, the log-derivative
    is that of the forward map at the returned point (so callers negate it).
    """
    bins = (params.shape[-1] + 1) // 3
    widths, x_knots = _knots(params[..., :bins], bound)
    heights, y_knots = _knots(params[..., bins : 2 * bins], bound)
    inner = MIN_DERIVATIVE + F.softplus(params[..., 2 * bins :] + _IDENTITY_SHIFT)
    derivatives = F.pad(inner, (1, 1), value=1.0)  # slope 1 at both ends: linear tails

    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    knots_in = y_knots if inverse else x_knots
    k = torch.searchsorted(knots_in[..., 1:-1].contiguous(), xc[..., None]).clamp(0, bins - 1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, k)[..., 0]

    x_k, y_k, w, h = pick(x_knots), pick(y_knots), pick(widths), pick(heights)
    d_k, d_k1 = pick(derivatives[..., :-1]), pick(derivatives[..., 1:])
    slope = h / w
    curvature = d_k1 + d_k - 2 * slope
    if inverse:
        dy = xc - y_k
        a = h * (slope - d_k) + dy * curvature
        b = h * d_k - dy * curvature
        c = -slope * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        out = x_k + xi * w
    else:
        xi = (xc - x_k) / w
        out = y_k + h * (slope * xi * xi + d_k * xi * (1 - xi)) / (
            slope + curvature * xi * (1 - xi)
        )
    denominator = slope + curvature * xi * (1 - xi)
    numerator = slope * slope * (d_k1 * xi * xi + 2 * slope * xi * (1 - xi) + d_k * (1 - xi) ** 2)
    log_derivative = torch.log(numerator) - 2 * torch.log(denominator)
    y = torch.where(inside, out, x)
    return y, torch.where(inside, log_derivative, torch.zeros_like(x))


class Spline(ElementwiseTransform):
    """Rational-quadratic spline with ``bins`` bins on ``[-bound, bound]``, identity outside
    (neural spline flows); ``3·bins − 1`` parameters per element, all zeros the identity."""

    def __init__(self, channels: int | None = None, bins: int = 8, bound: float = 3.0) -> None:
        super().__init__(channels)
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"spline bins={bins!r} must be an integer >= 2 (8 in the NSF paper)")
        self.bins = bins
        check_positive("bound", bound)
        self.bound = bound
        self.n_params = 3 * bins - 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline(x, params, self.bound)

    def inverse(self, z: Tensor, params: Tensor) -> Tensor:
        return rational_quadratic_spline(z, params, self.bound, inverse=True)[0]
