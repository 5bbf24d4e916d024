"""Factories for the classic architectures, all returning a ``MultiscaleFlow``.

- ``glow``: per level Squeeze → K × (ActNorm → 1×1 conv → coupling) → factor-out.
- ``realnvp``: per level 3 checkerboard couplings → Squeeze → 3 channel couplings →
  factor-out; the last level has 4 checkerboard couplings.
- ``nice``: per level Squeeze → K additive couplings → diagonal scaling → factor-out.

Every option is checked at build time; a bad one raises ``ValueError`` naming it.
``memory_saving="reversible"`` recomputes each level's activations from its output in the
backward pass (same gradients, activation memory independent of the depth);
``"checkpoint"`` re-runs each level's forward in the backward pass (any layer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.base import Bijection, Sequential
from glowlab.bijections.conditioners import GlowConditioner, ResNetConditioner
from glowlab.bijections.coupling import MASKS, SCALES, TRANSFORMS, Conditioner, Coupling
from glowlab.bijections.elementwise import DiagonalScale, Logit, Shift
from glowlab.bijections.permutations import ChannelPermutation, InvConv1x1, InvConv1x1LU
from glowlab.bijections.squeeze import Squeeze
from glowlab.models.multiscale import Level, MultiscaleFlow
from glowlab.priors import FactorOutPrior, GaussianPrior, LearnedPrior, StandardNormal
from glowlab.validation import check_n_bits, check_positive, choose

PERMUTATIONS = ("lu", "conv1x1", "reverse", "shuffle")
PRIORS = ("learned", "standard")
PREPROCESSING = ("shift", "logit")
CONDITIONERS = ("glow", "resnet")

Shape = tuple[int, int, int]


def _check_shape(image_shape, levels: int, squeezes: int) -> Shape:
    """Validate ``image_shape`` and the level count; return it as a tuple."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    check_positive("levels", levels)
    factor = 2**squeezes
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}×{w} is not divisible by 2**{squeezes} = {factor}, which "
            f"levels={levels} needs (one squeeze halves the side); use fewer levels or "
            f"crop/pad the images to a multiple of {factor}"
        )
    return c, h, w


def _conditioner(kind: str | Conditioner, width: int, blocks: int) -> Conditioner:
    if callable(kind):
        return kind
    choose("conditioner", kind, CONDITIONERS)
    check_positive("width", width)
    if kind == "glow":
        return functools.partial(GlowConditioner, hidden=width)
    check_positive("blocks", blocks)
    return functools.partial(ResNetConditioner, hidden=width, blocks=blocks)


def _permutation(kind: str, channels: int, seed: int) -> Bijection:
    builders: dict[str, Callable[[], Bijection]] = {
        "lu": lambda: InvConv1x1LU(channels, seed),
        "conv1x1": lambda: InvConv1x1(channels, seed),
        "reverse": lambda: ChannelPermutation.reverse(channels),
        "shuffle": lambda: ChannelPermutation.shuffle(channels, seed),
    }
    return builders[choose("permutation", kind, PERMUTATIONS)]()


def _preprocess(kind: str, alpha: float) -> Bijection:
    return Shift() if choose("preprocess", kind, PREPROCESSING) == "shift" else Logit(alpha)


