"""Continuous normalizing flow on images (FFJORD, Grathwohl et al. 2019).

The block solves the ODE ``dx/dt = f(t, x)`` from ``t = 0`` to ``t = T`` with a learned
velocity field ``f`` (a small conv net that also sees ``t``). By the instantaneous change of
variables (Chen et al. 2018), ``d/dt log|det ∂x(t)/∂x(0)| = tr(∂f/∂x(t, x(t)))``, so the
forward map integrates the augmented state ``(x, Δ)``::

    dx/dt = f(t, x),   dΔ/dt = tr(∂f/∂x),   x(0) = data, Δ(0) = 0
    z = x(T),          logdet = log|det dz/dx| = Δ(T)

(positive sign: ``log p(x) = log p(z) + Δ(T)``; FFJORD's ``d log p/dt = −tr`` is the same
statement). The inverse integrates ``dx/dt = f`` from ``T`` back to ``0``; no trace is needed.

Traces: ``"exact"`` sums the diagonal of ``∂f/∂x`` with one vector-Jacobian product per
dimension (``D = C·H·W`` of them per function evaluation: only for tiny inputs);
``"hutchinson"`` uses the unbiased estimate ``vᵀ(∂f/∂x)v`` with one ``v`` (``E[vvᵀ] = I``)
drawn per forward call and held fixed during the solve, as FFJORD does.

References: Chen et al., "Neural Ordinary Differential Equations", 2018; Grathwohl et al.,
"FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models", 2019;
Hutchinson, "A stochastic estimator of the trace of the influence matrix", 1989.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.bijections.hutchinson import NOISES, hutchinson_noise
from glowlab.validation import check_positive, choose

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4")
TRACES = ("exact", "hutchinson")


class ConcatConv2d(nn.Module):
    """3×3 convolution that sees the time as an extra constant input channel.

    ``(t, x) -> conv([x, t·1])``: ``()`` and ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        time = t.to(x).expand(x.shape[0], 1, x.shape[2], x.shape[3])  # (B, 1, H, W)
        return self.conv(torch.cat([x, time], dim=1))


