"""What every recipe shares: the multiscale skeleton, preprocessing, priors, dequantisation.

A recipe builds per-level flow steps and hands them to ``assemble`` with the shared options,
one ``glowlab.models.options.ModelOptions`` (n_bits, preprocess, prior, dequantization,
classes, label dropout, memory saving): the priors are ``learned`` (Glow's factor-out priors
``p(z₂|z₁)`` and learned top), ``standard`` (N(0, I) everywhere) or ``planar`` (learned
factor-outs, planar-flow top prior); a class-conditional model whose labels go to the prior
gets a learned top prior with class embeddings (with a null class under label dropout, for
classifier-free guidance: ``glowlab.sampling``).
"""

from __future__ import annotations

from collections.abc import Callable

from glowlab.bijections.base import Bijection, Sequential
from glowlab.bijections.dequantization import VariationalDequantizer
from glowlab.bijections.elementwise import Logit, Shift
from glowlab.bijections.squeeze import Squeeze
from glowlab.models.multiscale import Level, MultiscaleFlow
from glowlab.models.options import ModelOptions
from glowlab.models.parts import PriorChoice
from glowlab.priors import (
    FactorOutPrior,
    GaussianPrior,
    LearnedPrior,
    PlanarPrior,
    StandardNormal,
)

Shape = tuple[int, int, int]
LevelTransforms = list[tuple[list[Bijection], Shape]]
"""Per level: the flow steps and the ``(C, H, W)`` of their output."""

StepFactory = Callable[[int, int, int], list[Bijection]]
"""``(channels, level, k) -> layers`` of the k-th flow step of a level."""


def check_count(option: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (a number of levels or steps)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option}={value!r} must be an integer >= 1")


def check_shape(image_shape, levels: int, squeezes: int) -> Shape:
    """Validate ``image_shape`` and the level count; return it as a tuple."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    check_count("levels", levels)
    factor = 2**squeezes
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}×{w} is not divisible by 2**{squeezes} = {factor}, which "
            f"levels={levels} needs (one squeeze halves the side); use fewer levels or "
            f"crop/pad the images to a multiple of {factor}"
        )
    return c, h, w


def squeeze_levels(image_shape: Shape, levels: int, depth: int, step: StepFactory):
    """Glow's skeleton: per level Squeeze → ``depth`` steps; half the channels leave after
    every level but the last. Returns ``LevelTransforms``."""
    check_count("depth", depth)
    c, h, w = image_shape
    transforms: LevelTransforms = []
    for level in range(levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[Bijection] = [Squeeze()]
        for k in range(depth):
            layers += step(c, level, k)
        transforms.append((layers, (c, h, w)))
        c //= 2
    return transforms


def _prior(
    choice: PriorChoice,
    out_shape: Shape,
    factor_out: bool,
    num_classes: int | None,
    label_dropout: float,
) -> GaussianPrior | PlanarPrior:
    """Factor-out prior p(z₂|z₁) or top prior for a level whose output is ``out_shape``."""
    c, kind = out_shape[0], choice.kind
    if factor_out:
        return StandardNormal() if kind == "standard" else FactorOutPrior(c // 2, c - c // 2)
    if kind == "planar":
        return PlanarPrior(out_shape, choice.layers)
    if kind == "learned" or num_classes:
        return LearnedPrior(c, num_classes, label_dropout if num_classes else 0.0)
    return StandardNormal()


def assemble(
    image_shape: Shape, transforms: LevelTransforms, options: ModelOptions
) -> MultiscaleFlow:
    """The ``MultiscaleFlow`` of ``transforms`` (per level: the flow steps and their output
    shape) with the shared ``options``."""
    last = len(transforms) - 1
    prior_classes = options.prior_classes
    levels = [
        Level(
            Sequential(layers, options.memory_saving),
            _prior(options.prior, shape, i < last, prior_classes, options.label_dropout),
            shape,
            i < last,
        )
        for i, (layers, shape) in enumerate(transforms)
    ]
    dequantization = options.dequantization
    dequantizer = None
    if dequantization.kind == "variational":
        dequantizer = VariationalDequantizer(
            image_shape, dequantization.width, dequantization.depth
        )
    preprocess = Shift() if options.preprocess == "shift" else Logit(options.logit_alpha)
    return MultiscaleFlow(
        image_shape,
        preprocess,
        levels,
        options.n_bits,
        options.num_classes,
        dequantizer=dequantizer,
        noise_sigma=dequantization.noise_sigma,
        label_dropout=options.label_dropout,
    )
