"""The multiscale flow: dequantise → preprocess → levels (transform → factor-out) → top prior.

``log p(x) = Σ_l log p(z_l) + Σ logdet - log q(u | x)`` in nats for integer images ``x``
(one dequantisation draw ``u``; ``log q = 0`` for uniform dequantisation); bits per dim
``= -log p(x) / (D ln 2)`` with ``D = C·H·W`` real pixels, the definition of the RealNVP,
Glow and Flow++ papers (the ``-D·n_bits·ln 2`` of the rescaling is in the logdet).

With Gaussian noise augmentation (``noise_sigma``) the same sum is ``log p(y)`` of the noisy
image ``y = x + ½ + 2^n_bits·(σ/2)·ε`` in pixel units, reported as ``noisy_bpd
= -log p(y) / (D ln 2)``: a density of continuous noisy images, not a bound on the discrete
data, so it carries its own name (``metric_name``) everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Bijection
from glowlab.bijections.dequantization import Dequantize, VariationalDequantizer
from glowlab.metrics.bpd import NOISY_PREFIX, bpd_parts, nats_to_bpd
from glowlab.priors import GaussianPrior, check_labels
from glowlab.sampling import guidance as guided
from glowlab.sampling import guided_parts, tweedie_denoise


class Level(nn.Module):
    """One scale: ``transform`` (a bijection, usually starting with a Squeeze) and, for all
    but the last level, a factor-out: the second half of the channels ``z`` leaves the flow,
    scored by ``prior`` given the first half; the last level's whole output goes to ``prior``.

    ``out_shape`` is the ``(C, H, W)`` of ``transform``'s output.
    """

    def __init__(
        self,
        transform: Bijection,
        prior: GaussianPrior,
        out_shape: tuple[int, int, int],
        factor_out: bool,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.prior = prior
        self.out_shape = tuple(out_shape)
        self.factor_out = factor_out

    @property
    def kept_channels(self) -> int:
        return self.out_shape[0] // 2 if self.factor_out else self.out_shape[0]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of the latent this level emits."""
        c, h, w = self.out_shape
        return (c - self.kept_channels, h, w) if self.factor_out else (c, h, w)


@dataclass
class FlowOutput:
    """Result of a forward pass. ``log_prob = log_prior + logdet - log_q`` (all ``(B,)``, nats).

    ``log_q`` is ``log q(u | x)`` of the dequantisation draw: zero for uniform dequantisation
    (and for ``MultiscaleFlow.flow``, which starts after the dequantisation).
    """

    log_prob: Tensor
    log_prior: Tensor
    logdet: Tensor
    latents: list[Tensor]
    log_q: Tensor