class ConcatConvDynamics(nn.Module):
    """The velocity field ``f(t, x)``: ``layers`` concat convs with softplus between them.

    Channels ``C -> hidden -> ... -> hidden -> C``; the last conv starts at zero, so a fresh
    field is ``f ≡ 0`` and the flow is the identity. Softplus keeps ``f`` smooth, which the
    adaptive solvers and the trace (a derivative of ``f``) need.
    """

    def __init__(self, channels: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(ConcatConv2d(c_in, c_out) for c_in, c_out in pairwise(widths))
        nn.init.zeros_(self.convs[-1].conv.weight)
        nn.init.zeros_(self.convs[-1].conv.bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs[:-1]:
            h = F.softplus(conv(t, h))
        return self.convs[-1](t, h)


def exact_divergence(f: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """``tr(∂f/∂x)`` per sample, by one vector-Jacobian product per dimension: ``(B,)``.

    ``f`` must be computed from ``x`` (both ``(B, ...)``) with each sample depending on its own
    input only. Costs ``D = numel(x[0])`` backward passes.
    """
    f_flat = f.reshape(f.shape[0], -1)  # (B, D)
    divergence = f.new_zeros(f.shape[0])
    for i in range(f_flat.shape[1]):
        (row,) = torch.autograd.grad(
            f_flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph
        )
        divergence = divergence + row.reshape(row.shape[0], -1)[:, i]
    return divergence


def hutchinson_divergence(f: Tensor, x: Tensor, v: Tensor, create_graph: bool) -> Tensor:
    """Hutchinson's estimate ``vᵀ(∂f/∂x)v`` of ``tr(∂f/∂x)`` per sample: ``(B,)``.

    Unbiased for noise with ``E[vvᵀ] = I`` (Gaussian or Rademacher); one backward pass.
    """
    (v_jacobian,) = torch.autograd.grad(f, x, v, create_graph=create_graph)
    return sum_except_batch(v_jacobian * v)


class _Velocity(nn.Module):
    """ODE right-hand side ``x -> f(t, x)`` for the inverse solve; counts its evaluations."""

    def __init__(self, dynamics: ConcatConvDynamics) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.dynamics(t, x)


class _VelocityAndDivergence(nn.Module):
    """ODE right-hand side ``(x, Δ) -> (f(t, x), tr ∂f/∂x)``; counts its evaluations.

    ``noise`` is the fixed Hutchinson vector, or None for the exact trace. The trace needs
    gradients wrt ``x`` even under ``torch.no_grad()``; the graph through the trace is kept
    only when the caller records gradients (training, or the adjoint's backward solve).
    """

    def __init__(self, dynamics: ConcatConvDynamics, noise: Tensor | None) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.noise = noise
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        x = state[0]
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (keep_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            f = self.dynamics(t, x)
            if self.noise is None:
                divergence = exact_divergence(f, x, create_graph=keep_graph)
            else:
                divergence = hutchinson_divergence(f, x, self.noise, create_graph=keep_graph)
        if not keep_graph:
            return f.detach(), divergence.detach()
        return f, divergence


class CNF(Bijection):
    """Continuous normalizing flow block on ``(B, C, H, W)`` images (FFJORD).

    ``forward(x) -> (z, logdet)`` with ``z = x(T)`` and ``logdet = log|det dz/dx| = Δ(T)``,
    shape ``(B,)``; ``inverse(z) -> x`` integrates back from ``T`` to ``0``. ``T`` is
    ``time_length``; ``f`` is a :class:`ConcatConvDynamics` with ``hidden`` channels and
    ``layers`` convolutions.

    - ``solver``: adaptive ``dopri5``, ``dopri8``, ``bosh3``, ``adaptive_heun`` (controlled by
      ``rtol``/``atol``), or fixed-step ``euler``, ``midpoint``, ``rk4`` (need ``step_size``).
    - ``trace`` (training) / ``eval_trace`` (eval mode): ``"hutchinson"`` (one ``noise``
      vector per forward call, ``"rademacher"`` or ``"gaussian"``; the logdet is then an
      unbiased *estimate*) or ``"exact"`` (``C·H·W`` backward passes per step: tiny inputs).
    - ``adjoint=True`` backpropagates with the adjoint method (``odeint_adjoint``): memory
      constant in the number of steps, at the price of a second solve backwards in time.

    ``last_nfe`` holds the number of function evaluations of the latest forward or inverse
    solve (FFJORD-style monitoring; the adjoint's backward solve is not counted). ``cond`` is
    accepted for the contract and ignored.

    References: Grathwohl et al., "FFJORD", 2019; Chen et al., "Neural ODEs", 2018.
    """

    exact_inverse = False  # the inverse is another ODE solve, exact to the tolerances

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        layers: int = 3,
        time_length: float = 1.0,
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        trace: str = "hutchinson",
        eval_trace: str = "hutchinson",
        noise: str = "rademacher",
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        for option, value in (("channels", channels), ("hidden", hidden), ("layers", layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{option}={value!r} must be a positive integer")
        check_positive("time_length", time_length)
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        self.solver = choose("solver", solver, ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS)
        if solver in FIXED_STEP_SOLVERS and step_size is None:
            raise ValueError(f"solver={solver!r} takes fixed steps: pass step_size, e.g. 0.1")
        if solver in ADAPTIVE_SOLVERS and step_size is not None:
            raise ValueError(
                f"step_size={step_size!r} is only for the fixed-step solvers "
                f"{list(FIXED_STEP_SOLVERS)}; solver={solver!r} picks its steps from rtol/atol"
            )
        if step_size is not None:
            check_positive("step_size", step_size)
        self.trace = choose("trace", trace, TRACES)
        self.eval_trace = choose("eval_trace", eval_trace, TRACES)
        self.noise = choose("noise", noise, NOISES)
        self.time_length = time_length
        self.rtol, self.atol, self.step_size = rtol, atol, step_size
        self.adjoint = adjoint
        self.dynamics = ConcatConvDynamics(channels, hidden, layers)
        self.last_nfe = 0

    def _solve(
        self, func: nn.Module, state: Tensor | tuple[Tensor, Tensor], start: float, end: float
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Integrate ``func`` from ``start`` to ``end``; return the state at ``end``."""
        reference = state[0] if isinstance(state, tuple) else state
        times = torch.tensor([start, end], dtype=reference.dtype, device=reference.device)
        options = {"step_size": self.step_size} if self.step_size is not None else None
        integrate = odeint_adjoint if self.adjoint else odeint
        solution = integrate(
            func, state, times, rtol=self.rtol, atol=self.atol, method=self.solver, options=options
        )
        self.last_nfe = func.nfe
        if isinstance(solution, tuple):
            return tuple(s[-1] for s in solution)
        return solution[-1]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        exact = (self.trace if self.training else self.eval_trace) == "exact"
        func = _VelocityAndDivergence(
            self.dynamics, None if exact else hutchinson_noise(x, self.noise)
        )
        return self._solve(func, (x, x.new_zeros(x.shape[0])), 0.0, self.time_length)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return self._solve(_Velocity(self.dynamics), z, self.time_length, 0.0)
