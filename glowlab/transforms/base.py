"""The elementwise-transform interface shared by couplings and autoregressive layers.

An elementwise transform is a strictly increasing map ``z = τ(x; θ)`` applied to every element
of ``x`` with that element's parameters ``θ``. *What* transforms an element (affine, spline,
mixture, ...) is this object; *who* computes ``θ`` (a coupling's conditioner, a masked
convolution, a causal Transformer) is the layer that holds it, so every transform works in
every layer.

Shapes: ``x (...)``, ``params (..., n_params)`` → ``z (...)`` and ``log|dz/dx| (...)`` (or
``None`` when it is identically zero, e.g. additive). A layer whose conditioner emits
``n_params`` values for each of ``C`` elements along dimension 1 turns that output into
per-element parameters with ``split_params``.

A new transform is one file subclassing ``ElementwiseTransform`` plus one config node
``conf/model/transform/<name>.yaml`` (``_target_`` the class, ``_partial_: true``); layers
build one per use as ``factory(channels=C)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def soft_clamp(h: Tensor, bound: float) -> Tensor:
    """``m · tanh(h / m)`` with ``m = bound``, elementwise: the identity near 0 (slope 1),
    smooth, bounded by ``±m``. The one soft clamp of raw log-scales (``Affine``'s
    ``soft_clamp`` scale, the logistic mixture's log-scales, the variational dequantizer's
    couplings): it keeps ``exp`` finite and the gradients nonzero."""
    return bound * torch.tanh(h / bound)


class ElementwiseTransform(nn.Module):
    """Base class. Subclasses set ``n_params`` and implement ``forward`` and ``inverse``.

    Args:
        channels: the number of transformed channels ``C`` of the layer that owns it (used by
            transforms with per-channel parameters of their own, e.g. RealNVP's ``exp_tanh``).
    """

    n_params: int = 1
    exact_inverse: bool = True
    """False when ``inverse`` is numerical (bisection): reversible backprop then refuses it."""

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor | None]:
        """``z = τ(x; θ)`` and ``log|dz/dx|``, both shaped like ``x``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, params: Tensor) -> Tensor:
        """``x = τ⁻¹(z; θ)``, shaped like ``z``."""
        raise NotImplementedError

    def split_params(self, h: Tensor) -> Tensor:
        """Conditioner output ``(B, n_params·C, *rest)`` → ``(B, C, *rest, n_params)``.

        Element-major: channel ``c`` owns ``h[:, c·P:(c+1)·P]``. Transforms whose layout is
        parameter-major (``Affine``: all shifts, then all scales) override this.
        """
        b, pc, *rest = h.shape
        return h.reshape(b, pc // self.n_params, self.n_params, *rest).movedim(2, -1)


TransformFactory = Callable[..., ElementwiseTransform]
"""``factory(channels=C) -> ElementwiseTransform``: a transform class or a ``functools.partial``
of one (a Hydra ``_partial_`` node)."""
