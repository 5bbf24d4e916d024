"""A time-conditioned U-Net velocity field ``v(t, x[, y])`` for flow matching.

Layout (Ronneberger et al. 2015, with the residual blocks, time embedding and attention of
Ho et al. 2020 and Dhariwal & Nichol 2021 — "ADM")::

    t ─ sinusoidal(width) ─ Linear ─ SiLU ─ Linear ─┬─ (+ class embedding of y) ─→ emb
    x ─ conv3×3 ─ [level 0: blocks × ResBlock(emb) (+Attention)] ─ down ─ [level 1] ─ ...
      ─ middle: ResBlock ─ (Attention) ─ ResBlock
      ─ [level L-1: (blocks+1) × ResBlock(concat skip) (+Attention)] ─ up ─ ... [level 0]
      ─ GroupNorm ─ SiLU ─ zero-initialised conv3×3 ─→ v  (same shape as x)

Every ResBlock is ``GroupNorm → SiLU → conv3×3 → adaptive GroupNorm (scale, shift from emb)
→ SiLU → dropout → zero-initialised conv3×3`` plus a (1×1) skip; down-sampling is a stride-2
conv3×3, up-sampling nearest-neighbour to the skip's size and a conv3×3, so any ``H, W``
works (28 → 14 → 7 → 4 and back). The output convolution starts at zero: a fresh field is
``v ≡ 0`` and its flow the identity. Only per-sample operations are used (GroupNorm, not
BatchNorm), so each sample's velocity depends on its own input — what the divergence of a
CNF needs.

References: Ronneberger et al., "U-Net", 2015; Ho et al., "Denoising Diffusion Probabilistic
Models", 2020; Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021;
Lipman et al., "Flow Matching for Generative Modeling", 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.validation import check_positive, is_integer


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of times ``t`` (``()`` or ``(B,)``): ``(B, dim)`` (``(1, dim)`` for
    a scalar). Feature ``i < dim/2`` is ``cos(scale·t·ω_i)``, ``i ≥ dim/2`` the sine, with
    ``ω_i = 10000^(−i/(dim/2))`` (Vaswani et al. 2017); ``scale`` maps ``t ∈ [0, 1]`` onto the
    range diffusion models use for their step index."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half
    )
    angles = scale * t.reshape(-1, 1) * freqs  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32 with at least 4 channels each (fewer for thin layers)."""
    return math.gcd(channels, min(32, max(1, channels // 4)))


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding: ``(B, C_in, H, W)`` and ``(B, E)`` ->
    ``(B, C_out, H, W)``; the last conv starts at zero (block = skip). ``scale_shift``: the
    embedding sets a per-channel scale and shift after the second GroupNorm (ADM); else it is
    added before it (DDPM)."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, scale_shift: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.scale_shift = scale_shift
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the ``H·W`` positions, residual, zero-initialised output
    projection: ``(B, C, H, W) -> (B, C, H, W)``. Plain softmax (not a fused kernel), so
    higher derivatives exist."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(
                f"heads={heads} must divide the {channels} channels of an attention layer; "
                f"pick heads among the divisors of {channels}"
            )
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        )
        weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(q.shape[2]), -1)
        out = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, c, h, w)
        return x + self.proj(out)


