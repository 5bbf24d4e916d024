"""Transformer flows, single-scale: TarFlow (autoregressive blocks) and Jet (couplings).

Both are one level of ``glowlab.models.assembly.assemble`` — no squeeze, no factor-out — so
the bpd, priors, dequantization, training and tools are those of every other family.

- ``tarflow``: ``blocks`` TarFlow blocks (``glowlab.bijections.tarflow.TarFlowBlock``: causal
  Transformer over ``p×p`` patches, elementwise transform of each patch given the earlier
  ones), token order alternating raster / flipped; standard-normal prior.
- ``jet``: patchify ``p×p`` (``Patchify``: ``(C, H, W) → (C·p², H/p, W/p)``), then
  ``couplings`` couplings with ViT conditioners, ``channel_couplings`` channel splits (each
  after a fixed random channel permutation) for every spatial split (checkerboard and stripe
  masks, both parities, in turn); standard-normal prior.

References: Zhai et al., "Normalizing flows are capable generative models" (TarFlow), 2025;
Kolesnikov, Susano Pinto & Tschannen, "Jet: A modern Transformer-based normalizing flow",
2024.
"""

from __future__ import annotations

import functools

from glowlab.bijections.base import Bijection
from glowlab.bijections.coupling import Coupling
from glowlab.bijections.permutations import ChannelPermutation
from glowlab.bijections.tarflow import TarFlowBlock
from glowlab.bijections.vit import Patchify, ViTConditioner, check_patch_size
from glowlab.models.assembly import Shape, assemble, check_shape
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.models.parts import DequantizationChoice, PriorChoice
from glowlab.transforms import CENTRED_AFFINE, TransformFactory, transform_factory
from glowlab.validation import check_int

SPATIAL_SPLITS = (("checkerboard", 0), ("checkerboard", 1), ("stripe", 0), ("stripe", 1))
"""The spatial masks Jet's spatial couplings cycle through (mask, parity)."""


def tarflow(
    image_shape: Shape,
    patch_size: int = 4,
    blocks: int = 4,
    layers: int = 2,
    width: int = 128,
    heads: int = 2,
    transform: str | TransformFactory | None = None,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
    guidance: float = 0.0,
    inversion: str = "sequential",
    jacobi_tolerance: float = 1e-5,
    jacobi_max_iterations: int | None = None,
    bf16: bool = False,
    mlp_ratio: int = 4,
    prior: str | PriorChoice = "standard",
    dequantization: str | DequantizationChoice = "uniform",
    **common,
) -> MultiscaleFlow:
    """TarFlow (Zhai et al., 2025): ``blocks`` blocks of ``layers`` causal Transformer layers
    of ``width`` (``heads`` heads) over ``patch_size``² patches, token order flipped every
    other block. ImageNet 64 setting of the paper's code: patch 2, 8 blocks × 8 layers,
    width 768, head dim 64 (``heads=12``).

    ``transform``: the elementwise transform (factory or built-in name; default TarFlow's
    affine ``z = (x − μ)·exp(−α)`` with soft-clamped ``α``). ``num_classes``: class
    embeddings in every block (labels required, as ``y``), with ``label_dropout`` to the null
    class in training and classifier-free ``guidance`` weight ``w`` at sampling
    (``θ_c + w·(θ_c − θ_∅)``; change it later with
    ``glowlab.bijections.tarflow.configure_sampling``). The prior stays N(0, I): the classes
    live in the blocks, not in the prior. ``inversion``: ``sequential`` (KV cache, exact) or
    ``jacobi`` (parallel fixed point, ``jacobi_tolerance``, ``jacobi_max_iterations``).
    ``bf16``: bfloat16 autocast in the Transformers (transform and logdet in fp32).
    ``common``: the other options of ``assemble`` (``n_bits``, ``preprocess``,
    ``memory_saving``, ...).
    """
    if "levels" in common or "depth" in common:
        raise ValueError(
            "tarflow is single-scale: it takes blocks= (TarFlow blocks) and layers= "
            "(Transformer layers per block), not levels=/depth="
        )
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    check_patch_size(patch_size, image_shape[1], image_shape[2])
    check_int("blocks", blocks)
    check_int("layers", layers)
    factory = CENTRED_AFFINE if transform is None else transform_factory(transform)
    layers_: list[Bijection] = [
        TarFlowBlock(
            image_shape,
            patch_size,
            width,
            layers,
            heads,
            transform=factory,
            reverse=k % 2 == 1,
            num_classes=num_classes,
            label_dropout=label_dropout,
            guidance=guidance,
            inversion=inversion,
            jacobi_tolerance=jacobi_tolerance,
            jacobi_max_iterations=jacobi_max_iterations,
            bf16=bf16,
            mlp_ratio=mlp_ratio,
        )
        for k in range(blocks)
    ]
    model = assemble(
        image_shape, [(layers_, image_shape)], prior=prior, dequantization=dequantization, **common
    )
    # Labels condition the blocks, not the prior: the model needs them (MultiscaleFlow checks
    # and passes y to every level's transform) while its prior stays N(0, I).
    model.num_classes = num_classes or None
    model.label_dropout = label_dropout  # one label draw per image for all blocks
    return model


