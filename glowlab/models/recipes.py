"""Factories for the coupling architectures, all returning a ``MultiscaleFlow``.

- ``glow``: per level Squeeze → K × (ActNorm → 1×1 conv → coupling) → factor-out. Its
  couplings take any elementwise transform: affine, additive, spline (neural spline flows),
  mixture (Flow++), or your own.
- ``realnvp``: per level 3 checkerboard couplings → Squeeze → 3 channel couplings →
  factor-out; the last level has 4 checkerboard couplings.
- ``nice``: per level Squeeze → K additive couplings → diagonal scaling → factor-out.

The parts are injected: ``transform`` (a ``glowlab.transforms`` factory or a built-in name)
and ``conditioner`` (a ``(in_channels, out_channels) -> net`` factory, or ``"glow"``,
``"resnet"``, ``"flowpp"`` sized by ``width``/``blocks``). Configs pass factories
(``conf/model/transform``, ``conf/model/conditioner``). Every option is checked at build
time; a bad one raises ``ValueError`` naming it. The options every model shares (``n_bits``,
``prior``, ``preprocess``, ``memory_saving``, ``dequantization``, ...) are keyword arguments
(``shared``) that become one ``glowlab.models.options.ModelOptions`` for ``assemble``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from glowlab.bijections.actnorm import ActNorm
from glowlab.bijections.base import Bijection
from glowlab.bijections.coupling import MASKS, Conditioner, Coupling
from glowlab.bijections.elementwise import DiagonalScale
from glowlab.bijections.permutations import ChannelPermutation, InvConv1x1, InvConv1x1LU
from glowlab.bijections.squeeze import Squeeze
from glowlab.models.assembly import Shape, assemble, check_shape, squeeze_levels
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.models.options import model_options
from glowlab.nets.conditioners import FlowPPConditioner, GlowConditioner, ResNetConditioner
from glowlab.transforms import Affine, TransformFactory, transform_factory
from glowlab.validation import check_int, choose

PERMUTATIONS = ("lu", "conv1x1", "reverse", "shuffle")
CONDITIONERS = ("glow", "resnet", "flowpp")


def _conditioner(kind: str | Conditioner, width: int, blocks: int) -> Conditioner:
    """A conditioner factory: ``kind`` itself when it is one, else the named network sized by
    ``width`` hidden channels (and ``blocks`` for resnet/flowpp)."""
    if callable(kind):
        return kind
    choose("conditioner", kind, CONDITIONERS)
    check_int("width", width)
    if kind == "glow":
        return functools.partial(GlowConditioner, hidden=width)
    check_int("blocks", blocks)
    network = ResNetConditioner if kind == "resnet" else FlowPPConditioner
    return functools.partial(network, hidden=width, blocks=blocks)


def _permutation(kind: str, channels: int, seed: int) -> Bijection:
    builders: dict[str, Callable[[], Bijection]] = {
        "lu": lambda: InvConv1x1LU(channels, seed),
        "conv1x1": lambda: InvConv1x1(channels, seed),
        "reverse": lambda: ChannelPermutation.reverse(channels),
        "shuffle": lambda: ChannelPermutation.shuffle(channels, seed),
    }
    return builders[choose("permutation", kind, PERMUTATIONS)]()


def glow(
    image_shape: Shape,
    levels: int = 3,
    depth: int = 32,
    transform: str | TransformFactory = "affine",
    conditioner: str | Conditioner = "glow",
    permutation: str = "lu",
    mask: str = "channel",
    width: int = 512,
    blocks: int = 2,
    seed: int = 0,
    bf16_conditioner: bool = False,
    **shared,
) -> MultiscaleFlow:
    """Glow (Kingma & Dhariwal, 2018). CIFAR-10 paper setting: levels=3, depth=32, width=512.

    ``depth`` is K, the flow steps per level; spatial masks (``checkerboard``, ``stripe``)
    alternate the parity. ``transform="spline"`` gives a neural spline flow;
    ``transform="mixture"`` with ``conditioner="flowpp"`` and ``dequantization="variational"``
    gives Flow++. ``width``/``blocks`` size a conditioner given by name (configs inject a
    sized factory instead). ``bf16_conditioner`` runs the coupling networks under bfloat16
    autocast (logdets, priors and 1×1 convolutions stay in the model's dtype). ``shared``: the
    ``ModelOptions`` (``prior`` defaults to ``learned``, ``preprocess`` to ``shift``).
    """
    options = model_options(glow, shared)
    image_shape = check_shape(image_shape, levels, squeezes=levels)
    choose("mask", mask, MASKS)
    make_transform = transform_factory(transform)
    make_net = _conditioner(conditioner, width, blocks)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        return [
            ActNorm(c),
            _permutation(permutation, c, seed + 1000 * level + k),
            Coupling(c, make_net, mask, make_transform, k, bf16_conditioner),
        ]

    return assemble(image_shape, squeeze_levels(image_shape, levels, depth, step), options)


def realnvp(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 3,
    transform: str | TransformFactory | None = None,
    conditioner: str | Conditioner = "resnet",
    width: int = 64,
    blocks: int = 8,
    actnorm: bool = True,
    **shared,
) -> MultiscaleFlow:
    """Real NVP (Dinh et al., 2017). CIFAR-10 paper setting: 2 scales, 8 residual blocks, 64
    features. ``depth`` couplings per mask type (3 in the paper; the last level has depth+1
    checkerboard couplings). ActNorm after each coupling stands in for the paper's batch norm.
    ``transform`` defaults to the paper's affine with ``exp(a·tanh(h))`` scales.
    ``shared``: the ``ModelOptions`` (``prior`` defaults to ``standard``, ``preprocess`` to
    ``logit``).
    """
    options = model_options(realnvp, shared, prior="standard", preprocess="logit")
    image_shape = check_shape(image_shape, levels, squeezes=levels - 1)
    check_int("depth", depth)
    make_transform = transform_factory(
        functools.partial(Affine, scale="exp_tanh") if transform is None else transform
    )
    make_net = _conditioner(conditioner, width, blocks)

    def couplings(channels: int, mask: str, count: int) -> list[Bijection]:
        layers: list[Bijection] = []
        for k in range(count):
            layers.append(Coupling(channels, make_net, mask, make_transform, parity=k))
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
    return assemble(image_shape, transforms, options)


def nice(
    image_shape: Shape,
    levels: int = 2,
    depth: int = 4,
    conditioner: str | Conditioner = "glow",
    mask: str = "channel",
    width: int = 128,
    blocks: int = 2,
    **shared,
) -> MultiscaleFlow:
    """NICE (Dinh et al., 2015) on images: additive couplings with alternating masks (the
    channel mask alternates halves), then a learned diagonal scaling of every dimension.
    ``shared``: the ``ModelOptions`` (``prior`` defaults to ``standard``).
    """
    options = model_options(nice, shared, prior="standard")
    image_shape = check_shape(image_shape, levels, squeezes=levels)
    choose("mask", mask, MASKS)
    make_net = _conditioner(conditioner, width, blocks)

    def step(c: int, level: int, k: int) -> list[Bijection]:
        return [Coupling(c, make_net, mask, "additive", parity=k)]

    transforms = squeeze_levels(image_shape, levels, depth, step)
    for layers, shape in transforms:
        layers.append(DiagonalScale(shape))
    return assemble(image_shape, transforms, options)
