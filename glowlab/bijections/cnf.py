"""Continuous normalizing flows on images: FFJORD's CNF block, RNODE's regularisers, and the
generic ODE bijection that flow matching reuses.

An :class:`ODEFlow` maps data to latent by solving ``dx/dt = f(t, x)`` from ``t_data`` to
``t_latent``. By the instantaneous change of variables (Chen et al. 2018),
``d/dt log|det ∂x(t)/∂x(t_data)| = tr(∂f/∂x(t, x(t)))``, so the forward map integrates the
augmented state ``(x, Δ)``::

    dx/dt = f(t, x),   dΔ/dt = tr(∂f/∂x),   x(t_data) = data, Δ(t_data) = 0
    z = x(t_latent),   logdet = log|det dz/dx| = Δ(t_latent)

(positive sign: ``log p(x) = log p(z) + Δ``; FFJORD's ``d log p/dt = −tr`` is the same
statement, and for ``t_latent < t_data`` the solver integrates backwards, which gives
``Δ = −∫ tr dt`` over the forward-time interval). The inverse integrates ``dx/dt = f`` from
``t_latent`` back to ``t_data``; no trace is needed. FFJORD's :class:`CNF` runs ``0 → T``;
the flow-matching bijection runs ``1 (data) → 0 (noise)``.

Traces: ``"exact"`` sums the diagonal of ``∂f/∂x`` with one vector-Jacobian product per
dimension (``D = C·H·W`` of them per function evaluation: only for tiny inputs);
``"hutchinson"`` uses the unbiased estimate ``vᵀ(∂f/∂x)v`` with one ``v`` (``E[vvᵀ] = I``)
drawn per forward call and held fixed during the solve, as FFJORD does.

RNODE (Finlay et al. 2020): in training, inside :func:`recording_regularizers` (the RNODE
objective's, ``glowlab.objectives.RNODE``), two more per-sample states are integrated by the
same solve::

    dK/dt = ½‖f(t, x)‖²,    dJ/dt = ‖vᵀ ∂f/∂x‖²   (E_v = ‖∂f/∂x‖_F²; exact trace: ‖∂f/∂x‖_F²)

so ``K = ∫ ½‖f‖² dt`` (kinetic energy) and ``J = ∫ ‖∂f/∂x‖_F² dt`` (Jacobian Frobenius norm)
over the block's time interval, both ``≥ 0`` whatever the direction. The Hutchinson ``J``
reuses the trace's vector-Jacobian product ``vᵀ ∂f/∂x`` (no extra backward pass). The
regulariser states do not steer the adaptive step size (the error norm covers ``x`` and
``Δ`` only), so the solve of ``(x, Δ)`` — and the bpd — is the same with and without them.
The block keeps them in ``last_regularizers``; the objective adds ``λ_K K + λ_J J`` to the
training loss.

References: Chen et al., "Neural Ordinary Differential Equations", 2018; Grathwohl et al.,
"FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models", 2019;
Finlay et al., "How to Train Your Neural ODE: the World of Jacobian and Kinetic
Regularization", 2020; Hutchinson, "A stochastic estimator of the trace of the influence
matrix", 1989.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.bijections.hutchinson import NOISES, hutchinson_noise
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.validation import check_int, check_positive, choose

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4")
TRACES = ("exact", "hutchinson")


@dataclass(frozen=True)
class SolverOptions:
    """How to solve one ODE: an adaptive ``solver`` (``dopri5``, ``dopri8``, ``bosh3``,
    ``adaptive_heun``) with tolerances ``rtol``/``atol``, or a fixed-step one (``euler``,
    ``midpoint``, ``rk4``) with ``step_size``. ``prefix`` names the options in errors (e.g.
    ``sample_`` for ``sample_solver``)."""

    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    prefix: str = ""

    def __post_init__(self) -> None:
        p = self.prefix
        choose(f"{p}solver", self.solver, ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS)
        check_positive(f"{p}rtol", self.rtol)
        check_positive(f"{p}atol", self.atol)
        if self.solver in FIXED_STEP_SOLVERS and self.step_size is None:
            raise ValueError(
                f"{p}solver={self.solver!r} takes fixed steps: pass {p}step_size, e.g. 0.1"
            )
        if self.solver in ADAPTIVE_SOLVERS and self.step_size is not None:
            raise ValueError(
                f"{p}step_size={self.step_size!r} is only for the fixed-step solvers "
                f"{list(FIXED_STEP_SOLVERS)}; {p}solver={self.solver!r} picks its steps from "
                f"{p}rtol/{p}atol"
            )
        if self.step_size is not None:
            check_positive(f"{p}step_size", self.step_size)


def exact_jacobian_terms(f: Tensor, x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``(tr ∂f/∂x, ‖∂f/∂x‖_F²)`` per sample, each ``(B,)``, from the ``D`` Jacobian rows (one
    vector-Jacobian product per dimension, ``D = numel(x[0])``). ``f`` must be computed from
    ``x`` (both ``(B, ...)``) with each sample depending on its own input only."""
    f_flat = f.reshape(f.shape[0], -1)  # (B, D)
    divergence = f.new_zeros(f.shape[0])
    frobenius = f.new_zeros(f.shape[0])
    for i in range(f_flat.shape[1]):
        (row,) = torch.autograd.grad(
            f_flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph
        )
        row = row.reshape(row.shape[0], -1)  # (B, D): ∂f_i/∂x of each sample
        divergence = divergence + row[:, i]
        frobenius = frobenius + row.square().sum(dim=1)
    return divergence, frobenius