class _Stage(nn.Module):
    """A ResBlock optionally followed by attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float,
        heads: int | None,
        scale_shift: bool,
    ) -> None:
        super().__init__()
        self.block = ResBlock(in_ch, out_ch, emb_dim, dropout, scale_shift)
        self.attention = Attention(out_ch, heads) if heads else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.block(x, emb)
        return x if self.attention is None else self.attention(x)


class UNet(nn.Module):
    """The velocity field ``v(t, x[, y])``: ``()`` or ``(B,)`` times, ``(B, C, H, W)`` inputs
    and optional ``(B,)`` labels -> ``(B, C, H, W)`` (module docstring).

    Args:
        channels: image channels ``C``.
        width: channels of level 0; level ``i`` has ``width · channel_mults[i]``.
        channel_mults: one multiplier per resolution level (``len`` levels, ``len − 1``
            down-samplings).
        blocks: residual blocks per level on the way down (``blocks + 1`` on the way up).
        attention_levels: level indices (0 = full resolution) with self-attention after each
            block; any attention also puts one in the middle.
        heads: attention heads.
        dropout: dropout inside the residual blocks (training mode only).
        num_classes: adds a learned class embedding to the time embedding (``y`` required).
        time_scale: multiplies ``t ∈ [0, 1]`` before the sinusoidal features. 1 (as torchcfm)
            keeps the field smooth in ``t``, which adaptive ODE solvers reward; ADM's 1000
            (its step indices) puts frequencies up to 1000 into ``t`` and costs steps.
        scale_shift: ADM's adaptive GroupNorm (embedding -> scale and shift) in every block;
            ``False``: DDPM's added embedding (fewer parameters).

    References: Ho et al. 2020; Dhariwal & Nichol 2021; Lipman et al. 2023.
    """

    def __init__(
        self,
        channels: int,
        width: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        blocks: int = 2,
        attention_levels: Sequence[int] = (),
        heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        time_scale: float = 1.0,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        for option, value in (("channels", channels), ("width", width), ("blocks", blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{option}={value!r} must be a positive integer")
        mults = list(channel_mults)
        if not mults or not all(is_integer(m) and m >= 1 for m in mults):
            raise ValueError(
                f"channel_mults={list(channel_mults)!r} needs one positive multiplier per "
                "level, e.g. [1, 2, 2]"
            )
        attention = sorted({int(a) for a in attention_levels})
        if attention and not 0 <= attention[0] <= attention[-1] < len(mults):
            raise ValueError(
                f"attention_levels={attention} must be level indices in 0..{len(mults) - 1} "
                f"(one per entry of channel_mults)"
            )
        check_positive("heads", heads)
        check_positive("time_scale", time_scale)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        if num_classes is not None:
            check_positive("num_classes", num_classes)
        self.num_classes = num_classes
        self.time_scale = time_scale
        self.width = width
        emb_dim = 4 * width
        self.time_mlp = nn.Sequential(
            nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embedding = nn.Embedding(num_classes, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(channels, width * mults[0], 3, padding=1)

        ch = width * mults[0]
        skips = [ch]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(mults):
            stages = nn.ModuleList()
            for _ in range(blocks):
                heads_here = heads if level in attention else None
                stages.append(_Stage(ch, width * mult, emb_dim, dropout, heads_here, scale_shift))
                ch = width * mult
                skips.append(ch)
            self.down.append(stages)
            if level < len(mults) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.middle = nn.ModuleList(
            [
                _Stage(ch, ch, emb_dim, dropout, heads if attention else None, scale_shift),
                _Stage(ch, ch, emb_dim, dropout, None, scale_shift),
            ]
        )
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(mults))):
            stages = nn.ModuleList()
            for _ in range(blocks + 1):
                heads_here = heads if level in attention else None
                out_ch = width * mults[level]
                in_ch = ch + skips.pop()
                stages.append(_Stage(in_ch, out_ch, emb_dim, dropout, heads_here, scale_shift))
                ch = out_ch
            self.up.append(stages)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU())
        self.out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: Tensor, batch: int, y: Tensor | None) -> Tensor:
        """The ``(B, 4·width)`` embedding of times (and labels)."""
        t = t.reshape(-1)
        emb = self.time_mlp(timestep_embedding(t, self.width, self.time_scale))
        emb = emb.expand(batch, -1) if emb.shape[0] == 1 else emb
        if self.class_embedding is not None:
            if y is None:
                raise ValueError(
                    f"this U-Net is class-conditional (num_classes={self.num_classes}): pass y"
                )
            emb = emb + self.class_embedding(y)
        return emb

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.embed(t.to(x.dtype), x.shape[0], y)
        h = self.stem(x)
        hs = [h]
        for level, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb)
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)
        for stage in self.middle:
            h = stage(h, emb)
        for i, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest")
                h = self.upsample[i](h)
        return self.out(self.head(h))
