"""Multiscale models whose flow steps are not couplings: residual flows, FFJORD, MAF/IAF.

All use Glow's skeleton (per level Squeeze → K steps → factor-out) and the shared options of
``glowlab.models.assembly.assemble`` (``common``), so their bpd is computed exactly as for
Glow and every tool works on them.

- ``resflow``: step = ActNorm → ``ResidualBlock`` (``x + g(x)``, Lip(g) < 1).
- ``ffjord``: step = ``CNF`` (an ODE with a conv dynamics net).
- ``maf``: step = ActNorm → ``MaskedAutoregressive`` (orderings alternate between steps);
  ``direction="iaf"`` gives inverse autoregressive flows.
"""

from __future__ import annotations

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.autoregressive import DEFAULT_TRANSFORM, MaskedAutoregressive
from glowlab.bijections.base import Bijection
from glowlab.bijections.cnf import CNF
from glowlab.bijections.residual import ResidualBlock
from glowlab.models.assembly import Shape, assemble, check_shape, squeeze_levels
from glowlab.models.flow_matching import CNFFlow
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.transforms import TransformFactory


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
    preprocess: str = "logit",
    **common,
) -> MultiscaleFlow:
    """Residual flows (Behrmann et al. 2019; Chen et al. 2019). ``logdet``: ``roulette``
    (unbiased, for training), ``series`` (truncated) or ``exact`` (brute force, tiny inputs
    only); ``exact_terms``/``eval_exact_terms`` power-series terms always computed in
    training/evaluation. Paper (CIFAR-10): 3 scales × 4 blocks per stack, 512 hidden channels.
    """
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
    return assemble(image_shape, transforms, preprocess=preprocess, **common)


def ffjord(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 2,
    width: int = 64,
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
    kinetic_weight: float = 0.0,
    jacobian_weight: float = 0.0,
    prior="standard",
    preprocess: str = "logit",
    **common,
) -> MultiscaleFlow:
    """FFJORD (Grathwohl et al. 2019): ``depth`` CNF blocks per level, each an ODE solved with
    ``solver`` at tolerances ``rtol``/``atol`` (or fixed ``step_size`` for rk4/euler), trace by
    ``trace`` in training and ``eval_trace`` in evaluation (``hutchinson`` with ``noise``
    ``rademacher``/``gaussian``, or ``exact``).
    Paper (multiscale CIFAR-10): 3 scales, 2 CNF blocks each, 64 hidden channels.
    RNODE (Finlay et al. 2020): ``kinetic_weight``/``jacobian_weight`` (``λ_K``/``λ_J``, 0.01
    each in the paper's CIFAR-10 runs; 0 = off) add the kinetic energy and Jacobian Frobenius
    norm of every block, per dimension, to the training loss only (``CNFFlow``); the model
    logs them, the solver's NFE and the true bpd.
    """
    image_shape = check_shape(image_shape, levels, squeezes=levels)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        return [
            CNF(
                c,
                width,
                layers,
                time_length=time_length,
                solver=solver,
                rtol=rtol,
                atol=atol,
                step_size=step_size,
                trace=trace,
                eval_trace=eval_trace,
                noise=noise,
                adjoint=adjoint,
                kinetic_weight=kinetic_weight,
                jacobian_weight=jacobian_weight,
            )
        ]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    flow = assemble(image_shape, transforms, prior=prior, preprocess=preprocess, **common)
    return CNFFlow.from_flow(flow)


def maf(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 4,
    width: int = 64,
    direction: str = "maf",
    kernel_size: int = 3,
    hidden_layers: int = 1,
    actnorm: bool = True,
    transform: str | TransformFactory = DEFAULT_TRANSFORM,
    preprocess: str = "logit",
    **common,
) -> MultiscaleFlow:
    """Masked autoregressive flows over each level's pixels and channels (Papamakarios et al.
    2017; ``direction="iaf"``: Kingma et al. 2016). MAF: density in one pass, sampling in
    C·H·W passes per level and step; IAF: the reverse. ``transform``: the elementwise map
    (default the affine ``(x − μ)·exp(−α)`` with ``|α| < 3``; ``"spline"`` gives an
    autoregressive neural spline flow).
    """
    image_shape = check_shape(image_shape, levels, squeezes=levels)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        layer = MaskedAutoregressive(
            c, width, direction, kernel_size, hidden_layers, k % 2 == 1, transform
        )
        return [ActNorm(c), layer] if actnorm else [layer]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    return assemble(image_shape, transforms, preprocess=preprocess, **common)