def hutchinson_jacobian_terms(
    f: Tensor, x: Tensor, v: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimates ``(vᵀ(∂f/∂x)v, ‖vᵀ∂f/∂x‖²)`` of ``(tr ∂f/∂x, ‖∂f/∂x‖_F²)`` per
    sample, each ``(B,)``: unbiased for a probe ``v`` with ``E[vvᵀ] = I`` (Gaussian or
    Rademacher), from one vector-Jacobian product."""
    (v_jacobian,) = torch.autograd.grad(f, x, v, create_graph=create_graph)
    return sum_except_batch(v_jacobian * v), sum_except_batch(v_jacobian.square())


def _call(dynamics: nn.Module, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
    """``dynamics(t, x)``, or ``dynamics(t, x, cond)`` for a conditional field."""
    return dynamics(t, x) if cond is None else dynamics(t, x, cond)


class _Velocity(nn.Module):
    """ODE right-hand side ``x -> f(t, x)`` for the inverse solve; counts its evaluations."""

    def __init__(self, dynamics: nn.Module, cond: Tensor | None = None) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.cond = cond
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return _call(self.dynamics, t, x, self.cond)


class _VelocityAndDivergence(nn.Module):
    """ODE right-hand side ``(x, Δ[, K, J]) -> (f, tr ∂f/∂x[, ½‖f‖²·s, ‖vᵀ∂f/∂x‖²·s])``;
    counts its evaluations.

    ``noise`` is the fixed Hutchinson vector, or None for the exact trace. ``sign`` (±1, the
    direction of integration) makes the regulariser integrals positive; with
    ``regularize=False`` the state is ``(x, Δ)`` only. The trace needs gradients wrt ``x``
    even under ``torch.no_grad()``; the graph through the trace is kept only when the caller
    records gradients (training, or the adjoint's backward solve).
    """

    def __init__(
        self,
        dynamics: nn.Module,
        noise: Tensor | None,
        cond: Tensor | None = None,
        regularize: bool = False,
        sign: float = 1.0,
    ) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.noise = noise
        self.cond = cond
        self.regularize = regularize
        self.sign = sign
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        x = state[0]
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (keep_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            f = _call(self.dynamics, t, x, self.cond)
            if self.noise is None:
                divergence, frobenius = exact_jacobian_terms(f, x, create_graph=keep_graph)
            else:
                divergence, frobenius = hutchinson_jacobian_terms(
                    f, x, self.noise, create_graph=keep_graph
                )
        out: tuple[Tensor, ...] = (f, divergence)
        if self.regularize:
            kinetic = 0.5 * sum_except_batch(f.square())
            out = (f, divergence, self.sign * kinetic, self.sign * frobenius)
        if not keep_graph:
            return tuple(o.detach() for o in out)
        return out


def _rms(x: Tensor) -> Tensor:
    return x.abs().pow(2).mean().sqrt()


def _flow_norm(state: tuple[Tensor, ...]) -> Tensor:
    """torchdiffeq's default mixed norm (max of RMS norms) over ``(x, Δ)`` only: the RNODE
    regulariser states ride along without steering the step size."""
    return torch.max(_rms(state[0]), _rms(state[1]))


class ODEFlow(Bijection):
    """An ODE ``dx/dt = f(t, x[, cond])`` as a bijection on ``(B, C, H, W)`` tensors.

    ``forward(x, cond) -> (z, logdet)`` integrates from ``t_data`` to ``t_latent``:
    ``z = x(t_latent)``, ``logdet = log|det dz/dx|`` of shape ``(B,)`` (module docstring);
    ``inverse(z, cond)`` integrates back. ``dynamics`` is any module ``(t, x) -> f`` (or
    ``(t, x, cond) -> f`` when ``cond`` is given) whose output has ``x``'s shape and whose
    samples depend on their own input only.

    Args:
        dynamics: the velocity field.
        t_data, t_latent: the ends of the time interval (either order).
        solver: the forward (density, encode) solve; ``sample_solver`` the inverse (sampling,
            decode), by default the same.
        trace, eval_trace: ``"hutchinson"`` (one ``noise`` probe per forward call) or
            ``"exact"``, in training / eval mode.
        noise: ``"rademacher"`` or ``"gaussian"``.
        adjoint: backpropagate with the adjoint method (memory constant in the steps).

    ``last_nfe``: function evaluations of the latest solve (the adjoint's backward solve is
    not counted). Inside :func:`recording_regularizers` a training-mode forward also integrates
    RNODE's ``K`` and ``J`` into ``last_regularizers`` (``{"kinetic": K, "jacobian": J}``, each
    ``(B,)``; None otherwise). The sample solver is a sampling option
    (``glowlab.sampling.configure_sampling``: ``sample_solver``, ``sample_rtol``,
    ``sample_atol``, ``sample_step_size``).

    References: Chen et al. 2018; Grathwohl et al. 2019; Finlay et al. 2020.
    """

    exact_inverse = False  # the inverse is another ODE solve, exact to the tolerances

    def __init__(
        self,
        dynamics: nn.Module,
        t_data: float = 0.0,
        t_latent: float = 1.0,
        solver: SolverOptions | None = None,
        sample_solver: SolverOptions | None = None,
        trace: str = "hutchinson",
        eval_trace: str = "hutchinson",
        noise: str = "rademacher",
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        if t_data == t_latent:
            raise ValueError(f"t_data = t_latent = {t_data!r}: the time interval is empty")
        self.solver = solver or SolverOptions()
        self.sample_solver = sample_solver or self.solver
        self.trace = choose("trace", trace, TRACES)
        self.eval_trace = choose("eval_trace", eval_trace, TRACES)
        self.noise = choose("noise", noise, NOISES)
        self.t_data, self.t_latent = float(t_data), float(t_latent)
        self.adjoint = adjoint
        self.dynamics = dynamics
        self.last_nfe = 0
        self.record_regularizers = False  # set by recording_regularizers
        self.last_regularizers: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- sampling options
    def sampling_options(self) -> dict[str, Any]:
        """The sample solve's options and their current values."""
        options = self.sample_solver
        return {
            "sample_solver": options.solver,
            "sample_rtol": options.rtol,
            "sample_atol": options.atol,
            "sample_step_size": options.step_size,
        }

    def configure_sampling(self, **options: Any) -> None:
        """Change the sample solve (keys of ``sampling_options``); choosing an adaptive
        ``sample_solver`` without a ``sample_step_size`` drops the fixed step."""
        changes = {key.removeprefix("sample_"): value for key, value in options.items()}
        if changes.get("solver") in ADAPTIVE_SOLVERS and "step_size" not in changes:
            changes["step_size"] = None
        self.sample_solver = replace(self.sample_solver, prefix="sample_", **changes)

    def _solve(self, func: nn.Module, state, start: float, end: float, options: SolverOptions):
        """Integrate ``func`` from ``start`` to ``end``; return the state at ``end``."""
        reference = state[0] if isinstance(state, tuple) else state
        times = torch.tensor([start, end], dtype=reference.dtype, device=reference.device)
        extra = {}
        if options.step_size is not None:
            extra["step_size"] = options.step_size
        if isinstance(state, tuple) and len(state) > 2:
            extra["norm"] = _flow_norm
        integrate = odeint_adjoint if self.adjoint else odeint
        solution = integrate(
            func,
            state,
            times,
            rtol=options.rtol,
            atol=options.atol,
            method=options.solver,
            options=extra or None,
        )
        self.last_nfe = func.nfe
        if isinstance(solution, tuple):
            return tuple(s[-1] for s in solution)
        return solution[-1]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        exact = (self.trace if self.training else self.eval_trace) == "exact"
        regularize = self.training and self.record_regularizers
        sign = 1.0 if self.t_latent > self.t_data else -1.0
        func = _VelocityAndDivergence(
            self.dynamics,
            None if exact else hutchinson_noise(x, self.noise),
            cond,
            regularize=regularize,
            sign=sign,
        )
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros, zeros, zeros) if regularize else (x, zeros)
        out = self._solve(func, state, self.t_data, self.t_latent, self.solver)
        self.last_regularizers = {"kinetic": out[2], "jacobian": out[3]} if regularize else None
        return out[0], out[1]

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        func = _Velocity(self.dynamics, cond)
        return self._solve(func, z, self.t_latent, self.t_data, self.sample_solver)


