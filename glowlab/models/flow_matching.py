"""Flow matching's model (Lipman et al. 2023): one level, no squeeze — the preprocessing, then
an :class:`~glowlab.bijections.cnf.ODEFlow` whose velocity field ``v`` (a U-Net) integrates
from ``t = 1`` (data) to ``t = 0`` (noise), then ``N(0, I)``. Its log-likelihood is the exact
change of variables of that ODE (``log p(x₁) = log N(x(0)) − ∫₀¹ tr ∂v/∂x dt``, Hutchinson or
exact divergence) plus the preprocessing logdet and the uniform dequantisation's
``−D·n_bits·ln 2``: the same bpd as every other glowlab family. It is trained by the
conditional flow-matching objective (``glowlab.objectives.FlowMatching``), which checks that
the model fits it.

References: Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from glowlab.bijections.cnf import ODEFlow, SolverOptions
from glowlab.models.assembly import Shape, assemble, check_shape
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.models.options import check_recipe_sets, model_options
from glowlab.nets.unet import UNet


def flow_matching(
    image_shape: Shape,
    field: Callable[..., nn.Module] = UNet,
    solver: SolverOptions | None = None,
    sample_solver: SolverOptions | None = None,
    ode: Callable[..., ODEFlow] = ODEFlow,
    **shared,
) -> MultiscaleFlow:
    """A flow-matching CNF: ``field(channels, num_classes=)`` is the velocity field (e.g.
    ``functools.partial(UNet, width=64, channel_mults=(1, 2, 2))``; class-conditional through
    ``num_classes``); the likelihood and ``encode`` solve the ODE with ``solver``, sampling
    and ``decode`` with ``sample_solver`` (default: ``solver``); ``ode`` is the ODE block's
    factory with its trace options (``trace``, ``eval_trace``, ``noise``). Paper (CIFAR-10):
    a 35.7M-parameter U-Net, see ``conf/model/fm_paper.yaml``. ``shared``: the
    ``ModelOptions`` (``preprocess`` defaults to ``logit``; the prior is N(0, I), where the
    path starts).
    """
    options = model_options(
        flow_matching, shared, preprocess="logit", prior="standard", labels="blocks"
    )
    if options.label_dropout:
        raise ValueError(
            f"label_dropout={options.label_dropout!r}: the flow-matching field has no null "
            "class to train; use label_dropout=0"
        )
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    check_recipe_sets("field", field, ("num_classes",), "model.num_classes")
    check_recipe_sets("ode", ode, ("t_data", "t_latent"), "the path (data at t=1, noise at t=0)")
    check_recipe_sets("ode", ode, ("solver", "sample_solver"), "model.solver/sample_solver")
    velocity = field(image_shape[0], num_classes=options.num_classes)
    block = ode(velocity, t_data=1.0, t_latent=0.0, solver=solver, sample_solver=sample_solver)
    return assemble(image_shape, [([block], image_shape)], options)


__all__ = ["flow_matching"]