def jet(
    image_shape: Shape,
    patch_size: int = 4,
    couplings: int = 8,
    block_depth: int = 2,
    width: int = 128,
    heads: int = 4,
    channel_couplings: int = 4,
    transform: str | TransformFactory | None = None,
    mlp_ratio: int = 4,
    seed: int = 0,
    bf16_conditioner: bool = False,
    prior: str | PriorChoice = "standard",
    dequantization: str | DequantizationChoice = "uniform",
    **common,
) -> MultiscaleFlow:
    """Jet (Kolesnikov et al., 2024): patchify ``patch_size``², then ``couplings`` affine
    couplings whose conditioners are ViTs (``block_depth`` layers of ``width``, ``heads``
    heads; every patch one token). Of every ``channel_couplings + 1`` couplings, the first
    ``channel_couplings`` split the channels after a fixed random channel permutation and
    the last splits the tokens spatially (checkerboard, then stripe masks, alternating
    parity); ``channel_couplings=0`` gives spatial couplings only. ImageNet 64 setting
    (big_vision's ``jet/imagenet64``): patch 4, 32 couplings of block depth 2, width 512,
    8 heads, 4 channel couplings per spatial one.

    ``transform``: the couplings' elementwise transform (default affine with soft-clamped
    log-scale). ``common``: the other options of ``assemble``.
    """
    if "levels" in common or "depth" in common:
        raise ValueError(
            "jet is single-scale: it takes couplings= and block_depth= (ViT layers per "
            "coupling), not levels=/depth="
        )
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    c, h, w = image_shape
    check_patch_size(patch_size, h, w)
    check_int("couplings", couplings)
    check_int("block_depth", block_depth)
    check_int("channel_couplings", channel_couplings, low=0)
    channels = c * patch_size * patch_size
    if channel_couplings and channels % 2:
        raise ValueError(
            f"jet's channel couplings split C·p² = {channels} channels in halves; use an "
            "even patch_size or channel_couplings=0"
        )
    factory = (
        transform_factory("affine", scale="soft_clamp")
        if transform is None
        else transform_factory(transform)
    )
    net = functools.partial(
        ViTConditioner, width=width, depth=block_depth, heads=heads, mlp_ratio=mlp_ratio
    )
    layers: list[Bijection] = [Patchify(patch_size)]
    spatial = 0
    for k in range(couplings):
        if k % (channel_couplings + 1) < channel_couplings:
            layers.append(ChannelPermutation.shuffle(channels, seed + k))
            layers.append(
                Coupling(
                    channels, net, "channel", factory, parity=k, bf16_conditioner=bf16_conditioner
                )
            )
        else:
            mask, parity = SPATIAL_SPLITS[spatial % len(SPATIAL_SPLITS)]
            spatial += 1
            layers.append(
                Coupling(
                    channels, net, mask, factory, parity=parity, bf16_conditioner=bf16_conditioner
                )
            )
    out_shape = (channels, h // patch_size, w // patch_size)
    return assemble(
        image_shape, [(layers, out_shape)], prior=prior, dequantization=dequantization, **common
    )


__all__ = ["jet", "tarflow"]
