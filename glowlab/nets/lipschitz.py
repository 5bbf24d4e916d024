"""Lipschitz-constrained networks for residual flows: ``g`` with ``Lip(g) ≤ coeff³ < 1``.

Every convolution is spectrally normalised as an operator on its input size (``σ`` by power
iteration on the zero-padded convolution, not on the reshaped weight matrix), and the
activations are 1-Lipschitz (LipSwish), so ``x + g(x)`` is invertible
(``glowlab.bijections.residual.ResidualBlock``).

References: Behrmann et al., "Invertible Residual Networks", 2019; Chen et al., "Residual
Flows for Invertible Generative Modeling", 2019; Miyato et al., "Spectral Normalization for
Generative Adversarial Networks", 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESTART_POWER_ITERATIONS = 100
"""Power iterations run when the power vector is (re)started for a new input size."""


class SpectralNormConv2d(nn.Module):
    """Stride-1 'same' convolution whose operator norm on ``(C_in, H, W)`` inputs is ≤ ``coeff``.

    σ = ‖conv‖₂ is the largest singular value of the linear map ``x -> conv2d(x, W)`` on
    zero-padded ``H × W`` inputs (not of the reshaped weight matrix). It is estimated by power
    iteration with ``conv2d`` and its adjoint ``conv_transpose2d``; the weight used is
    ``W / max(1, σ / coeff)``. The bias does not change the Lipschitz constant.

    - ``normalized_weight(H, W, update=True)`` (training forward): ``n_power_iterations``
      more steps, stores σ; gradients flow through σ (Miyato et al. 2018).
    - ``update=False`` (eval, and every inverse): the stored σ, so forward and inverse use the
      same weight.
    The power vector ``(1, C_in, H, W)`` and σ are buffers saved in the state dict. When there
    is none for the requested size (fresh module, or a new input size) one is drawn at random
    (from a fixed seed, leaving the global RNG alone) and iterated ``RESTART_POWER_ITERATIONS``
    times, in any mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        coeff: float,
        n_power_iterations: int,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r} must be odd for 'same' padding")
        self.in_channels = in_channels
        self.padding = kernel_size // 2
        self.coeff = coeff
        self.n_power_iterations = n_power_iterations
        bound = 0.0 if zero_init else 1 / math.sqrt(in_channels * kernel_size**2)
        weight = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(nn.init.uniform_(weight, -bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("power_vector", torch.empty(0))
        self.register_buffer("sigma", torch.zeros(()))

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, padding=self.padding)

    def _conv_adjoint(self, y: Tensor, weight: Tensor) -> Tensor:
        return F.conv_transpose2d(y, weight, padding=self.padding)

    @torch.no_grad()
    def _power_iterate(self, n_iterations: int) -> None:
        """``u ← AᵀAu / ‖AᵀAu‖`` (kept as is if ``AᵀAu = 0``); store ``σ = ‖Au‖``."""
        weight, u = self.weight.detach(), self.power_vector
        for _ in range(n_iterations):
            w = self._conv_adjoint(self._conv(u, weight), weight)
            norm = torch.linalg.vector_norm(w)
            u = torch.where(norm > 0, w / norm, u)
        self.power_vector.copy_(u)
        self.sigma.copy_(torch.linalg.vector_norm(self._conv(u, weight)))

    @torch.no_grad()
    def _restart(self, height: int, width: int) -> None:
        seeded = torch.Generator().manual_seed(0)  # the same start on every rank and run
        u = torch.randn(1, self.in_channels, height, width, generator=seeded, dtype=torch.float64)
        self.power_vector = (u / torch.linalg.vector_norm(u)).to(self.weight)
        self._power_iterate(RESTART_POWER_ITERATIONS)

    def normalized_weight(self, height: int, width: int, update: bool) -> Tensor:
        """The weight ``W / max(1, σ / coeff)`` for inputs of spatial size ``height × width``."""
        if self.power_vector.shape != (1, self.in_channels, height, width):
            self._restart(height, width)
        elif update:
            self._power_iterate(self.n_power_iterations)
        sigma = self.sigma
        if update:
            with_grad = torch.linalg.vector_norm(self._conv(self.power_vector, self.weight))
            sigma = sigma + (with_grad - with_grad.detach())  # the stored value, σ's gradient
        return self.weight / torch.clamp_min(sigma / self.coeff, 1.0)

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H, W)`` with a weight from ``normalized_weight``."""
        return F.conv2d(x, weight, self.bias, padding=self.padding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "power_vector")
        if saved is not None:  # the saved vector may be for another input size: take its shape
            self.power_vector = self.power_vector.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LipSwish(nn.Module):
    """``x · sigmoid(β x) / 1.1`` with a learned per-channel ``β = softplus(ρ) > 0``.

    ``d/dx [x · sigmoid(βx)]`` depends on ``βx`` only and peaks at ≈ 1.0998, so the map is
    1-Lipschitz for every β. ``β`` starts at 1. Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    References: Chen et al., "Residual Flows", 2019.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.full((1, channels, 1, 1), math.log(math.expm1(1.0))))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1


class LipschitzBranch(nn.Module):
    """``g``: LipSwish → SN-conv3×3 (C→hidden) → LipSwish → SN-conv1×1 → LipSwish →
    SN-conv3×3 (hidden→C), so ``Lip(g) ≤ coeff³ < 1``. The last convolution starts at zero:
    a fresh ``g`` is 0. Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, hidden: int, coeff: float, n_power_iterations: int) -> None:
        super().__init__()
        self.activations = nn.ModuleList([LipSwish(channels), LipSwish(hidden), LipSwish(hidden)])
        self.convs = nn.ModuleList(
            [
                SpectralNormConv2d(channels, hidden, 3, coeff, n_power_iterations),
                SpectralNormConv2d(hidden, hidden, 1, coeff, n_power_iterations),
                SpectralNormConv2d(hidden, channels, 3, coeff, n_power_iterations, zero_init=True),
            ]
        )

    def weights(self, height: int, width: int, update: bool) -> list[Tensor]:
        """The normalised weights of the three convolutions for ``height × width`` inputs."""
        return [conv.normalized_weight(height, width, update) for conv in self.convs]

    def forward(self, x: Tensor, weights: Sequence[Tensor]) -> Tensor:
        for activation, conv, weight in zip(self.activations, self.convs, weights, strict=True):
            x = conv(activation(x), weight)
        return x


__all__ = ["LipSwish", "LipschitzBranch", "SpectralNormConv2d"]
