"""Transformer networks over image patches: patchify, pre-LN Transformer layers with an optional
key/value cache (TarFlow's causal blocks), and Jet's ViT coupling conditioner.

Patches. ``patchify(x, p)`` cuts ``(B, C, H, W)`` into ``T = (H/p)·(W/p)`` raster-ordered
tokens of ``D = C·p·p`` values; value ``c·p² + i·p + j`` of token ``(h, w)`` is pixel
``(p·h + i, p·w + j)`` of channel ``c`` (for ``p = 2`` the order of ``Squeeze``).

Transformer layer (pre-LayerNorm):
``h ← h + Attn(LN(h))``, ``h ← h + MLP(LN(h))`` with multi-head scaled dot-product attention
(causal when asked) and a GELU MLP of ``mlp_ratio·width`` hidden units.

References: Vaswani et al., "Attention is all you need", 2017; Dosovitskiy et al., "An image is
worth 16x16 words" (ViT), 2021; Kolesnikov, Susano Pinto & Tschannen, "Jet: A modern
Transformer-based normalizing flow", 2024.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.validation import check_int, check_positive


def check_patch_size(patch_size: int, height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``patch_size`` divides both sides of the image."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size={patch_size!r} must be an integer >= 1")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"patch_size={patch_size} does not divide the {height}×{width} input; choose a "
            f"patch size that divides both sides (e.g. {math.gcd(height, width)})"
        )


def patchify(x: Tensor, p: int) -> Tensor:
    """``(B, C, H, W) -> (B, T, C·p·p)`` with ``T = (H/p)·(W/p)`` tokens in raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, p: int, shape: tuple[int, int, int]) -> Tensor:
    """Inverse of ``patchify``: ``(B, T, C·p·p) -> (B, C, H, W)`` for ``shape = (C, H, W)``."""
    c, h, w = shape
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, H/p, p, W/p, p)
    return x.reshape(b, c, h, w)


def sincos_position_embedding(height: int, width: int, dim: int, like: Tensor) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``(H·W, dim)`` of a raster grid (MAE's).

    The first ``dim/2`` values encode the row, the rest the column, each as
    ``[sin(pos·ω_k), cos(pos·ω_k)]`` with ``ω_k = 10000^(−k/(dim/4))``.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=like.device, dtype=like.dtype) / quarter)
    rows = torch.arange(height, device=like.device, dtype=like.dtype)
    cols = torch.arange(width, device=like.device, dtype=like.dtype)
    row_angle = rows[:, None, None] * omega  # (H, 1, dim/4)
    col_angle = cols[None, :, None] * omega  # (1, W, dim/4)
    emb = torch.cat(
        [
            torch.sin(row_angle).expand(height, width, quarter),
            torch.cos(row_angle).expand(height, width, quarter),
            torch.sin(col_angle).expand(height, width, quarter),
            torch.cos(col_angle).expand(height, width, quarter),
        ],
        dim=-1,
    )  # (H, W, dim)
    return emb.reshape(height * width, dim)


def check_heads(width: int, heads: int) -> None:
    check_positive("width", width)
    check_positive("heads", heads)
    if width % heads:
        raise ValueError(
            f"heads={heads} must divide width={width}; pick width = heads × head dim "
            "(e.g. head dim 64)"
        )


