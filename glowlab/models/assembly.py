"""What every recipe shares: the multiscale skeleton, preprocessing, priors, dequantisation.

A recipe builds per-level flow steps and hands them to ``assemble`` with the common options:

- ``n_bits`` (1..8), ``num_classes`` (class-conditional top prior);
- ``prior``: a ``PriorChoice`` (``glowlab.models.parts``) or its kind's name: ``learned``
  (Glow's factor-out priors and learned top), ``standard`` (N(0, I) everywhere) or ``planar``
  (learned factor-outs, planar-flow top prior);
- ``preprocess``: ``shift`` (to [-0.5, 0.5)) or ``logit`` (with ``logit_alpha``);
- ``memory_saving``: ``none`` | ``reversible`` | ``checkpoint`` (see ``Sequential``);
- ``dequantization``: a ``DequantizationChoice`` or its kind's name: ``uniform``,
  ``variational`` (Flow++'s learned ``q(u|x)``) or ``gaussian`` (TarFlow's noise
  augmentation; the model reports ``noisy_bpd``; needs ``preprocess="shift"``);
- ``label_dropout``: classifier-free guidance training of a class-conditional top prior
  (``LearnedPrior`` gets a null class; ``glowlab.sampling``).
"""

from __future__ import annotations

from collections.abc import Callable

from glowlab.bijections.base import Bijection, Sequential
from glowlab.bijections.dequantization import VariationalDequantizer
from glowlab.bijections.elementwise import Logit, Shift
from glowlab.bijections.squeeze import Squeeze
from glowlab.models.multiscale import Level, MultiscaleFlow
from glowlab.models.parts import (
    DequantizationChoice,
    PriorChoice,
    dequantization_choice,
    prior_choice,
)
from glowlab.priors import (
    FactorOutPrior,
    GaussianPrior,
    LearnedPrior,
    PlanarPrior,
    StandardNormal,
    check_label_dropout,
)
from glowlab.validation import check_n_bits, check_positive, choose

PREPROCESSING = ("shift", "logit")

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


def _preprocess(kind: str, alpha: float) -> Bijection:
    return Shift() if choose("preprocess", kind, PREPROCESSING) == "shift" else Logit(alpha)


def _prior(
    choice: PriorChoice,
    out_shape: Shape,
    factor_out: bool,
    num_classes: int | None,
    label_dropout: float = 0.0,
) -> GaussianPrior | PlanarPrior:
    """Factor-out prior p(z₂|z₁) or top prior for a level whose output is ``out_shape``."""
    c, kind = out_shape[0], choice.kind
    if factor_out:
        return StandardNormal() if kind == "standard" else FactorOutPrior(c // 2, c - c // 2)
    if kind == "planar":
        if num_classes:
            raise ValueError(
                "prior='planar' is not class-conditional; use prior='learned' with num_classes"
            )
        return PlanarPrior(out_shape, choice.layers)
    if kind == "learned" or num_classes:
        return LearnedPrior(c, num_classes, label_dropout)
    return StandardNormal()


def assemble(
    image_shape: Shape,
    transforms: LevelTransforms,
    *,
    n_bits: int = 8,
    prior: str | PriorChoice = "learned",
    preprocess: str = "shift",
    logit_alpha: float = 0.05,
    num_classes: int | None = None,
    memory_saving: str = "none",
    dequantization: str | DequantizationChoice = "uniform",
    label_dropout: float = 0.0,
) -> MultiscaleFlow:
    """The ``MultiscaleFlow`` of ``transforms`` with the common options (module docstring)."""
    check_n_bits(n_bits)
    prior = prior_choice(prior)
    dequantization = dequantization_choice(dequantization)
    if num_classes is not None:
        check_positive("num_classes", num_classes, allow_zero=True)
    check_label_dropout(label_dropout, num_classes)
    if (
        dequantization.kind == "gaussian"
        and choose("preprocess", preprocess, PREPROCESSING) == "logit"
    ):
        raise ValueError(
            "model/dequantization=gaussian adds unbounded noise but preprocess='logit' needs "
            "inputs in (0, 1); set model.preprocess=shift"
        )
    last = len(transforms) - 1
    levels = [
        Level(
            Sequential(layers, memory_saving),
            _prior(prior, shape, i < last, num_classes, label_dropout),
            shape,
            i < last,
        )
        for i, (layers, shape) in enumerate(transforms)
    ]
    dequantizer = None
    if dequantization.kind == "variational":
        dequantizer = VariationalDequantizer(
            image_shape, dequantization.width, dequantization.depth
        )
    return MultiscaleFlow(
        image_shape,
        _preprocess(preprocess, logit_alpha),
        levels,
        n_bits,
        num_classes or None,
        dequantizer=dequantizer,
        noise_sigma=dequantization.noise_sigma,
        label_dropout=label_dropout,
    )