class MultiscaleFlow(nn.Module):
    """A multiscale normalizing flow on integer images ``(B, C, H, W)`` in ``[0, 2^n_bits)``.

    Args:
        image_shape: ``(C, H, W)`` of the images.
        preprocess: bijection from ``[0, 1)`` to the flow's input space (``Shift``, ``Logit``).
        levels: the scales, from the finest to the coarsest.
        n_bits: bits per pixel of the data (8, or 5 for Glow's CelebA-HQ).
        num_classes: set for a class-conditional model; ``y`` is then required.
        dequantizer: a learned ``q(u | x)`` (Flow++); ``None`` dequantises uniformly. With it,
            ``log_prob`` and ``bits_per_dim`` are the variational bound of one draw ``u ~ q``,
            ``log p((x + u) / 2^n_bits) - D·n_bits·ln 2 - log q(u | x)``, and ``noise`` fixes
            that draw through ``ε = Φ⁻¹(noise)`` (see ``glowlab.bijections.dequantization``).
        noise_sigma: Gaussian noise augmentation with std ``σ`` on the ``[-1, 1]`` image
            scale (``σ/2`` on the flow's ``[0, 1)`` scale) instead of uniform dequantisation:
            ``log_prob`` is then ``log p(y)`` of the noisy image ``y`` (pixel units, one
            draw; ``noise`` fixes it through ``ε = Φ⁻¹(noise)``), ``bpd_parts`` names its
            numbers ``noisy_*`` and ``denoise``/``sample(denoise=True)`` apply Tweedie's
            formula with the model's own score.

    References: Dinh et al., "Real NVP", 2017; Kingma & Dhariwal, "Glow", 2018; Ho et al.,
    "Flow++", 2019; Zhai et al., "Normalizing flows are capable generative models"
    (TarFlow), 2025.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        preprocess: Bijection,
        levels: list[Level],
        n_bits: int = 8,
        num_classes: int | None = None,
        dequantizer: VariationalDequantizer | None = None,
        noise_sigma: float | None = None,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        if dequantizer is not None and noise_sigma is not None:
            raise ValueError(
                "noise_sigma (Gaussian noise augmentation) and a variational dequantizer "
                "exclude each other; pick one model/dequantization"
            )
        if dequantizer is not None and dequantizer.image_shape != self.image_shape:
            raise ValueError(
                f"the dequantizer was built for images of shape {dequantizer.image_shape} but "
                f"the model takes {self.image_shape}; build it with image_shape="
                f"{self.image_shape}"
            )
        self.dequantize = Dequantize(n_bits, sigma=noise_sigma)
        self.dequantizer = dequantizer
        self.preprocess = preprocess
        self.levels = nn.ModuleList(levels)
        self.n_bits = n_bits
        self.num_classes = num_classes
        self.label_dropout = float(label_dropout)

    @property
    def dims(self) -> int:
        """``D = C·H·W``, the number of real pixels per image."""
        return math.prod(self.image_shape)

    @property
    def noise_sigma(self) -> float | None:
        """The noise std ``σ`` (``[-1, 1]`` scale) of Gaussian noise augmentation, else None."""
        return self.dequantize.sigma

    @property
    def metric_prefix(self) -> str:
        """``"noisy_"`` for a noise-augmented model, ``""`` otherwise: prefixes every name in
        ``bpd_parts`` (and so every logged ``train/``, ``val/``, ``test/`` number)."""
        return "" if self.noise_sigma is None else NOISY_PREFIX

    @property
    def metric_name(self) -> str:
        """What this model reports: ``bpd`` (a bound on the discrete data) or ``noisy_bpd``
        (the density of noise-augmented images); checkpoints are monitored on it."""
        return self.metric_prefix + "bpd"

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [level.latent_shape for level in self.levels]

    # ----------------------------------------------------------------- validation
    def check_images(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a batch of integer images this model takes."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got "
                f"{tuple(x.shape)}; resize the data or build the model with image_shape="
                f"{tuple(x.shape[1:]) if x.dim() == 4 else '(C, H, W)'}"
            )
        if x.is_floating_point() and not torch.equal(x, torch.round(x)):
            raise ValueError(
                "pixel values must be integers in [0, 2**n_bits); got non-integer floats. "
                "Pass the raw uint8 images (dequantisation happens inside the model)"
            )
        top = 2**self.n_bits - 1
        if x.dtype == torch.uint8 and top == 255:
            return  # every uint8 value is valid: skip the scan (and a GPU sync) per batch
        if x.numel() and (x.min() < 0 or x.max() > top):
            raise ValueError(
                f"pixel values must be in [0, {top}] for n_bits={self.n_bits}, got "
                f"[{x.min().item()}, {x.max().item()}]; reduce bits with x >> (8 - n_bits)"
            )

    def _check_y(self, y: Tensor | None) -> None:
        """Labels in ``[0, num_classes)``; ``None`` too when the model has a null class
        (trained with label dropout), which then means the unconditional model."""
        if self.num_classes and not (y is None and guided_parts(self)):
            check_labels(y, self.num_classes)

    def _drop_labels(self, y: Tensor | None) -> Tensor | None:
        """Classifier-free guidance training: in training mode each label becomes the null
        class ``num_classes`` with probability ``label_dropout``: one draw per image, shared
        by every part the label conditions (prior, Transformer blocks)."""
        if not (self.training and self.label_dropout and y is not None):
            return y
        dropped = torch.rand(y.shape[0], device=y.device) < self.label_dropout
        return torch.where(dropped, torch.full_like(y, self.num_classes), y)

    # ----------------------------------------------------------------- density
    def forward(
        self, x: Tensor, y: Tensor | None = None, noise: Tensor | float | None = None
    ) -> FlowOutput:
        """Push integer images to latents. ``noise`` in ``[0, 1)`` (a tensor broadcastable to
        ``x`` or a float) fixes the dequantisation: it is ``u`` itself for uniform
        dequantisation and ``u = q``'s draw at ``ε = Φ⁻¹(noise)`` for a variational one."""
        self.check_images(x)
        self._check_y(y)
        y = self._drop_labels(y)
        x = x.to(self._dtype())
        if self.dequantizer is None:
            v, logdet = self.dequantize(x, noise=noise)
            log_q = x.new_zeros(x.shape[0])
        else:
            u, log_q = self.dequantizer(x / (self.dequantize.n_bins - 1) - 0.5, noise)
            v, logdet = self.dequantize(x, noise=u)
        out = self.flow(v, y)
        out.logdet = out.logdet + logdet
        out.log_q = log_q
        out.log_prob = out.log_prior + out.logdet - log_q
        return out

    def flow(self, v: Tensor, y: Tensor | None = None) -> FlowOutput:
        """The continuous part: dequantised images ``v`` in ``[0, 1)`` -> latents.

        ``logdet`` here excludes the dequantisation's ``-D·n_bits·ln 2``.
        """
        h, logdet = self.preprocess(v, y)
        log_prior = torch.zeros_like(logdet)
        latents = []
        for level in self.levels:
            h, step_logdet = level.transform(h, y)
            logdet = logdet + step_logdet
            if level.factor_out:
                h, z = h[:, : level.kept_channels], h[:, level.kept_channels :]
                log_prior = log_prior + level.prior.log_prob(z, context=h, y=y)
            else:
                z = h
                log_prior = log_prior + level.prior.log_prob(z, y=y)
            latents.append(z)
        return FlowOutput(log_prior + logdet, log_prior, logdet, latents, torch.zeros_like(logdet))

    def log_prob(
        self, x: Tensor, y: Tensor | None = None, noise: Tensor | float | None = None
    ) -> Tensor:
        """``log p(x)`` of integer images in nats, ``(B,)``: the dequantisation bound of one
        draw (uniform, or variational with a ``dequantizer``)."""
        return self(x, y, noise).log_prob

    def bits_per_dim(
        self, x: Tensor, y: Tensor | None = None, noise: Tensor | float | None = None
    ) -> Tensor:
        """``-log p(x) / (D ln 2)``, ``(B,)``: the number papers report."""
        return self.nats_to_bpd(self.log_prob(x, y, noise))

    def nats_to_bpd(self, log_prob: Tensor) -> Tensor:
        return nats_to_bpd(log_prob, self.dims)

    def bpd_parts(
        self, x: Tensor, y: Tensor | None = None, noise: Tensor | float | None = None
    ) -> dict[str, Tensor]:
        """The reported numbers of one draw, each ``(B,)`` (``glowlab.metrics.bpd``):
        ``bpd = prior_bpd + logdet_bpd + dequant_bpd``, or for a noise-augmented model
        (``noise_sigma``) ``noisy_bpd = noisy_prior_bpd + noisy_logdet_bpd``, the density of
        the noisy image, never read as a discrete-data bpd. Validation and test report these
        for every family, whatever its training objective (``glowlab.objectives``)."""
        return bpd_parts([self(x, y, noise)], self.dims, noisy=self.noise_sigma is not None)

    # ----------------------------------------------------------------- latents
    def encode(
        self, x: Tensor, y: Tensor | None = None, noise: Tensor | float = 0.5
    ) -> list[Tensor]:
        """Per-level latents of integer images, deterministic unless ``noise=None``: the default
        0.5 puts them at the bin centres (uniform) or at ``q``'s draw for ``ε = 0``."""
        return self(x, y, noise).latents

    def invert(self, zs: list[Tensor], y: Tensor | None = None) -> Tensor:
        """Per-level latents -> dequantised images ``v`` in ``[0, 1)`` (inverse of ``flow``)."""
        if len(zs) != len(self.levels):
            raise ValueError(
                f"decode needs {len(self.levels)} latents (one per level), got {len(zs)}"
            )
        h = None
        for level, z in zip(reversed(self.levels), reversed(zs), strict=True):
            h = z if h is None else torch.cat([h, z], dim=1)
            h = level.transform.inverse(h, y)
        return self.preprocess.inverse(h, y)

    def decode(self, zs: list[Tensor], y: Tensor | None = None) -> Tensor:
        """Integer images ``(B, C, H, W)`` (uint8) from per-level latents."""
        return self.dequantize.inverse(self.invert(zs, y))

    def latent_noise(self, n: int, seed: int) -> list[Tensor]:
        """Standard-normal noise for ``n`` samples, one ``(n, *latent_shapes[l])`` tensor per
        level, drawn on the CPU from ``seed`` (the same on every device); for ``sample(eps=)``."""
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(n, *shape, generator=gen) for shape in self.latent_shapes]

    def denoise(self, v: Tensor, y: Tensor | None = None) -> Tensor:
        """Tweedie's posterior mean of the clean images given noisy ones, with the model's own
        score: ``v̂ = v + s²·∇_v log p(v)``, ``s = σ/2`` (``σ = noise_sigma`` on the ``[-1, 1]``
        scale), for ``v`` ``(B, C, H, W)`` on the flow's ``[0, 1)`` scale (``sample_continuous``'s
        output). Exact ``E[x | v]`` when the model's ``p(v)`` is the true density of the noisy
        images; ``y`` conditions the score (the conditional, unguided model).

        References: Efron, "Tweedie's formula and selection bias", 2011; Zhai et al., TarFlow,
        2025 (score-based denoising of samples).
        """
        self.check_denoise()
        self._check_y(y)
        return tweedie_denoise(lambda u: self.flow(u, y).log_prob, v, 0.5 * self.noise_sigma)

    def check_denoise(self) -> None:
        if self.noise_sigma is None:
            raise ValueError(
                "denoise needs a model trained with Gaussian noise augmentation "
                "(model/dequantization=gaussian); this one was not: use denoise=false"
            )

    @torch.no_grad()
    def sample_continuous(
        self,
        n: int,
        temperature: float = 1.0,
        y: Tensor | None = None,
        eps: list[Tensor] | None = None,
        guidance: float | None = None,
    ) -> Tensor:
        """``n`` continuous samples ``(n, C, H, W)`` on the flow's ``[0, 1)`` scale (before
        rounding to integers); arguments as in ``sample``."""
        if temperature < 0:
            raise ValueError(f"temperature={temperature!r} must be >= 0 (1 = the model, 0 = mode)")
        self._check_y(y)
        if y is not None and y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} labels but n={n} samples were asked for")
        with guided(self, guidance):
            h = None
            for i in reversed(range(len(self.levels))):
                level = self.levels[i]
                z = level.prior.sample(
                    n,
                    level.latent_shape,
                    context=h,
                    y=y,
                    temperature=temperature,
                    eps=None if eps is None else eps[i],
                )
                h = z if h is None else torch.cat([h, z], dim=1)
                h = level.transform.inverse(h, y)
            return self.preprocess.inverse(h, y)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        y: Tensor | None = None,
        eps: list[Tensor] | None = None,
        guidance: float | None = None,
        denoise: bool = False,
    ) -> Tensor:
        """``n`` integer images ``(n, C, H, W)`` (uint8), every prior's std scaled by
        ``temperature`` (0 gives the mode). ``eps``: optional standard-normal noise per level
        (shapes ``(n, *latent_shapes[l])``), to redraw the same samples at other temperatures.
        ``guidance``: classifier-free guidance weight ``w`` for a model trained with label
        dropout (``glowlab.sampling``; None keeps the model's own, 0 is the conditional model;
        ``y=None`` samples the unconditional model). ``denoise``: apply ``denoise`` (Tweedie)
        before rounding, for a model trained with Gaussian noise augmentation.
        """
        if denoise:
            self.check_denoise()
        v = self.sample_continuous(n, temperature, y, eps, guidance)
        if denoise:
            v = self.denoise(v, y)
        return self.dequantize.inverse(v)

    def _dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.get_default_dtype()
