"""Invertible residual block (i-ResNet) with the Residual Flows log-determinant estimator.

``z = x + g(x)`` is a bijection when ``Lip(g) < 1`` (Banach fixed point): the inverse is the
limit of ``x ← z − g(x)``. ``g`` (``glowlab.nets.lipschitz.LipschitzBranch``) keeps
``Lip(g) ≤ coeff < 1`` by spectrally normalising every convolution as an operator on its input
size and using 1-Lipschitz activations.

    log det(I + J_g) = Σ_{k≥1} (−1)^{k+1} tr(J_g^k) / k

The series converges because the spectral radius of ``J_g`` is below 1. Traces are estimated
with Hutchinson's ``vᵀ J^k v`` built from vector–Jacobian products; Russian-roulette truncation
of the series keeps the estimate unbiased.

References: Behrmann et al., "Invertible Residual Networks", 2019; Chen et al., "Residual
Flows for Invertible Generative Modeling", 2019; Miyato et al., "Spectral Normalization for
Generative Adversarial Networks", 2018.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.bijections.hutchinson import hutchinson_noise
from glowlab.nets.lipschitz import LipschitzBranch
from glowlab.validation import check_positive, choose

LOGDET_ESTIMATORS = ("exact", "roulette", "series")

VectorJacobianProduct = Callable[[Tensor], Tensor]
"""``w -> wᵀ J_g`` per sample: ``(B, C, H, W) -> (B, C, H, W)``."""


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
    "ResidualBlock",
    "log_det_brute_force",
    "log_det_power_series",
    "roulette_weights",
]
