"""Multiscale models whose flow steps are not couplings: residual flows, FFJORD, MAF/IAF.

All use Glow's skeleton (per level Squeeze → K steps → factor-out) and the shared options
(``shared``, one ``glowlab.models.options.ModelOptions`` given to ``assemble``), so their bpd
is computed exactly as for Glow and every tool works on them.

- ``resflow``: step = ActNorm → ``ResidualBlock`` (``x + g(x)``, Lip(g) < 1).
- ``ffjord``: step = ``CNF`` (an ODE with a conv velocity field).
- ``maf``: step = ActNorm → ``MaskedAutoregressive`` (orderings alternate between steps);
  ``direction="iaf"`` gives inverse autoregressive flows.
"""

from __future__ import annotations

from collections.abc import Callable

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.autoregressive import MaskedAutoregressive
from glowlab.bijections.base import Bijection
from glowlab.bijections.cnf import CNF, DynamicsFactory, SolverOptions
from glowlab.bijections.residual import ResidualBlock
from glowlab.models.assembly import Shape, assemble, check_shape, squeeze_levels
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.models.options import check_recipe_sets, model_options
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.transforms import CENTRED_AFFINE, TransformFactory


def resflow(
    image_shape: Shape,
    levels: int = 3,
    depth: int = 4,
    width: int = 128,
    actnorm: bool = True,
    coeff: float = 0.97,
    n_power_iterations: int = 5,
    logdet: str = "roulette",
    exact_terms: int = 2,
    eval_exact_terms: int = 10,
    **shared,
) -> MultiscaleFlow:
    """Residual flows (Behrmann et al. 2019; Chen et al. 2019). ``logdet``: ``roulette``
    (unbiased, for training), ``series`` (truncated) or ``exact`` (brute force, tiny inputs
    only); ``exact_terms``/``eval_exact_terms`` power-series terms always computed in
    training/evaluation. Paper (CIFAR-10): 3 scales × 4 blocks per stack, 512 hidden channels.
    ``shared``: the ``ModelOptions`` (``preprocess`` defaults to ``logit``).
    """
    options = model_options(resflow, shared, preprocess="logit")
    image_shape = check_shape(image_shape, levels, squeezes=levels)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        block = ResidualBlock(
            c,
            width,
            coeff=coeff,
            n_power_iterations=n_power_iterations,
            logdet=logdet,
            exact_terms=exact_terms,
            eval_exact_terms=eval_exact_terms,
        )
        return [ActNorm(c), block] if actnorm else [block]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    return assemble(image_shape, transforms, options)


def ffjord(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 2,
    field: DynamicsFactory = ConcatConvDynamics,
    solver: SolverOptions | None = None,
    block: Callable[..., CNF] = CNF,
    **shared,
) -> MultiscaleFlow:
    """FFJORD (Grathwohl et al. 2019): ``depth`` CNF blocks per level, each an ODE whose
    velocity field is ``field(channels)`` (e.g. ``functools.partial(ConcatConvDynamics,
    hidden=64, layers=3)``), solved by ``solver`` (a ``SolverOptions``; default dopri5 at
    1e-5). ``block``: the CNF factory with the block's other options (``time_length``,
    ``trace``, ``eval_trace``, ``noise``, ``adjoint``), e.g. ``functools.partial(CNF,
    eval_trace="exact")``. Paper (multiscale CIFAR-10): 3 scales, 2 CNF blocks each, 64 hidden
    channels. RNODE's regularisers (Finlay et al. 2020) are an objective
    (``glowlab.objectives.RNODE``), not part of the model. ``shared``: the ``ModelOptions``
    (``prior`` defaults to ``standard``, ``preprocess`` to ``logit``).
    """
    options = model_options(ffjord, shared, prior="standard", preprocess="logit")
    check_recipe_sets("block", block, ("field", "solver"), "model.field/solver")
    image_shape = check_shape(image_shape, levels, squeezes=levels)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        return [block(c, field=field, solver=solver)]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    return assemble(image_shape, transforms, options)


def maf(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 4,
    width: int = 64,
    direction: str = "maf",
    kernel_size: int = 3,
    hidden_layers: int = 1,
    actnorm: bool = True,
    transform: str | TransformFactory = CENTRED_AFFINE,
    **shared,
) -> MultiscaleFlow:
    """Masked autoregressive flows over each level's pixels and channels (Papamakarios et al.
    2017; ``direction="iaf"``: Kingma et al. 2016). MAF: density in one pass, sampling in
    C·H·W passes per level and step; IAF: the reverse. ``transform``: the elementwise map
    (default the affine ``(x − μ)·exp(−α)`` with ``|α| < 3``; ``"spline"`` gives an
    autoregressive neural spline flow). ``shared``: the ``ModelOptions`` (``preprocess``
    defaults to ``logit``).
    """
    options = model_options(maf, shared, preprocess="logit")
    image_shape = check_shape(image_shape, levels, squeezes=levels)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        layer = MaskedAutoregressive(
            c, width, direction, kernel_size, hidden_layers, k % 2 == 1, transform
        )
        return [ActNorm(c), layer] if actnorm else [layer]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    return assemble(image_shape, transforms, options)
