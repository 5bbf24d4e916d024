"""Training objectives: what a training step minimises, apart from the model.

An objective is a callable ``objective(model, x, y) -> Objective(loss, logs)`` on integer
images ``x`` ``(B, C, H, W)`` and labels ``y`` (or None), with ``check(model)``, which refuses
a model it cannot train in one ``ValueError`` line. ``FlowModule`` calls it in
``training_step`` and logs ``logs`` as ``train/<name>``; validation and test always report
the model's true bpd (``MultiscaleFlow.bpd_parts``), whatever the objective. The config group
``objective`` picks one (``objective=likelihood|rnode|flow_matching``; presets choose theirs).

- :class:`Likelihood`: the mean bpd of the batch under one dequantisation draw (``noisy_bpd``
  for a noise-augmented model), logged with its parts (and ``nfe`` for a model with ODE
  blocks).
- :class:`RNODE`: the likelihood plus RNODE's kinetic and Jacobian regularisers of every CNF
  block, per dimension (Finlay et al. 2020)::

      loss = mean_batch[ bpd + Σ_blocks (λ_K K_b + λ_J J_b) / D ]

  with ``K_b = ∫ ½‖f_b‖² dt``, ``J_b = ∫ ‖∂f_b/∂x‖_F² dt`` (Hutchinson) integrated by block
  ``b``'s own training solve (``glowlab.bijections.cnf.recording_regularizers``) and
  ``D = C·H·W``. Logs the true bpd and its parts, ``nfe``, and with a weight > 0 ``kinetic``
  (``Σ K_b / D``), ``jacobian`` (``Σ J_b / D``) and ``loss``.
- :class:`FlowMatching`: conditional flow matching with the optimal-transport path (Lipman et
  al. 2023). Time runs from noise (``t = 0``) to data (``t = 1``); for data ``x₁`` (the
  dequantised, preprocessed image) and noise ``x₀ ~ N(0, I)``::

      x_t = (1 − (1 − σ_min) t) x₀ + t x₁,      u_t = x₁ − (1 − σ_min) x₀     (= dx_t/dt)
      L_CFM = E_{t ~ U[0, 1], x₀, x₁} ‖v(t, x_t) − u_t‖² / D

  (the mean over the ``D`` dimensions and the batch; logged as ``fm_loss``). No ODE is solved
  in training. ``v`` is the field of the model's one ODE block (``glowlab.models.flow_matching``).

References: Finlay et al., "How to Train Your Neural ODE", ICML 2020; Lipman et al., "Flow
Matching for Generative Modeling", ICLR 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glowlab.bijections.cnf import ODEFlow, ode_blocks, recording_regularizers
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.priors import StandardNormal
from glowlab.validation import check_positive


@dataclass
class Objective:
    """What a training step minimises: ``loss`` (a scalar) and the scalars to log as
    ``train/<name>`` (the loss itself among them, under its own name)."""

    loss: Tensor
    logs: dict[str, Tensor]


def _nfe(blocks: list[ODEFlow]) -> Tensor:
    """Function evaluations of the latest solves, summed over the blocks (a scalar)."""
    return torch.tensor(float(sum(block.last_nfe for block in blocks)))


def _likelihood_logs(model: MultiscaleFlow, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
    return {name: value.mean() for name, value in model.bpd_parts(x, y).items()}


class Likelihood:
    """Maximum likelihood: ``loss`` = the mean bpd (``noisy_bpd``) of the batch (module
    docstring). Trains every model."""

    def check(self, model: MultiscaleFlow) -> None:
        """Every model has a likelihood."""

    def __call__(self, model: MultiscaleFlow, x: Tensor, y: Tensor | None = None) -> Objective:
        logs = _likelihood_logs(model, x, y)
        blocks = ode_blocks(model)
        if blocks:
            logs["nfe"] = _nfe(blocks)
        return Objective(logs[model.metric_name], logs)


class RNODE:
    """RNODE-regularised likelihood with weights ``kinetic_weight`` (``λ_K``) and
    ``jacobian_weight`` (``λ_J``), each ``≥ 0`` (0.01 in Finlay et al.'s CIFAR-10 runs; both
    0: the plain likelihood, with ``nfe``). Needs a model with ODE blocks (module docstring)."""

    def __init__(self, kinetic_weight: float = 0.01, jacobian_weight: float = 0.01) -> None:
        check_positive("objective.kinetic_weight", kinetic_weight, allow_zero=True)
        check_positive("objective.jacobian_weight", jacobian_weight, allow_zero=True)
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)

    def check(self, model: MultiscaleFlow) -> None:
        if not ode_blocks(model):
            raise ValueError(
                "objective=rnode regularises the ODE blocks of a continuous flow, but this "
                "model has none; use objective=likelihood, or a CNF model (model=ffjord)"
            )

    def __call__(self, model: MultiscaleFlow, x: Tensor, y: Tensor | None = None) -> Objective:
        if not (self.kinetic_weight or self.jacobian_weight):
            return Likelihood()(model, x, y)
        with recording_regularizers(model) as blocks:
            parts = model.bpd_parts(x, y)
        logs = {name: value.mean() for name, value in parts.items()}
        logs["nfe"] = _nfe(blocks)
        recorded = [b.last_regularizers for b in blocks if b.last_regularizers is not None]
        if not recorded:  # an eval-mode call: nothing was integrated
            return Objective(logs[model.metric_name], logs)
        d = model.dims
        kinetic = sum(r["kinetic"] for r in recorded) / d
        jacobian = sum(r["jacobian"] for r in recorded) / d
        weights = self.kinetic_weight, self.jacobian_weight
        penalty = sum(weights[0] * r["kinetic"] + weights[1] * r["jacobian"] for r in recorded) / d
        loss = (parts[model.metric_name] + penalty).mean()
        logs.update(kinetic=kinetic.mean(), jacobian=jacobian.mean(), loss=loss)
        return Objective(loss, logs)


class FlowMatching:
    """Conditional flow matching with path width ``sigma_min`` at the data end (module
    docstring). Needs a model of one level without factor-out whose transform is one ODE
    block from ``t = 1`` (data) to ``t = 0`` (noise), an N(0, I) prior and uniform
    dequantisation (``glowlab.models.flow_matching``)."""

    def __init__(self, sigma_min: float = 1e-4) -> None:
        if not 0 <= sigma_min < 1:
            raise ValueError(f"objective.sigma_min={sigma_min!r} must be in [0, 1), e.g. 1e-4")
        self.sigma_min = float(sigma_min)

    def check(self, model: MultiscaleFlow) -> None:
        blocks = ode_blocks(model)
        level = model.levels[0] if len(model.levels) == 1 else None
        if (
            level is None
            or level.factor_out
            or not isinstance(level.prior, StandardNormal)
            or len(blocks) != 1
            or (blocks[0].t_data, blocks[0].t_latent) != (1.0, 0.0)
        ):
            raise ValueError(
                "objective=flow_matching trains one ODE block from data (t=1) to N(0, I) noise "
                "(t=0) in a single level; this model is not one: use model=fm, or "
                "objective=likelihood"
            )
        if model.dequantizer is not None or model.noise_sigma is not None:
            raise ValueError(
                "objective=flow_matching regresses on uniformly dequantised images: a "
                "variational dequantizer would never learn and noise augmentation is not "
                "implemented; use model/dequantization=uniform"
            )

    def loss(
        self, field: torch.nn.Module, x1: Tensor, x0: Tensor, t: Tensor, y: Tensor | None = None
    ) -> Tensor:
        """The conditional flow-matching loss of velocity ``field`` for given draws: ``x1``
        preprocessed data and ``x0`` noise (both ``(B, C, H, W)``), times ``t`` ``(B,)``: a
        scalar, ``mean ‖v(t, x_t) − (x₁ − (1 − σ_min) x₀)‖²`` over batch and dimensions."""
        s = self.sigma_min
        tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - (1 - s) * tt) * x0 + tt * x1
        target = x1 - (1 - s) * x0
        v = field(t, xt) if y is None else field(t, xt, y)
        return (v - target).square().mean()

    def __call__(self, model: MultiscaleFlow, x: Tensor, y: Tensor | None = None) -> Objective:
        """The CFM loss of integer images ``x`` for one draw of, in this order, the
        dequantisation noise ``u ~ U[0, 1)`` (shape of ``x``), ``x₀ ~ N(0, I)`` and
        ``t ~ U[0, 1]`` ``(B,)``. No ODE solve."""
        model.check_images(x)
        model._check_y(y)
        x = x.to(model._dtype())
        v, _ = model.dequantize(x, noise=torch.rand_like(x))
        x1, _ = model.preprocess(v, y)
        x0 = torch.randn_like(x1)
        t = torch.rand(x.shape[0], dtype=x1.dtype, device=x1.device)
        loss = self.loss(ode_blocks(model)[0].dynamics, x1, x0, t, y)
        return Objective(loss, {"fm_loss": loss})


__all__ = ["FlowMatching", "Likelihood", "Objective", "RNODE"]