def ode_blocks(module: nn.Module) -> list[ODEFlow]:
    """Every ``ODEFlow`` inside ``module`` (e.g. a whole ``MultiscaleFlow``), in model order."""
    return [m for m in module.modules() if isinstance(m, ODEFlow)]


@contextmanager
def recording_regularizers(module: nn.Module) -> Iterator[list[ODEFlow]]:
    """Inside the block, every training-mode forward of the ODE blocks of ``module`` also
    integrates RNODE's ``K`` and ``J`` (``last_regularizers``); yields the blocks."""
    blocks = ode_blocks(module)
    for block in blocks:
        block.record_regularizers = True
    try:
        yield blocks
    finally:
        for block in blocks:
            block.record_regularizers = False


DynamicsFactory = Callable[[int], nn.Module]
"""``channels -> f``: builds a velocity field ``(t, x) -> f`` for ``channels`` channels."""


class CNF(ODEFlow):
    """Continuous normalizing flow block on ``(B, C, H, W)`` images (FFJORD, RNODE).

    ``forward(x) -> (z, logdet)`` with ``z = x(T)`` and ``logdet = log|det dz/dx| = Δ(T)``,
    shape ``(B,)``; ``inverse(z) -> x`` integrates back from ``T`` to ``0``. ``T`` is
    ``time_length``; ``f = field(channels)`` (default a
    :class:`~glowlab.nets.dynamics.ConcatConvDynamics`).

    - ``solver``: a :class:`SolverOptions`: adaptive ``dopri5``, ``dopri8``, ``bosh3``,
      ``adaptive_heun`` (controlled by ``rtol``/``atol``), or fixed-step ``euler``,
      ``midpoint``, ``rk4`` (need ``step_size``); sampling uses the same.
    - ``trace`` (training) / ``eval_trace`` (eval mode): ``"hutchinson"`` (one ``noise``
      vector per forward call, ``"rademacher"`` or ``"gaussian"``; the logdet is then an
      unbiased *estimate*) or ``"exact"`` (``C·H·W`` backward passes per step: tiny inputs).
    - ``adjoint=True`` backpropagates with the adjoint method (``odeint_adjoint``): memory
      constant in the number of steps, at the price of a second solve backwards in time.

    RNODE's regularisers are the objective's (``glowlab.objectives.RNODE``). ``last_nfe``
    holds the number of function evaluations of the latest forward or inverse solve
    (FFJORD-style monitoring). ``cond`` is accepted for the contract and ignored.

    References: Grathwohl et al., "FFJORD", 2019; Chen et al., "Neural ODEs", 2018; Finlay et
    al., "How to Train Your Neural ODE", 2020.
    """

    def __init__(
        self,
        channels: int,
        field: DynamicsFactory = ConcatConvDynamics,
        solver: SolverOptions | None = None,
        time_length: float = 1.0,
        trace: str = "hutchinson",
        eval_trace: str = "hutchinson",
        noise: str = "rademacher",
        adjoint: bool = False,
    ) -> None:
        check_int("channels", channels)
        check_positive("time_length", time_length)
        super().__init__(
            field(channels),
            t_data=0.0,
            t_latent=time_length,
            solver=solver,
            trace=trace,
            eval_trace=eval_trace,
            noise=noise,
            adjoint=adjoint,
        )
        self.time_length = time_length

    def sampling_options(self) -> dict[str, Any]:
        return {}  # FFJORD samples with its density solver

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().forward(x)  # the FFJORD field is unconditional

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return super().inverse(z)
