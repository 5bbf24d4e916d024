"""Priors over latents: diagonal Gaussians (fixed, learned, class-conditional, factor-out)
and a planar-flow top prior.

Every Gaussian prior gives ``(mean, log_scale)`` broadcastable to the latent ``(B, C, H, W)``;
``log_prob`` sums ``log N(z; mean, exp(log_scale)²)`` to ``(B,)`` and ``sample`` draws
``mean + temperature · exp(log_scale) · ε`` (temperature 0 gives the mode).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Sequential, sum_except_batch
from glowlab.bijections.planar import Planar
from glowlab.nets.conditioners import ZeroConv2d

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """``Σ log N(z; mean, exp(log_scale)²)`` over all but the batch dimension: ``(B,)``."""
    normalized = (z - mean) * torch.exp(-log_scale)
    return sum_except_batch(-0.5 * (_LOG_2PI + normalized * normalized) - log_scale)


class GaussianPrior(nn.Module):
    """Base class; subclasses implement ``params(shape, context, y) -> (mean, log_scale)``.

    ``shape`` is the latent's ``(C, H, W)``, ``context`` the kept half at a factor-out
    ``(B, C', H, W)``, ``y`` class labels ``(B,)``.
    """

    def params(
        self, shape: tuple[int, ...], context: Tensor | None, y: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def log_prob(
        self, z: Tensor, context: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        mean, log_scale = self.params(tuple(z.shape[1:]), context, y)
        return gaussian_log_prob(z, mean.to(z), log_scale.to(z))

    def sample(
        self,
        n: int,
        shape: tuple[int, ...],
        context: Tensor | None = None,
        y: Tensor | None = None,
        temperature: float = 1.0,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Draw ``(n, *shape)`` latents on the prior's device and dtype (``eps``: given noise)."""
        mean, log_scale = self.params(shape, context, y)
        if eps is None:
            eps = torch.randn(n, *shape, device=mean.device, dtype=mean.dtype)
        eps = eps.to(mean)
        return mean + temperature * torch.exp(log_scale) * eps


class StandardNormal(GaussianPrior):
    """``N(0, I)`` (RealNVP, NICE)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def params(self, shape, context, y):
        zeros = self.zero.expand(1, *shape)
        return zeros, zeros


class LearnedPrior(GaussianPrior):
    """Per-channel learned mean and log-scale, optionally shifted per class.

    With ``num_classes`` set, a zero-initialised per-class (mean, log_scale) offset is added
    (Glow's class-conditional top prior) and ``y`` is required.

    Classifier-free guidance (``label_dropout > 0``): the embedding gets one more row, the
    "null" class ``num_classes``; in training mode the model (``MultiscaleFlow``) replaces
    each label by the null class with probability ``label_dropout``, so the prior also learns
    the unconditional
    ``p(z) = N(μ_∅, σ_∅²)``; ``y=None`` then means the null class. ``sample`` with
    ``guidance = w`` draws from ``N(μ_w, σ_y²)``,

        ``μ_w = μ_∅ + (1 + w)·(μ_y − μ_∅)``,

    (``w = 0``: the conditional prior). For equal scales ``σ_y = σ_∅`` this is exactly the
    guided density ``∝ p(z|y)^{1+w} p(z)^{−w}``; ``log_prob`` never uses guidance.

    Shapes: ``y`` ``(B,)`` -> mean, log_scale ``(B, C, H, W)`` (``(1, C, H, W)`` without
    classes).

    References: Kingma & Dhariwal, "Glow", 2018; Ho & Salimans, "Classifier-free diffusion
    guidance", 2022.
    """

    def __init__(
        self, channels: int, num_classes: int | None = None, label_dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_label_dropout(label_dropout, num_classes)
        self.mean = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.num_classes = num_classes
        self.label_dropout = float(label_dropout)
        self.guidance = 0.0  # w at sampling; set through glowlab.sampling.guidance
        if num_classes:
            rows = num_classes + (1 if label_dropout else 0)  # + the null class
            self.class_embedding = nn.Embedding(rows, 2 * channels)
            nn.init.zeros_(self.class_embedding.weight)

    @property
    def null_class(self) -> int | None:
        """Index of the null class (``num_classes``), or None without label dropout."""
        return self.num_classes if self.num_classes and self.label_dropout else None

    def _class_labels(self, y: Tensor | None, batch: int, device) -> Tensor:
        null = self.null_class
        if y is None and null is not None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        check_labels(y, self.num_classes if null is None else null + 1)
        return y

    def params(self, shape, context, y):
        mean, log_scale = self.mean, self.log_scale
        if self.num_classes:
            y = self._class_labels(y, 1, mean.device)
            offset = self.class_embedding(y)[:, :, None, None]  # (B, 2C, 1, 1)
            d_mean, d_log_scale = offset.chunk(2, dim=1)
            mean, log_scale = mean + d_mean, log_scale + d_log_scale
        return mean.expand(-1, -1, *shape[1:]), log_scale.expand(-1, -1, *shape[1:])

    def sample(self, n, shape, context=None, y=None, temperature=1.0, eps=None):
        if not self.guidance:
            return super().sample(n, shape, context, y, temperature, eps)
        if self.null_class is None:
            raise ValueError(
                "guidance needs a prior trained with label dropout: build with "
                "label_dropout > 0 (model.label_dropout=0.1)"
            )
        mean, log_scale = self.params(shape, context, y)
        null_mean, _ = self.params(shape, context, None)
        mean = null_mean + (1.0 + self.guidance) * (mean - null_mean)
        if eps is None:
            eps = torch.randn(n, *shape, device=mean.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(log_scale) * eps.to(mean)


class FactorOutPrior(GaussianPrior):
    """Glow's split prior ``p(z₂ | z₁)``: a zero-initialised conv3×3 of the kept half ``z₁``.

    Shapes: context ``(B, C₁, H, W)`` -> mean, log_scale ``(B, C₂, H, W)``.
    """

    def __init__(self, context_channels: int, channels: int) -> None:
        super().__init__()
        self.net = ZeroConv2d(context_channels, 2 * channels)

    def params(self, shape, context, y):
        mean, log_scale = self.net(context).chunk(2, dim=1)
        return mean, log_scale


class PlanarPrior(nn.Module):
    """A flexible top prior: ``N(0, I)`` pushed through ``layers`` planar flows on the
    flattened latent ``(B, D)`` (Rezende & Mohamed, 2015).

    ``log p(z) = log N(f(z); 0, I) + log|det ∂f/∂z|`` with ``f`` the planar chain (latent →
    base); ``sample`` returns ``f⁻¹(temperature · ε)`` (each planar inverse by bisection), so
    temperature 0 gives ``f⁻¹(0)``. Not class-conditional.
    """

    def __init__(self, shape: tuple[int, int, int], layers: int = 4) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"planar_layers={layers!r} must be >= 1 (planar flows in the prior)")
        self.dims = math.prod(shape)
        self.flow = Sequential([Planar(self.dims) for _ in range(layers)])
        self.base = StandardNormal()

    def log_prob(
        self, z: Tensor, context: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        base, logdet = self.flow(z.reshape(z.shape[0], -1))
        return self.base.log_prob(base) + logdet

    def sample(
        self,
        n: int,
        shape: tuple[int, ...],
        context: Tensor | None = None,
        y: Tensor | None = None,
        temperature: float = 1.0,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Draw ``(n, *shape)`` latents (``eps``: given standard-normal noise of that shape)."""
        eps = None if eps is None else eps.reshape(n, self.dims)
        base = self.base.sample(n, (self.dims,), temperature=temperature, eps=eps)
        return self.flow.inverse(base).reshape(n, *shape)


def check_label_dropout(label_dropout: float, num_classes: int | None) -> None:
    """Raise ``ValueError`` unless ``label_dropout`` is in ``[0, 1)`` and, when positive, the
    model is class-conditional."""
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, int | float):
        raise ValueError(f"label_dropout={label_dropout!r} must be a number in [0, 1)")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(
            f"label_dropout={label_dropout!r} must be in [0, 1) (0.1 is usual; 0 turns "
            "classifier-free guidance training off)"
        )
    if label_dropout and not num_classes:
        raise ValueError(
            f"label_dropout={label_dropout!r} needs a class-conditional model: set "
            "model.num_classes (or label_dropout=0)"
        )


def check_labels(y: Tensor | None, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``y`` holds class indices in ``[0, num_classes)``."""
    if y is None:
        raise ValueError(
            f"this model has a class-conditional prior ({num_classes} classes): "
            "pass y=labels, a LongTensor (B,) of class indices"
        )
    if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
        raise ValueError(
            f"y must be a 1-D integer tensor of class indices, got {y.dtype} {tuple(y.shape)}"
        )
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"y must hold class indices in [0, {num_classes}), got {y.tolist()[:8]}")
