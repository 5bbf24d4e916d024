"""Elementwise bijections: dequantisation, preprocessing and NICE's diagonal scaling."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, constant_logdet, sum_except_batch
from glowlab.validation import check_n_bits


class Dequantize(Bijection):
    """Integer images ``x`` into the continuous pixel scale ``[0, 1)`` of the flow.

    Uniform dequantisation (``sigma=None``): ``v = (x + u) / 2^n_bits``, ``u`` is ``noise``
    if given (any shape broadcastable to ``x``, values in ``[0, 1)``), else ``U[0, 1)`` per
    pixel; the flow's density then bounds the probability of the discrete image.

    Gaussian noise augmentation (``sigma`` set): ``v = (x + ½) / 2^n_bits + (σ/2)·ε``, the bin
    centres plus Gaussian noise of std ``σ`` on the ``[-1, 1]`` scale of the TarFlow paper
    (``σ/2`` on ``[0, 1)``, ``2^n_bits·σ/2`` pixel levels), ``ε ~ N(0, I)`` or ``ε = Φ⁻¹(noise)``
    for given uniform ``noise`` (``0.5`` gives the bin centres). The flow then models the
    density of the *noisy* images ``y = x + ½ + 2^n_bits·(σ/2)·ε`` (pixel units), which is not
    a bound on the discrete likelihood; ``v`` may leave ``[0, 1)``.

    Either way the rescaling ``x + u -> v`` has logdet ``-D · n_bits · ln 2``, so log-densities
    are in pixel units (integers spaced by 1). ``inverse`` rounds back down to integers
    ``floor(v · 2^n_bits)``, clamped to the range.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``, logdet ``(B,)``.

    References: Theis et al., "A note on the evaluation of generative models", 2016; Zhai et
    al., "Normalizing flows are capable generative models" (TarFlow), 2025.
    """

    def __init__(self, n_bits: int = 8, sigma: float | None = None) -> None:
        super().__init__()
        check_n_bits(n_bits)
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0
        ):
            raise ValueError(
                f"dequantization sigma={sigma!r} must be a number > 0 (the noise std on the "
                "[-1, 1] scale, e.g. model.dequantization.sigma=0.05)"
            )
        self.n_bits = n_bits
        self.n_bins = 2**n_bits
        self.sigma = None if sigma is None else float(sigma)

    def forward(
        self, x: Tensor, cond: Tensor | None = None, noise: Tensor | float | None = None
    ) -> tuple[Tensor, Tensor]:
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        dims = x[0].numel()
        logdet = torch.tensor(-dims * self.n_bits * math.log(2.0), device=x.device)
        if self.sigma is None:
            u = torch.rand_like(x) if noise is None else noise
            return (x + u) / self.n_bins, constant_logdet(x, logdet)
        from glowlab.dequantization import standard_normal_noise  # (import cycle)

        eps = standard_normal_noise(x, noise)
        return (x + 0.5) / self.n_bins + (0.5 * self.sigma) * eps, constant_logdet(x, logdet)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.floor(z * self.n_bins).clamp(0, self.n_bins - 1).to(torch.uint8)

    def extra_repr(self) -> str:
        return f"n_bits={self.n_bits}" + ("" if self.sigma is None else f", sigma={self.sigma}")


class Shift(Bijection):
    """``z = x - 0.5``: ``[0, 1)`` to ``[-0.5, 0.5)`` (Glow). logdet = 0."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z + 0.5


class Logit(Bijection):
    """``z = logit(α + (1 - 2α) x)`` on ``[0, 1)`` (RealNVP, α = 0.05).

    logdet = ``Σ [log(1 - 2α) - log p - log(1 - p)]`` with ``p = α + (1 - 2α) x``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha={alpha!r} must be in [0, 0.5); RealNVP uses 0.05")
        self.alpha = alpha

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        logdet = sum_except_batch(math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p))
        return z, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class DiagonalScale(Bijection):
    """``z = x · exp(s)`` with one learned ``s`` per dimension (NICE's final layer).

    Shapes ``(B, *shape) -> (B, *shape)``; logdet = ``Σ s``. References: Dinh et al., NICE, 2015.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), constant_logdet(x, self.log_scale.sum())

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z * torch.exp(-self.log_scale)
