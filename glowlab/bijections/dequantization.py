"""Dequantisation: integer images into the continuous pixel scale the flow models.

``Dequantize`` is the bijection every model starts with: uniform noise (a bound on the
discrete likelihood) or TarFlow's Gaussian noise augmentation (a density of noisy images).
``VariationalDequantizer`` is Flow++'s learned noise distribution ``q(u | x)`` on ``(0, 1)^D``.

Uniform dequantisation scores ``v = (x + u) / 2^n_bits`` with ``u ~ U[0, 1)^D``. Any density
``q(u | x)`` on the unit cube gives the lower bound (Jensen)

    log P(x) >= E_{u ~ q(u|x)} [ log p((x + u) / 2^n_bits) - D·n_bits·ln 2 - log q(u | x) ],

which equals the uniform bound for ``q = U``; a learned ``q`` can make it much tighter, and the
importance-weighted version (``glowlab.tools.likelihood``) tighter still.

Here ``q`` is a conditional flow: ``ε ~ N(0, I)`` (the shape of ``x``) → ``depth`` affine
couplings whose networks also see features of ``x`` → ``u = sigmoid(h)``, so

    log q(u | x) = log N(ε; 0, I) - Σ_couplings log|det| - Σ log σ'(h).

References: Ho et al., "Flow++", ICML 2019, §3.1; Theis et al., "A note on the evaluation
of generative models", ICLR 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, constant_logdet, sum_except_batch
from glowlab.bijections.coupling import checkerboard_mask
from glowlab.transforms import soft_clamp
from glowlab.validation import check_n_bits, check_positive


def standard_normal_noise(like: Tensor, noise: Tensor | float | None) -> Tensor:
    """``ε`` of ``like``'s shape, dtype and device: ``N(0, I)`` draws when ``noise`` is None,
    else ``ε = Φ⁻¹(noise)`` for ``noise`` in ``[0, 1)`` (a tensor broadcastable to ``like``,
    or a float used for every pixel: ``0.5`` gives ``ε = 0``).

    ``noise`` is clamped to ``[eps, 1 - eps]`` (``eps`` = the dtype's machine epsilon) so that
    ``0`` maps to a finite ``ε`` (about -5.2 in float32, -8.1 in float64). Uniform noise maps
    to standard-normal ``ε``, so callers that fix uniform noise for reproducible evaluation
    (``FlowModule``, ``glowlab.tools.likelihood``) fix ``q``'s draw the same way.
    """
    if noise is None:
        return torch.randn_like(like)
    eps = torch.finfo(like.dtype).eps
    p = torch.as_tensor(noise, dtype=like.dtype, device=like.device).expand_as(like)
    return torch.special.ndtri(p.clamp(eps, 1 - eps))


class Dequantize(Bijection):
    """Integer images ``x`` into the continuous pixel scale ``[0, 1)`` of the flow.

    Uniform dequantisation (``sigma=None``): ``v = (x + u) / 2^n_bits``, ``u`` is ``noise``
    if given (any shape broadcastable to ``x``, values in ``[0, 1)``), else ``U[0, 1)`` per
    pixel; the flow's density then bounds the probability of the discrete image.

    Gaussian noise augmentation (``sigma`` set): ``v = (x + ½) / 2^n_bits + (σ/2)·ε``, the bin
    centres plus Gaussian noise of std ``σ`` on the ``[-1, 1]`` scale of the TarFlow paper
    (``σ/2`` on ``[0, 1)``, ``2^n_bits·σ/2`` pixel levels), ``ε ~ N(0, I)`` or ``ε = Φ⁻¹(noise)``
    for given uniform ``noise`` (``0.5`` gives the bin centres). The flow then models the
    density of the *noisy* images ``y = x + ½ + 2^n_bits·(σ/2)·ε`` (pixel units), which is not
    a bound on the discrete likelihood; ``v`` may leave ``[0, 1)``.

    Either way the rescaling ``x + u -> v`` has logdet ``-D · n_bits · ln 2``, so log-densities
    are in pixel units (integers spaced by 1). ``inverse`` rounds back down to integers
    ``floor(v · 2^n_bits)``, clamped to the range.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``, logdet ``(B,)``.

    References: Theis et al., "A note on the evaluation of generative models", 2016; Zhai et
    al., "Normalizing flows are capable generative models" (TarFlow), 2025.
    """

    def __init__(self, n_bits: int = 8, sigma: float | None = None) -> None:
        super().__init__()
        check_n_bits(n_bits)
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0
        ):
            raise ValueError(
                f"dequantization sigma={sigma!r} must be a number > 0 (the noise std on the "
                "[-1, 1] scale, e.g. model.dequantization.sigma=0.05)"
            )
        self.n_bits = n_bits
        self.n_bins = 2**n_bits
        self.sigma = None if sigma is None else float(sigma)

    def forward(
        self, x: Tensor, cond: Tensor | None = None, noise: Tensor | float | None = None
    ) -> tuple[Tensor, Tensor]:
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        dims = x[0].numel()
        logdet = torch.tensor(-dims * self.n_bits * math.log(2.0), device=x.device)
        if self.sigma is None:
            u = torch.rand_like(x) if noise is None else noise
            return (x + u) / self.n_bins, constant_logdet(x, logdet)
        eps = standard_normal_noise(x, noise)
        return (x + 0.5) / self.n_bins + (0.5 * self.sigma) * eps, constant_logdet(x, logdet)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.floor(z * self.n_bins).clamp(0, self.n_bins - 1).to(torch.uint8)

    def extra_repr(self) -> str:
        return f"n_bits={self.n_bits}" + ("" if self.sigma is None else f", sigma={self.sigma}")


LOG_2PI = math.log(2 * math.pi)
LOG_SCALE_BOUND = 2.0
"""Each coupling's log-scale is soft-clamped to ``(-2, 2)``: ``soft_clamp(raw, 2)``."""


def coupling_masks(image_shape: tuple[int, int, int], depth: int) -> list[Tensor]:
    """``depth`` binary masks ``(1, C, H, W)`` (1 = passed through, 0 = transformed).

    Couplings go in pairs of complementary masks, so every pixel is transformed: checkerboard
    pairs, alternating with channel-half pairs when ``C`` is even (two checkerboards, two
    channel halves, ...); with odd ``C`` only checkerboards.
    """
    c, h, w = image_shape
    board = checkerboard_mask(h, w, 0, torch.zeros(())).expand(1, c, h, w)[0]
    halves = (torch.arange(c) < c // 2).float().view(c, 1, 1).expand(c, h, w)
    masks = []
    for i in range(depth):
        base = halves if c % 2 == 0 and (i // 2) % 2 == 1 else board
        masks.append((base if i % 2 == 0 else 1 - base).unsqueeze(0).clone())
    return masks


class ConditionalAffineCoupling(nn.Module):
    """``h' = m·h + (1 - m)·(h·exp(s) + t)`` with ``(s, t) = net(m·h, m, context)``.

    ``h``: ``(B, C, H, W)``; ``context``: features of the conditioning image
    ``(B, context_channels, H, W)``; ``m``: a fixed ``(1, C, H, W)`` mask. ``s`` is soft-clamped
    to ``(-LOG_SCALE_BOUND, LOG_SCALE_BOUND)``. The net's last convolution starts at zero, so a
    fresh coupling is the identity. Returns ``(h', logdet)`` with ``logdet = Σ (1 - m)·s``
    ``(B,)``. Only this (sampling) direction is needed: ``q`` is only ever scored at its own
    draws.
    """

    def __init__(self, mask: Tensor, context_channels: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)
        channels = mask.shape[1]
        out = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels + context_channels, hidden, 3, padding=1),
            nn.ReLU(),
            out,
        )

    def forward(self, h: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(h.dtype)
        net_in = torch.cat([h * m, m.expand_as(h), context], dim=1)  # (B, 2C + F, H, W)
        shift, raw = self.net(net_in).chunk(2, dim=1)
        log_scale = soft_clamp(raw, LOG_SCALE_BOUND)
        out = h * m + (h * torch.exp(log_scale) + shift) * (1 - m)
        return out, sum_except_batch(log_scale * (1 - m))


class VariationalDequantizer(nn.Module):
    """Flow++'s ``q(u | x)``: ``ε ~ N(0, I)`` → ``depth`` conditional affine couplings →
    sigmoid → ``u`` in ``(0, 1)``.

    ``forward(image, noise=None) -> (u, log_q)``: ``image`` is the conditioning batch of
    integer images scaled to ``[-0.5, 0.5]``, ``(B, C, H, W)`` (``MultiscaleFlow`` passes
    ``x / (2^n_bits - 1) - 0.5``); ``u`` has its shape; ``log_q = log q(u | x)`` is ``(B,)``
    in nats. ``noise``: see ``standard_normal_noise`` (None draws ``ε`` afresh, a tensor of
    ``U[0, 1)`` values fixes it, a float fixes ``ε = Φ⁻¹(noise)`` for every pixel).

    The couplings see features of ``image`` from a small convolutional encoder (two 3×3
    convolutions with ``hidden`` channels, shared by all couplings). Their last layers start
    at zero, so a fresh ``q`` is the logit-normal ``u = sigmoid(ε)`` whatever ``x``.

    Args:
        image_shape: ``(C, H, W)`` of the images.
        hidden: channels of the encoder and of each coupling's network.
        depth: number of couplings (an even number transforms every pixel equally often).

    References: Ho et al., "Flow++", ICML 2019, §3.1.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], hidden: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
            raise ValueError(
                f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}"
            )
        check_positive("hidden", hidden)
        check_positive("depth", depth)
        self.image_shape = tuple(int(s) for s in image_shape)
        channels = self.image_shape[0]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.couplings = nn.ModuleList(
            ConditionalAffineCoupling(mask, hidden, hidden)
            for mask in coupling_masks(self.image_shape, depth)
        )

    def forward(self, image: Tensor, noise: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        if image.dim() != 4 or tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(
                f"the dequantizer expects images of shape (B, "
                f"{', '.join(map(str, self.image_shape))}), got {tuple(image.shape)}; build it "
                f"with the model's image_shape"
            )
        eps = standard_normal_noise(image, noise)
        # log N(ε; 0, I): glowlab.priors.gaussian_log_prob at mean 0, log-scale 0, bit for bit
        log_q = sum_except_batch(-0.5 * (LOG_2PI + eps * eps))
        context = self.encoder(image)  # (B, hidden, H, W)
        h = eps
        for coupling in self.couplings:
            h, logdet = coupling(h, context)
            log_q = log_q - logdet
        # u = σ(h): log σ'(h) = log σ(h) + log σ(-h)
        log_q = log_q - sum_except_batch(F.logsigmoid(h) + F.logsigmoid(-h))
        return torch.sigmoid(h), log_q
