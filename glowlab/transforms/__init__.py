"""Elementwise transforms: what maps one element given its parameters (see ``base``).

``BUILTIN`` names the built-in ones for the Python API's string shortcuts
(``glowlab.glow(transform="spline")``); configs name them by ``_target_``.
"""

from __future__ import annotations

import functools

from glowlab.transforms.affine import CENTRED_AFFINE, Additive, Affine
from glowlab.transforms.base import ElementwiseTransform, TransformFactory, soft_clamp
from glowlab.transforms.mixture import LogisticMixture
from glowlab.transforms.spline import Spline
from glowlab.validation import choose

BUILTIN: dict[str, TransformFactory] = {
    "affine": Affine,
    "affine_centred": CENTRED_AFFINE,
    "additive": Additive,
    "spline": Spline,
    "mixture": LogisticMixture,
}


def transform_factory(transform: str | TransformFactory, **options) -> TransformFactory:
    """A factory ``(channels=C) -> ElementwiseTransform`` from a built-in name (with its
    ``options``, e.g. ``bins=16``) or a factory, returned as is (options bound if given)."""
    if isinstance(transform, str):
        transform = BUILTIN[choose("transform", transform, tuple(BUILTIN))]
    return functools.partial(transform, **options) if options else transform


__all__ = [
    "BUILTIN",
    "CENTRED_AFFINE",
    "Additive",
    "Affine",
    "ElementwiseTransform",
    "LogisticMixture",
    "Spline",
    "TransformFactory",
    "soft_clamp",
    "transform_factory",
]
