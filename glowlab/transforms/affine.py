"""Affine elementwise transforms with the scale parametrisations of the flow papers."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.transforms.base import ElementwiseTransform, soft_clamp
from glowlab.validation import check_positive, choose

SCALES = ("sigmoid", "exp_tanh", "soft_clamp", "exp")


class Affine(ElementwiseTransform):
    """``z = x · s + t`` (or, ``centred``, ``z = (x − t) / s``) with ``log s`` from a raw output.

    Parameters per element: ``(t, h)`` — shift, then raw scale — stored parameter-major in the
    conditioner's channels (all ``C`` shifts, then all ``C`` raw scales; Glow's layout).
    ``scale`` gives ``log s``:

    - ``sigmoid``: ``log σ(h + 2)`` (Glow; ``s ∈ (0, 1)``, ``s ≈ 0.88`` at ``h = 0``);
    - ``exp_tanh``: ``a_c · tanh(h)`` with a learned per-channel ``a`` (RealNVP; needs
      ``channels``);
    - ``soft_clamp``: ``m · tanh(h / m)``, ``m = bound`` (MAF, TarFlow: identity near 0,
      bounded by ``±m``);
    - ``exp``: ``h`` itself.

    ``log|dz/dx| = log s`` (``−log s`` when centred). Zero parameters give the identity except
    for ``sigmoid`` (``s = σ(2)``).

    References: Dinh et al., Real NVP, 2017; Kingma & Dhariwal, Glow, 2018; Papamakarios et
    al., MAF, 2017; Zhai et al., TarFlow, 2025.
    """

    n_params = 2

    def __init__(
        self,
        channels: int | None = None,
        scale: str = "sigmoid",
        centred: bool = False,
        bound: float = 3.0,
    ) -> None:
        super().__init__(channels)
        self.scale = choose("scale", scale, SCALES)
        self.centred = centred
        check_positive("bound", bound)
        self.bound = bound
        if scale == "exp_tanh":
            if channels is None:
                raise ValueError("scale='exp_tanh' learns one factor per channel: pass channels")
            self.tanh_scale = nn.Parameter(torch.ones(channels))

    def log_scale(self, raw: Tensor) -> Tensor:
        """``log s`` of the raw outputs ``h`` (elementwise; channels on dim 1 for exp_tanh)."""
        if self.scale == "sigmoid":
            return F.logsigmoid(raw + 2.0)
        if self.scale == "exp_tanh":
            a = self.tanh_scale.view(-1, *([1] * (raw.dim() - 2)))
            return a * torch.tanh(raw)
        if self.scale == "soft_clamp":
            return soft_clamp(raw, self.bound)
        return raw

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = params[..., 0], self.log_scale(params[..., 1])
        if self.centred:
            return (x - shift) * torch.exp(-log_scale), -log_scale
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, z: Tensor, params: Tensor) -> Tensor:
        shift, log_scale = params[..., 0], self.log_scale(params[..., 1])
        if self.centred:
            return z * torch.exp(log_scale) + shift
        return (z - shift) * torch.exp(-log_scale)

    def split_params(self, h: Tensor) -> Tensor:
        b, pc, *rest = h.shape
        return h.reshape(b, 2, pc // 2, *rest).movedim(1, -1)


CENTRED_AFFINE = functools.partial(Affine, scale="soft_clamp", centred=True, bound=3.0)
"""The centred affine of MAF and TarFlow, ``z = (x − μ)·exp(−α)`` with ``α = soft_clamp(a, 3)``
``= 3·tanh(a/3)``: named ``affine_centred`` everywhere (the config node
``model/transform=affine_centred``, the Python shortcut ``transform="affine_centred"``)."""


class Additive(ElementwiseTransform):
    """``z = x + t`` (NICE); one parameter per element, ``log|dz/dx| = 0`` (returned as None).

    References: Dinh, Krueger & Bengio, NICE, 2015.
    """

    n_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return x + params[..., 0], None

    def inverse(self, z: Tensor, params: Tensor) -> Tensor:
        return z - params[..., 0]
