"""Transformer flows, single-scale: TarFlow (autoregressive blocks) and Jet (couplings).

Both are one level of ``glowlab.models.assembly.assemble`` — no squeeze, no factor-out — so
the bpd, priors, dequantization, training and tools are those of every other family. The
layers declare their own options; the recipes take them as built parts (a ``block`` or
``conditioner`` factory, a Hydra ``_partial_`` node in the configs).

- ``tarflow``: ``blocks`` TarFlow blocks (``glowlab.bijections.tarflow.TarFlowBlock``: causal
  Transformer over ``p×p`` patches, elementwise transform of each patch given the earlier
  ones), token order alternating raster / flipped; standard-normal prior; class labels go to
  the blocks.
- ``jet``: patchify ``p×p`` (``Patchify``: ``(C, H, W) → (C·p², H/p, W/p)``), then
  ``couplings`` couplings with ViT conditioners, ``channel_couplings`` channel splits (each
  after a fixed random channel permutation) for every spatial split (checkerboard and stripe
  masks, both parities, in turn); standard-normal prior.

References: Zhai et al., "Normalizing flows are capable generative models" (TarFlow), 2025;
Kolesnikov, Susano Pinto & Tschannen, "Jet: A modern Transformer-based normalizing flow",
2024.
"""

from __future__ import annotations

from collections.abc import Callable

from glowlab.bijections.base import Bijection
from glowlab.bijections.coupling import Conditioner, Coupling
from glowlab.bijections.patchify import Patchify
from glowlab.bijections.permutations import ChannelPermutation
from glowlab.bijections.tarflow import TarFlowBlock
from glowlab.models.assembly import Shape, assemble, check_shape
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.models.options import check_recipe_sets, model_options
from glowlab.nets.transformer import ViTConditioner, check_patch_size
from glowlab.transforms import TransformFactory, transform_factory
from glowlab.validation import check_int

SPATIAL_SPLITS = (("checkerboard", 0), ("checkerboard", 1), ("stripe", 0), ("stripe", 1))
"""The spatial masks Jet's spatial couplings cycle through (mask, parity)."""

BlockFactory = Callable[..., Bijection]
"""``(image_shape, transform=, reverse=, num_classes=, label_dropout=) -> block``."""


def tarflow(
    image_shape: Shape,
    blocks: int = 4,
    block: BlockFactory = TarFlowBlock,
    transform: str | TransformFactory | None = None,
    **shared,
) -> MultiscaleFlow:
    """TarFlow (Zhai et al., 2025): ``blocks`` blocks, token order flipped every other one.

    ``block``: the block factory, e.g. ``functools.partial(TarFlowBlock, patch_size=4,
    width=128, layers=2, heads=2)`` (its options: patch size, Transformer size, ``bf16``, the
    sampling options ``inversion``/``jacobi_tolerance``/``jacobi_max_iterations`` and
    ``guidance``); ImageNet 64 setting of the paper's code: patch 2, 8 blocks × 8 layers,
    width 768, 12 heads. ``transform``: the elementwise transform (default TarFlow's affine
    ``z = (x − μ)·exp(−α)`` with soft-clamped ``α``). ``shared``: the ``ModelOptions``; with
    ``num_classes`` the blocks get class embeddings (a null class under ``label_dropout``,
    for classifier-free guidance) and the prior stays N(0, I).
    """
    options = model_options(tarflow, shared, preprocess="logit", prior="standard", labels="blocks")
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    check_int("blocks", blocks)
    check_recipe_sets(
        "block", block, ("num_classes", "label_dropout"), "model.num_classes/label_dropout"
    )
    check_recipe_sets(
        "block", block, ("transform", "reverse"), "model.transform and the block order"
    )
    layers = [
        block(
            image_shape,
            transform=transform,
            reverse=k % 2 == 1,
            num_classes=options.num_classes,
            label_dropout=options.label_dropout,
        )
        for k in range(blocks)
    ]
    return assemble(image_shape, [(layers, image_shape)], options)


def jet(
    image_shape: Shape,
    patch_size: int = 4,
    couplings: int = 8,
    channel_couplings: int = 4,
    conditioner: Conditioner = ViTConditioner,
    transform: str | TransformFactory | None = None,
    seed: int = 0,
    **shared,
) -> MultiscaleFlow:
    """Jet (Kolesnikov et al., 2024): patchify ``patch_size``², then ``couplings`` affine
    couplings whose conditioners are ``conditioner(in, out)`` (e.g. ``functools.partial(
    ViTConditioner, width=128, depth=2, heads=4)``; every patch one token). Of every
    ``channel_couplings + 1`` couplings, the first ``channel_couplings`` split the channels
    after a fixed random channel permutation (seeded by ``seed``) and the last splits the
    tokens spatially (checkerboard, then stripe masks, alternating parity);
    ``channel_couplings=0`` gives spatial couplings only. ImageNet 64 setting (big_vision's
    ``jet/imagenet64``): patch 4, 32 couplings, ViT depth 2, width 512, 8 heads, 4 channel
    couplings per spatial one.

    ``transform``: the couplings' elementwise transform (default affine with soft-clamped
    log-scale). ``shared``: the ``ModelOptions``.
    """
    options = model_options(jet, shared, preprocess="logit", prior="standard")
    image_shape = check_shape(image_shape, levels=1, squeezes=0)
    c, h, w = image_shape
    check_patch_size(patch_size, h, w)
    check_int("couplings", couplings)
    check_int("channel_couplings", channel_couplings, low=0)
    channels = c * patch_size * patch_size
    if channel_couplings and channels % 2:
        raise ValueError(
            f"jet's channel couplings split C·p² = {channels} channels in halves; use an "
            "even patch_size or channel_couplings=0"
        )
    factory = transform_factory("affine", scale="soft_clamp") if transform is None else transform
    layers: list[Bijection] = [Patchify(patch_size)]
    spatial = 0
    for k in range(couplings):
        if k % (channel_couplings + 1) < channel_couplings:
            layers.append(ChannelPermutation.shuffle(channels, seed + k))
            layers.append(Coupling(channels, conditioner, "channel", factory, parity=k))
        else:
            mask, parity = SPATIAL_SPLITS[spatial % len(SPATIAL_SPLITS)]
            spatial += 1
            layers.append(Coupling(channels, conditioner, mask, factory, parity=parity))
    out_shape = (channels, h // patch_size, w // patch_size)
    return assemble(image_shape, [(layers, out_shape)], options)


__all__ = ["jet", "tarflow"]