class TransformerLayer(nn.Module):
    """One pre-LN Transformer layer on ``(B, T, width)``: ``(B, T, width) -> (B, T, width)``.

    ``forward(h)`` attends over the whole sequence (causally if ``causal``). ``step(h, cache)``
    runs one new token ``h (B, 1, width)`` against the keys and values of every earlier token
    held in ``cache`` (a dict this layer fills), for autoregressive decoding.
    """

    def __init__(self, width: int, heads: int, causal: bool, mlp_ratio: int = 4) -> None:
        super().__init__()
        check_heads(width, heads)
        check_int("mlp_ratio", mlp_ratio)
        self.heads = heads
        self.causal = causal
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def _qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, width = h.shape
        qkv = self.qkv(self.norm1(h)).reshape(b, t, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head dim)
        return q, k, v

    def _merge(self, h: Tensor, attended: Tensor) -> Tensor:
        b, _, t, _ = attended.shape
        h = h + self.proj(attended.transpose(1, 2).reshape(b, t, -1))  # (B, T, width)
        return h + self.mlp(self.norm2(h))

    def forward(self, h: Tensor) -> Tensor:
        q, k, v = self._qkv(h)
        return self._merge(h, F.scaled_dot_product_attention(q, k, v, is_causal=self.causal))

    def step(self, h: Tensor, cache: dict[str, Tensor]) -> Tensor:
        """One token ``(B, 1, width)`` after those whose keys/values ``cache`` holds."""
        q, k, v = self._qkv(h)
        if cache:
            k = torch.cat([cache["k"], k], dim=2)  # (B, heads, t + 1, head dim)
            v = torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        return self._merge(h, F.scaled_dot_product_attention(q, k, v))


class Transformer(nn.Module):
    """``depth`` pre-LN layers and a final LayerNorm: ``(B, T, width) -> (B, T, width)``."""

    def __init__(
        self, width: int, depth: int, heads: int, causal: bool, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        check_positive("depth", depth)
        self.layers = nn.ModuleList(
            TransformerLayer(width, heads, causal, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)

    def new_cache(self) -> list[dict[str, Tensor]]:
        """An empty key/value cache for ``step``, one dict per layer."""
        return [{} for _ in self.layers]

    def step(self, h: Tensor, cache: list[dict[str, Tensor]]) -> Tensor:
        """One causal decoding step: ``(B, 1, width)`` → ``(B, 1, width)``; fills ``cache``."""
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            h = layer.step(h, layer_cache)
        return self.norm(h)


class ViTConditioner(nn.Module):
    """Jet's coupling network: a ViT encoder, ``(B, in, H, W) -> (B, out, H, W)``.

    patchify (``patch_size``; 1 makes every position a token) → linear embedding + fixed 2-D
    sine-cosine position embedding → ``depth`` non-causal pre-LN Transformer layers (``heads``
    heads of ``width/heads``) → final LayerNorm → zero-initialised linear to ``out·p²`` values
    per token → unpatchify. The zero output makes every coupling start as the identity (for
    transforms that are the identity at zero parameters). Usable as ``Coupling``'s injected
    ``conditioner`` through ``functools.partial(ViTConditioner, width=..., depth=...)``.
    ``bf16=True`` runs the network under bfloat16 autocast and returns the input's dtype (the
    coupling's transform and logdet stay in fp32).

    References: Dosovitskiy et al., ViT, 2021; Kolesnikov et al., "Jet", 2024.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 256,
        depth: int = 2,
        heads: int = 4,
        patch_size: int = 1,
        mlp_ratio: int = 4,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        check_heads(width, heads)
        if width % 4:
            raise ValueError(f"ViT width={width} must be divisible by 4 (2-D sin-cos positions)")
        check_patch_size(patch_size, patch_size, patch_size)
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.bf16 = bf16
        p2 = patch_size * patch_size
        self.embed = nn.Linear(in_channels * p2, width)
        self.transformer = Transformer(width, depth, heads, causal=False, mlp_ratio=mlp_ratio)
        self.out = nn.Linear(width, out_channels * p2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        check_patch_size(p, h, w)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            e = self.embed(patchify(x, p))  # (B, T, width)
            e = e + sincos_position_embedding(h // p, w // p, e.shape[-1], e)
            out = self.out(self.transformer(e))  # (B, T, out·p·p)
        return unpatchify(out.to(x.dtype), p, (self.out_channels, h, w))


__all__ = [
    "Transformer",
    "TransformerLayer",
    "ViTConditioner",
    "check_heads",
    "check_patch_size",
    "patchify",
    "sincos_position_embedding",
    "unpatchify",
]
