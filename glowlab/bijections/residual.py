"""Invertible residual block (i-ResNet) with the Residual Flows log-determinant estimator.

``z = x + g(x)`` is a bijection when ``Lip(g) < 1`` (Banach fixed point): the inverse is the
limit of ``x ← z − g(x)``. ``g`` keeps ``Lip(g) ≤ coeff < 1`` by spectrally normalising every
convolution as an operator on its input size and using 1-Lipschitz activations.

    log det(I + J_g) = Σ_{k≥1} (−1)^{k+1} tr(J_g^k) / k

The series converges because the spectral radius of ``J_g`` is below 1. Traces are estimated
with Hutchinson's ``vᵀ J^k v`` built from vector–Jacobian products; Russian-roulette truncation
of the series keeps the estimate unbiased.

References: Behrmann et al., "Invertible Residual Networks", 2019; Chen et al., "Residual
Flows for Invertible Generative Modeling", 2019; Miyato et al., "Spectral Normalization for
Generative Adversarial Networks", 2018.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.bijections.hutchinson import hutchinson_noise
from glowlab.validation import check_positive, choose

LOGDET_ESTIMATORS = ("exact", "roulette", "series")

RESTART_POWER_ITERATIONS = 100
"""Power iterations run when the power vector is (re)started for a new input size."""

VectorJacobianProduct = Callable[[Tensor], Tensor]
"""``w -> wᵀ J_g`` per sample: ``(B, C, H, W) -> (B, C, H, W)``."""


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


def roulette_weights(exact_terms: int, p: float) -> list[float]:
    """Term weights ``1 / P(N ≥ k)`` for ``k = 1..N``, one draw of ``N = exact_terms + M``.

    ``M ~ Geometric(p)`` counts failures before the first success, so ``P(M ≥ m) = (1−p)^m``:
    the first ``exact_terms`` weights are 1, term ``exact_terms + m`` gets ``(1−p)^{−m}``.
    """
    extra = int(torch.empty((), dtype=torch.float64).geometric_(p).item()) - 1
    return [1.0] * exact_terms + [(1 - p) ** -m for m in range(1, extra + 1)]


def log_det_power_series(
    vjp: VectorJacobianProduct, probe: Tensor, weights: Sequence[float]
) -> Tensor:
    """``Σ_{k=1}^{n} weights[k−1] · (−1)^{k+1} / k · vᵀ J^k v`` per sample, ``(B,)``.

    ``probe`` is ``v``, ``(B, C, H, W)``; ``vjp(w) = wᵀ J`` per sample. With a random ``v`` of
    identity covariance, ``vᵀ J^k v`` is Hutchinson's unbiased estimate of ``tr(J^k)``; summed
    over the basis vectors it is the exact trace.
    """
    row = probe
    total = probe.new_zeros(probe.shape[0])
    for k, weight in enumerate(weights, start=1):
        row = vjp(row)  # vᵀ J^k
        total = total + ((-1) ** (k + 1) * weight / k) * sum_except_batch(row * probe)
    return total


def log_det_brute_force(vjp: VectorJacobianProduct, x: Tensor) -> Tensor:
    """``log det(I + J)`` per sample from the full ``(D, D)`` Jacobian, ``D = C·H·W``.

    Costs ``D`` vector–Jacobian products and a ``D³`` determinant per sample: tiny inputs only.
    """
    batch, dim = x.shape[0], x[0].numel()
    basis = torch.eye(dim, dtype=x.dtype, device=x.device)
    rows = [vjp(e.view(1, *x.shape[1:]).expand_as(x)).reshape(batch, dim) for e in basis]
    jacobian = torch.stack(rows, dim=1)  # (B, D, D): row i = ∂g_i/∂x
    return torch.linalg.slogdet(basis + jacobian)[1]


class ResidualBlock(Bijection):
    """Invertible residual block ``z = x + g(x)`` with ``Lip(g) ≤ coeff³ < 1``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; ``g`` as in ``LipschitzBranch`` (starts at 0,
    so a fresh block is the identity).

    Arguments:
        channels, hidden: channels of ``x`` and of ``g``'s hidden layers.
        coeff: bound on each convolution's operator norm, in (0, 1). Closer to 1 is more
            expressive but needs more inverse iterations and more series terms.
        n_power_iterations: power-iteration steps per training forward, per convolution.
        logdet: how ``log det(I + J_g)`` is computed:
            ``"roulette"`` (default): unbiased. Power series with a Rademacher Hutchinson probe
            (one per sample, the same for every term) and Russian-roulette truncation: the
            first ``exact_terms`` terms always, then a geometric number of further terms
            (``roulette_p`` the stopping probability), term ``k`` reweighted by
            ``1 / P(N ≥ k)``. One ``N`` is drawn per batch (Chen et al. 2019). The variance
            is finite if ``Lip(g)² < 1 − roulette_p`` (``Lip(g) < 0.71`` for ``p = 0.5``).
            In eval mode ``eval_exact_terms`` terms are always computed (still unbiased,
            lower variance).
            ``"series"``: the first ``series_terms`` terms with a Hutchinson probe, in both
            modes; biased (truncation), fixed cost.
            ``"exact"``: the brute-force per-sample Jacobian (``C·H·W`` vector–Jacobian
            products and a ``(C·H·W)³`` determinant per sample): tests and tiny inputs.
        inverse_tol: the inverse stops when ``max|Δx| ≤ inverse_tol · (1 + max|z|)``;
            ``None`` means ``100 · eps`` of the input's dtype.
        max_inverse_iterations: cap on fixed-point iterations; a ``RuntimeWarning`` says
            when the inverse stops there unconverged.

    Gradients backpropagate through the estimator (vector–Jacobian products built with
    ``create_graph=True``): memory grows with the number of series terms. Training-mode
    forwards update the spectral-norm estimates; the inverse never does, so it inverts the
    latest forward. The inverse is numerical (``exact_inverse = False``), so
    ``Sequential(memory_saving="reversible")`` refuses the block; with ``"checkpoint"`` the
    recomputed training forward runs the power iterations once more (random draws repeat,
    as checkpointing restores the RNG state).

    References: Behrmann et al., "Invertible Residual Networks", 2019; Chen et al.,
    "Residual Flows for Invertible Generative Modeling", 2019.
    """

    exact_inverse = False

    def __init__(
        self,
        channels: int,
        hidden: int,
        coeff: float = 0.97,
        n_power_iterations: int = 5,
        logdet: str = "roulette",
        exact_terms: int = 2,
        eval_exact_terms: int = 10,
        roulette_p: float = 0.5,
        series_terms: int = 8,
        inverse_tol: float | None = None,
        max_inverse_iterations: int = 1000,
    ) -> None:
        super().__init__()
        self.logdet = choose("logdet", logdet, LOGDET_ESTIMATORS)
        if not 0 < coeff < 1:
            raise ValueError(f"coeff={coeff!r} must be in (0, 1) for g to be a contraction")
        if not 0 < roulette_p < 1:
            raise ValueError(f"roulette_p={roulette_p!r} must be in (0, 1)")
        for option, value in (
            ("channels", channels),
            ("hidden", hidden),
            ("n_power_iterations", n_power_iterations),
            ("exact_terms", exact_terms),
            ("eval_exact_terms", eval_exact_terms),
            ("series_terms", series_terms),
            ("max_inverse_iterations", max_inverse_iterations),
        ):
            check_positive(option, value)
        if inverse_tol is not None:
            check_positive("inverse_tol", inverse_tol)
        self.exact_terms = exact_terms
        self.eval_exact_terms = eval_exact_terms
        self.roulette_p = roulette_p
        self.series_terms = series_terms
        self.inverse_tol = inverse_tol
        self.max_inverse_iterations = max_inverse_iterations
        self.branch = LipschitzBranch(channels, hidden, coeff, n_power_iterations)

    def _series_weights(self) -> list[float]:
        if self.logdet == "series":
            return [1.0] * self.series_terms
        exact_terms = self.exact_terms if self.training else self.eval_exact_terms
        return roulette_weights(exact_terms, self.roulette_p)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = self.branch.weights(x.shape[2], x.shape[3], update=self.training)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():  # the estimators need vector–Jacobian products even so
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.branch(x_in, weights)

            def vjp(w: Tensor) -> Tensor:
                return torch.autograd.grad(
                    gx, x_in, w, retain_graph=True, create_graph=keep_graph
                )[0]

            if self.logdet == "exact":
                logdet = log_det_brute_force(vjp, x_in)
            else:
                logdet = log_det_power_series(vjp, hutchinson_noise(x), self._series_weights())
        z = x + gx
        return (z, logdet) if keep_graph else (z.detach(), logdet.detach())

    @torch.no_grad()
    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Fixed-point iteration ``x ← z − g(x)`` from ``x = z``; converges at rate ``Lip(g)``."""
        weights = self.branch.weights(z.shape[2], z.shape[3], update=False)
        tol = self.inverse_tol if self.inverse_tol is not None else 100 * torch.finfo(z.dtype).eps
        bound = tol * (1 + z.abs().max().item())
        x = z
        for _ in range(self.max_inverse_iterations):
            x_next = z - self.branch(x, weights)
            change = (x_next - x).abs().max().item()
            x = x_next
            if change <= bound:
                return x
        warnings.warn(
            f"ResidualBlock.inverse did not converge in max_inverse_iterations="
            f"{self.max_inverse_iterations} (last change {change:.3g} > {bound:.3g}); "
            "raise max_inverse_iterations or inverse_tol, or lower coeff",
            RuntimeWarning,
            stacklevel=2,
        )
        return x


__all__ = [
    "LipSwish",
    "LipschitzBranch",
    "ResidualBlock",
    "SpectralNormConv2d",
    "log_det_brute_force",
    "log_det_power_series",
    "roulette_weights",
]