def _prior(
    kind: str, out_shape: Shape, factor_out: bool, num_classes: int | None
) -> GaussianPrior:
    """Factor-out prior p(z₂|z₁) or top prior for a level whose output is ``out_shape``."""
    choose("prior", kind, PRIORS)
    c = out_shape[0]
    if factor_out:
        return FactorOutPrior(c // 2, c - c // 2) if kind == "learned" else StandardNormal()
    if kind == "learned" or num_classes:
        return LearnedPrior(c, num_classes)
    return StandardNormal()


def _levels_to_model(
    image_shape: Shape,
    transforms: list[tuple[list[Bijection], Shape]],
    prior: str,
    preprocess: Bijection,
    n_bits: int,
    num_classes: int | None,
    memory_saving: str,
) -> MultiscaleFlow:
    last = len(transforms) - 1
    levels = [
        Level(
            Sequential(layers, memory_saving),
            _prior(prior, shape, i < last, num_classes),
            shape,
            i < last,
        )
        for i, (layers, shape) in enumerate(transforms)
    ]
    return MultiscaleFlow(image_shape, preprocess, levels, n_bits, num_classes or None)


def _check_common(n_bits: int, depth: int, num_classes: int | None) -> None:
    check_n_bits(n_bits)
    check_positive("depth", depth)
    if num_classes is not None:
        check_positive("num_classes", num_classes, allow_zero=True)


def glow(
    image_shape: Shape,
    n_bits: int = 8,
    levels: int = 3,
    depth: int = 32,
    width: int = 512,
    coupling: str = "affine",
    permutation: str = "lu",
    mask: str = "channel",
    scale: str = "sigmoid",
    prior: str = "learned",
    preprocess: str = "shift",
    conditioner: str | Conditioner = "glow",
    blocks: int = 2,
    num_classes: int | None = None,
    logit_alpha: float = 0.05,
    seed: int = 0,
    memory_saving: str = "none",
    bf16_conditioner: bool = False,
    spline_bins: int = 8,
) -> MultiscaleFlow:
    """Glow (Kingma & Dhariwal, 2018). CIFAR-10 paper setting: levels=3, depth=32, width=512.

    ``depth`` is K, the flow steps per level; ``mask="checkerboard"`` alternates the parity.
    ``bf16_conditioner`` runs the coupling networks under bfloat16 autocast (logdets, priors
    and 1×1 convolutions stay in the model's dtype). ``coupling="spline"`` gives a neural
    spline flow (rational-quadratic couplings with ``spline_bins`` bins).
    """
    image_shape = _check_shape(image_shape, levels, squeezes=levels)
    _check_common(n_bits, depth, num_classes)
    choose("coupling", coupling, TRANSFORMS)
    choose("mask", mask, MASKS)
    choose("scale", scale, SCALES)
    make_net = _conditioner(conditioner, width, blocks)
    c, h, w = image_shape
    transforms = []
    for level in range(levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[Bijection] = [Squeeze()]
        for k in range(depth):
            layers += [
                ActNorm(c),
                _permutation(permutation, c, seed + 1000 * level + k),
                Coupling(c, make_net, mask, coupling, k, scale, bf16_conditioner, spline_bins),
            ]
        transforms.append((layers, (c, h, w)))
        c //= 2
    return _levels_to_model(
        image_shape,
        transforms,
        prior,
        _preprocess(preprocess, logit_alpha),
        n_bits,
        num_classes,
        memory_saving,
    )


def realnvp(
    image_shape: Shape,
    n_bits: int = 8,
    levels: int = 2,
    depth: int = 3,
    width: int = 64,
    blocks: int = 8,
    coupling: str = "affine",
    scale: str = "exp_tanh",
    prior: str = "standard",
    preprocess: str = "logit",
    conditioner: str | Conditioner = "resnet",
    actnorm: bool = True,
    num_classes: int | None = None,
    logit_alpha: float = 0.05,
    memory_saving: str = "none",
) -> MultiscaleFlow:
    """Real NVP (Dinh et al., 2017). CIFAR-10 paper setting: 2 scales, 8 residual blocks, 64
    features. ``depth`` couplings per mask type (3 in the paper; the last level has depth+1
    checkerboard couplings). ActNorm after each coupling stands in for the paper's batch norm.
    """
    image_shape = _check_shape(image_shape, levels, squeezes=levels - 1)
    _check_common(n_bits, depth, num_classes)
    choose("coupling", coupling, TRANSFORMS)
    choose("scale", scale, SCALES)
    make_net = _conditioner(conditioner, width, blocks)

    def couplings(channels: int, mask: str, count: int) -> list[Bijection]:
        layers: list[Bijection] = []
        for k in range(count):
            layers.append(Coupling(channels, make_net, mask, coupling, parity=k, scale=scale))
            if actnorm:
                layers.append(ActNorm(channels))
        return layers

    c, h, w = image_shape
    transforms = []
    for _ in range(levels - 1):
        layers = couplings(c, "checkerboard", depth) + [Squeeze()]
        c, h, w = 4 * c, h // 2, w // 2
        layers += couplings(c, "channel", depth)
        transforms.append((layers, (c, h, w)))
        c //= 2
    transforms.append((couplings(c, "checkerboard", depth + 1), (c, h, w)))
    return _levels_to_model(
        image_shape,
        transforms,
        prior,
        _preprocess(preprocess, logit_alpha),
        n_bits,
        num_classes,
        memory_saving,
    )


def nice(
    image_shape: Shape,
    n_bits: int = 8,
    levels: int = 2,
    depth: int = 4,
    width: int = 128,
    mask: str = "channel",
    prior: str = "standard",
    preprocess: str = "shift",
    conditioner: str | Conditioner = "glow",
    blocks: int = 2,
    num_classes: int | None = None,
    logit_alpha: float = 0.05,
    memory_saving: str = "none",
) -> MultiscaleFlow:
    """NICE (Dinh et al., 2015) on images: additive couplings with alternating masks (the
    channel mask alternates halves), then a learned diagonal scaling of every dimension.
    """
    image_shape = _check_shape(image_shape, levels, squeezes=levels)
    _check_common(n_bits, depth, num_classes)
    choose("mask", mask, MASKS)
    make_net = _conditioner(conditioner, width, blocks)
    c, h, w = image_shape
    transforms = []
    for _ in range(levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[Bijection] = [Squeeze()]
        layers += [Coupling(c, make_net, mask, "additive", parity=k) for k in range(depth)]
        layers.append(DiagonalScale((c, h, w)))
        transforms.append((layers, (c, h, w)))
        c //= 2
    return _levels_to_model(
        image_shape,
        transforms,
        prior,
        _preprocess(preprocess, logit_alpha),
        n_bits,
        num_classes,
        memory_saving,
    )
