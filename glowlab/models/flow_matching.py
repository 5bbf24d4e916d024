"""Continuous-time models: flow matching (a CNF trained by regression) and FFJORD's model with
RNODE's regularised objective. Both are ``MultiscaleFlow``s, so ``log_prob``,
``bits_per_dim``, ``encode``/``decode``, ``sample``, ``latent_noise``, checkpoints and every
tool work on them unchanged; they override only ``objective``.

Flow matching (Lipman et al. 2023) with the optimal-transport path. Time runs from noise
(``t = 0``) to data (``t = 1``); for data ``x₁`` (the dequantised, preprocessed image) and
noise ``x₀ ~ N(0, I)``::

    x_t = (1 − (1 − σ_min) t) x₀ + t x₁,      u_t = x₁ − (1 − σ_min) x₀     (= dx_t/dt)
    L_CFM = E_{t ~ U[0, 1], x₀, x₁} ‖v(t, x_t) − u_t‖² / D

(the mean over the ``D`` dimensions and the batch; ``fm_loss``). No ODE is solved in
training. The model is one level with no squeeze: the preprocessing, then an
:class:`~glowlab.bijections.cnf.ODEFlow` with the U-Net field ``v`` that integrates from
``t = 1`` (data) to ``t = 0`` (noise), then ``N(0, I)``. Its log-likelihood is the exact
change of variables of that ODE (``log p(x₁) = log N(x(0)) − ∫₀¹ tr ∂v/∂x dt``, Hutchinson
or exact divergence), plus the preprocessing logdet and the uniform dequantisation's
``−D·n_bits·ln 2``: the same bpd as every other glowlab family.

References: Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023; Grathwohl et
al., "FFJORD", 2019; Finlay et al., "How to Train Your Neural ODE", ICML 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glowlab.bijections.base import Bijection
from glowlab.bijections.cnf import ODEFlow, SolverOptions
from glowlab.models.assembly import Shape, assemble, check_shape
from glowlab.models.multiscale import Level, MultiscaleFlow, Objective
from glowlab.models.parts import (
    DequantizationChoice,
    PriorChoice,
    dequantization_choice,
    prior_choice,
)
from glowlab.nets.unet import UNet
from glowlab.priors import StandardNormal
from glowlab.validation import check_positive


def _blocks(flow: MultiscaleFlow) -> list[ODEFlow]:
    return [m for m in flow.modules() if isinstance(m, ODEFlow)]


def _rebuild(cls, flow: MultiscaleFlow, **options):
    """``flow``'s parts (preprocessing, levels, dequantizer, noise augmentation, label
    dropout) as a ``cls`` model."""
    for name in ("noise_sigma", "label_dropout"):
        if hasattr(flow, name):
            options.setdefault(name, getattr(flow, name))
    return cls(
        flow.image_shape,
        flow.preprocess,
        list(flow.levels),
        flow.n_bits,
        flow.num_classes,
        dequantizer=flow.dequantizer,
        **options,
    )


class CNFFlow(MultiscaleFlow):
    """A multiscale flow of CNF blocks (FFJORD) whose training objective adds RNODE's
    regularisers (Finlay et al. 2020) to the mean bpd::

        loss = mean_batch[ bpd + Σ_blocks (λ_K K_b + λ_J J_b) / D ]

    with ``K_b = ∫ ½‖f_b‖² dt``, ``J_b = ∫ ‖∂f_b/∂x‖_F² dt`` (Hutchinson) integrated by block
    ``b``'s own training solve, ``λ`` the block's ``kinetic_weight``/``jacobian_weight`` and
    ``D = C·H·W`` the image's dimensions, so the penalty is per dimension like the bpd
    (RNODE's code also averages its regularisers over dimensions). ``logs``: the true bpd and
    its parts (unchanged by the regularisers), ``nfe`` (function evaluations of the training
    forward, summed over blocks; the batch is solved together, so per sample too), and with
    regularisers on ``kinetic`` (``Σ K_b / D``), ``jacobian`` (``Σ J_b / D``) and ``loss``.
    """

    @classmethod
    def from_flow(cls, flow: MultiscaleFlow) -> CNFFlow:
        """The same parts (preprocessing, levels, dequantizer) as a ``CNFFlow``."""
        return _rebuild(cls, flow)

    def objective(self, x: Tensor, y: Tensor | None = None) -> Objective:
        parts = self.bpd_parts(x, y)
        logs = {k: v.mean() for k, v in parts.items()}
        blocks = _blocks(self)
        loss = logs["bpd"]
        logs["nfe"] = torch.tensor(float(sum(b.last_nfe for b in blocks)))
        regularized = [b for b in blocks if b.last_regularizers is not None]
        if regularized:
            d = self.dims
            kinetic = sum(b.last_regularizers["kinetic"] for b in regularized) / d
            jacobian = sum(b.last_regularizers["jacobian"] for b in regularized) / d
            penalty = sum(b.regularization_loss() for b in regularized) / d
            loss = (parts["bpd"] + penalty).mean()
            logs.update(kinetic=kinetic.mean(), jacobian=jacobian.mean(), loss=loss)
        return Objective(loss, logs)


class FlowMatching(MultiscaleFlow):
    """A flow-matching CNF as a single-level ``MultiscaleFlow`` (module docstring).

    ``levels`` must be one level without factor-out whose transform holds exactly one
    :class:`ODEFlow` from ``t_data = 1`` to ``t_latent = 0``, with an ``N(0, I)`` prior; the
    ODE's ``dynamics`` is the velocity field ``v(t, x[, y])``. ``sigma_min``: the width of the
    path at the data end. Only uniform dequantisation: the regression loss would never train
    a variational ``q(u|x)``. ``options`` go to ``MultiscaleFlow`` (e.g. ``label_dropout``).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        preprocess: Bijection,
        levels: list[Level],
        n_bits: int = 8,
        num_classes: int | None = None,
        dequantizer=None,
        sigma_min: float = 1e-4,
        **options,
    ) -> None:
        if dequantizer is not None or options.get("noise_sigma") is not None:
            raise ValueError(
                "flow matching trains by regression on uniformly dequantised images: a "
                "variational dequantizer would never learn and noise augmentation is not "
                "implemented; use dequantization=uniform"
            )
        super().__init__(image_shape, preprocess, levels, n_bits, num_classes, **options)
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min={sigma_min!r} must be in [0, 1), e.g. 1e-4")
        blocks = _blocks(self)
        level = self.levels[0] if len(self.levels) == 1 else None
        if (
            level is None
            or level.factor_out
            or not isinstance(level.prior, StandardNormal)
            or len(blocks) != 1
            or (blocks[0].t_data, blocks[0].t_latent) != (1.0, 0.0)
        ):
            raise ValueError(
                "FlowMatching needs one level without factor-out, one ODEFlow from t_data=1 "
                "to t_latent=0 and a StandardNormal prior; build it with "
                "glowlab.models.flow_matching.flow_matching"
            )
        self.sigma_min = float(sigma_min)

    @property
    def ode(self) -> ODEFlow:
        """The ODE bijection (its ``last_nfe`` counts the latest solve)."""
        return _blocks(self)[0]

    @property
    def velocity(self) -> torch.nn.Module:
        """The velocity field ``v(t, x[, y])``."""
        return self.ode.dynamics

    def cfm_loss(self, x1: Tensor, x0: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The conditional flow-matching loss for given draws: ``x1`` preprocessed data and
        ``x0`` noise (both ``(B, C, H, W)``), times ``t`` ``(B,)``: a scalar,
        ``mean ‖v(t, x_t) − (x₁ − (1 − σ_min) x₀)‖²`` over batch and dimensions."""
        s = self.sigma_min
        tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - (1 - s) * tt) * x0 + tt * x1
        target = x1 - (1 - s) * x0
        v = self.velocity(t, xt) if y is None else self.velocity(t, xt, y)
        return (v - target).square().mean()

    def objective(self, x: Tensor, y: Tensor | None = None) -> Objective:
        """The CFM loss of integer images ``x`` for one draw of, in this order, the
        dequantisation noise ``u ~ U[0, 1)`` (shape of ``x``), ``x₀ ~ N(0, I)`` and
        ``t ~ U[0, 1]`` ``(B,)``; logged as ``fm_loss``. No ODE solve."""
        self.check_images(x)
        self._check_y(y)
        x = x.to(self._dtype())
        v, _ = self.dequantize(x, noise=torch.rand_like(x))
        x1, _ = self.preprocess(v, y)
        x0 = torch.randn_like(x1)
        t = torch.rand(x.shape[0], dtype=x1.dtype, device=x1.device)
        loss = self.cfm_loss(x1, x0, t, y)
        return Objective(loss, {"fm_loss": loss})


def flow_matching(
    image_shape: Shape,
    width: int = 64,
    channel_mults: Sequence[int] = (1, 2, 2),
    blocks: int = 2,
    attention_levels: Sequence[int] = (),
    heads: int = 4,
    dropout: float = 0.0,
    scale_shift: bool = True,
    time_scale: float = 1.0,
    sigma_min: float = 1e-4,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    sample_solver: str | None = None,
    sample_rtol: float | None = None,
    sample_atol: float | None = None,
    sample_step_size: float | None = None,
    trace: str = "hutchinson",
    eval_trace: str = "hutchinson",
    noise: str = "rademacher",
    n_bits: int = 8,
    num_classes: int | None = None,
    preprocess: str = "logit",
    logit_alpha: float = 0.05,
    prior: str | PriorChoice = "standard",
    dequantization: str | DequantizationChoice = "uniform",
) -> FlowMatching:
    """Flow matching (Lipman et al. 2023) with a :class:`~glowlab.nets.unet.UNet` field
    (``width``, ``channel_mults``, ``blocks`` residual blocks per level, ``attention_levels``,
    ``heads``, ``dropout``, ``scale_shift``, ``time_scale``; class-conditional through
    ``num_classes``) on ``preprocess``ed images.

    The likelihood and ``encode`` solve the ODE with ``solver`` at ``rtol``/``atol`` (or a
    fixed ``step_size``), divergence by ``trace`` (training mode) / ``eval_trace`` (eval
    mode): ``hutchinson`` (``noise`` probe) or ``exact`` (``D`` backward passes per
    evaluation: tiny images only). Sampling and ``decode`` use ``sample_solver``,
    ``sample_rtol``, ``sample_atol``, ``sample_step_size`` (each unset one as for the
    likelihood; a set ``sample_solver`` takes only ``sample_step_size``). ``prior`` must be
    ``standard`` and ``dequantization`` ``uniform`` (the path starts at N(0, I); the loss
    cannot train a ``q(u|x)``). Paper (CIFAR-10): a 35.7M-parameter U-Net, see
    ``conf/model/fm_paper.yaml``.
    """
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    prior = prior_choice(prior)
    dequantization = dequantization_choice(dequantization)
    if prior.kind != "standard":
        raise ValueError(
            f"prior={prior.kind!r}: flow matching transports N(0, I) noise, so the prior is "
            "fixed; use prior=standard (condition on classes with num_classes)"
        )
    if dequantization.kind != "uniform":
        raise ValueError(
            f"dequantization={dequantization.kind!r}: the flow-matching loss cannot train a "
            "learned q(u|x); use dequantization=uniform"
        )
    if num_classes is not None:
        check_positive("num_classes", num_classes, allow_zero=True)
    solve = SolverOptions(solver, rtol, atol, step_size)
    inverse_solve = solve
    if sample_solver is not None or sample_rtol is not None or sample_atol is not None:
        inverse_solve = SolverOptions(
            sample_solver or solver,
            rtol if sample_rtol is None else sample_rtol,
            atol if sample_atol is None else sample_atol,
            sample_step_size if sample_solver is not None else step_size,
            prefix="sample_",
        )
    elif sample_step_size is not None:
        raise ValueError(
            f"sample_step_size={sample_step_size!r} needs a fixed-step sample_solver "
            "(euler, midpoint, rk4)"
        )
    field = UNet(
        image_shape[0],
        width,
        channel_mults,
        blocks,
        attention_levels,
        heads,
        dropout,
        num_classes or None,
        scale_shift=scale_shift,
        time_scale=time_scale,
    )
    ode = ODEFlow(
        field,
        t_data=1.0,
        t_latent=0.0,
        solve=solve,
        inverse_solve=inverse_solve,
        trace=trace,
        eval_trace=eval_trace,
        noise=noise,
    )
    flow = assemble(
        image_shape,
        [([ode], image_shape)],
        n_bits=n_bits,
        prior="standard",
        preprocess=preprocess,
        logit_alpha=logit_alpha,
    )
    flow = _rebuild(FlowMatching, flow, sigma_min=sigma_min)
    flow.num_classes = num_classes or None
    return flow
