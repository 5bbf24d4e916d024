"""Conditioner networks for coupling layers: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

Each ends in a zero-initialised layer, so a fresh coupling starts (close to) the identity.
Use them through a ``Conditioner`` factory, e.g.
``functools.partial(GlowConditioner, hidden=512)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from glowlab.nets.actnorm import HiddenActNorm
from glowlab.validation import check_int


def _scaled_conv(conv: nn.Conv2d, x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    """``(conv(x) + bias) · exp(log_scale)`` per output channel, as one convolution with the
    weight and bias scaled instead of the (much larger) output: ``log_scale``, ``bias``
    broadcast to ``(1, C_out, 1, 1)``."""
    scale = torch.exp(log_scale.reshape(-1))
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias.reshape(-1) * scale, padding=conv.padding)


READOUT_REFERENCE_CHANNELS = 64
"""Input width up to which a ``ZeroConv2d``'s weight is stored as is (``step_scale = 1``)."""


def readout_step_scale(in_channels: int, reference: int = READOUT_REFERENCE_CHANNELS) -> float:
    """``α = 2^-⌊log₂(C_in / reference)⌋`` (1 below ``2·reference``): the factor between a
    ``ZeroConv2d``'s stored weight and the weight it applies.

    Adam moves every weight by about ``lr`` per step whatever its gradient, so one step moves
    a readout ``h = Σ_j w_j x_j`` over ``9·C_in`` inputs by up to ``lr · Σ_j |x_j|``: in
    proportion to the width when the inputs are unit-scale (the conditioners' ActNorms make
    them so: ``E|x| ≈ 0.40`` after the ReLU). Storing ``W / α`` makes that step
    ``α · lr · Σ_j |x_j|``, about the size it has at ``C_in = reference`` whatever the width.
    A power of two, so the scaling itself is exact in floating point.
    """
    if reference < 1:
        raise ValueError(f"reference={reference!r} must be a positive number of channels")
    halvings = max(0, (in_channels // reference).bit_length() - 1)
    return 2.0**-halvings


class ZeroConv2d(nn.Module):
    """3×3 convolution starting at zero, with Glow's learned output scale ``exp(3·logs)``:
    ``y = conv(x; α · exp(3·logs) · W) + exp(3·logs) · b``, ``(B, C_in, H, W) -> (B, C_out,
    H, W)``, per output channel, with ``W = conv.weight``, ``b = conv.bias`` and ``α`` the
    ``step_scale`` buffer (``readout_step_scale(C_in)``: 1 up to 127 input channels, 1/8 at
    Glow's width 512). ``α`` keeps Adam's per-step change of ``y`` independent of the width
    (see ``readout_step_scale``); the model is the same function of the applied weight.

    ``step_scale`` is saved with the weights. A state dict without it (written before it
    existed, when ``conv.weight`` was the applied weight) is translated on loading:
    ``conv.weight / α`` (exact: ``α`` is a power of two), so it loads to the same function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        log_scale_factor: float = 3.0,
        reference_channels: int = READOUT_REFERENCE_CHANNELS,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.log_scale_factor = log_scale_factor
        step_scale = readout_step_scale(in_channels, reference_channels)
        self.register_buffer("step_scale", torch.tensor(step_scale))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.exp(self.logs.reshape(-1) * self.log_scale_factor)  # (C_out,)
        weight = self.conv.weight * (self.step_scale * scale).reshape(-1, 1, 1, 1)
        return F.conv2d(x, weight, self.conv.bias * scale, padding=self.conv.padding)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        scale_key, weight_key = prefix + "step_scale", prefix + "conv.weight"
        if scale_key not in state_dict and weight_key in state_dict:
            # Written before ``step_scale``: its ``conv.weight`` is the applied weight.
            state_dict[scale_key] = self.step_scale.detach().clone()
            state_dict[weight_key] = state_dict[weight_key] / self.step_scale.item()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class ActNormConv2d(nn.Module):
    """Bias-free ``k×k`` convolution followed by ActNorm, ``(conv(x) + b) · exp(s)``, computed
    as a single convolution with a scaled weight and bias (one pass over the activations
    instead of three). ActNorm's data-dependent initialisation runs on the first training
    batch, as in ``HiddenActNorm``. Shapes: ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = HiddenActNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.norm.initialized:
            self.norm.initialize(self.conv(x))
        return _scaled_conv(self.conv, x, self.norm.log_scale, self.norm.bias)


class GlowConditioner(nn.Module):
    """Glow's network: conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU → zero conv3×3
    (each ActNorm folded into the convolution before it: ``ActNormConv2d``).

    ``readout_reference``: the zero conv's ``reference_channels`` (``readout_step_scale``).
    The default keeps Adam's per-step change of the output at that of width 64 whatever
    ``hidden`` is: width 512 then trains at lr 1e-4 without warm-up (at 1e-3 it bumps by under
    1 bpd once instead of diverging); a value above ``hidden / 2`` (e.g. ``2**30``) gives the
    unscaled weight of earlier versions.

    References: Kingma & Dhariwal, "Glow", 2018.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 512,
        readout_reference: int = READOUT_REFERENCE_CHANNELS,
    ) -> None:
        super().__init__()
        check_int("hidden", hidden)
        self.net = nn.Sequential(
            ActNormConv2d(in_channels, hidden, 3),
            nn.ReLU(),
            ActNormConv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels, reference_channels=readout_reference),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ResidualBlock(nn.Module):
    """``x + conv3×3(ReLU(conv3×3(ReLU(x))))`` with weight-normalised convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            weight_norm(nn.Conv2d(channels, channels, 3, padding=1)),
            nn.ReLU(),
            weight_norm(nn.Conv2d(channels, channels, 3, padding=1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetConditioner(nn.Module):
    """RealNVP's conditioner: weight-normalised ResNet of ``blocks`` residual blocks.

    Batch norm of the original is left out (it makes train and eval densities differ);
    the flow's ActNorm layers play its role. References: Dinh et al., "Real NVP", 2017.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 8
    ) -> None:
        super().__init__()
        check_int("hidden", hidden)
        check_int("blocks", blocks)
        self.net = nn.Sequential(
            weight_norm(nn.Conv2d(in_channels, hidden, 3, padding=1)),
            *[_ResidualBlock(hidden) for _ in range(blocks)],
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def concat_elu(x: Tensor) -> Tensor:
    """``ELU([x, −x])`` along channels: ``(B, C, H, W) -> (B, 2C, H, W)`` (PixelCNN++)."""
    return F.elu(torch.cat([x, -x], dim=1))


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Gate(nn.Module):
    """Gated linear unit ``a · σ(g)`` with ``[a, g] = conv1×1(x)``: ``C_in -> C_out`` channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.conv(x), dim=1)


class _GatedConvBlock(nn.Module):
    """``x + Gate(Dropout(concat_elu(conv3×3(concat_elu(x)))))`` on ``(B, C, H, W)``."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.gate = _Gate(2 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        h = concat_elu(self.conv(concat_elu(x)))  # (B, 2C, H, W)
        return x + self.gate(self.dropout(h))


class _GatedAttentionBlock(nn.Module):
    """``x + Gate(Dropout(MultiHeadSelfAttention(x)))`` over the ``H·W`` positions.

    Queries, keys and values come from one conv1×1 (``C -> 3C``), split into ``heads`` heads
    of ``C / heads`` channels: ``(B, C, H, W) -> (B, heads, H·W, C / heads)`` each.
    """

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.gate = _Gate(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # (B, heads, H·W, C / heads) each
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H·W, C / heads)
        attended = attended.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.gate(self.dropout(attended))


class FlowPPConditioner(nn.Module):
    """Flow++'s conditioner: gated residual convolutions and gated multi-head self-attention.

    ``conv3×3 (C_in -> hidden)`` → ``blocks`` × [gated conv block → LayerNorm → (if
    ``attention``) gated self-attention block → LayerNorm] → zero-initialised conv3×3
    ``(hidden -> C_out)``. Gated conv block: ``x + Gate(concat_elu(conv3×3(concat_elu(x))))``;
    attention block: ``x + Gate(MHSA(x))`` over all ``H·W`` positions, so every output pixel
    can depend on every input pixel; ``Gate`` is a conv1×1 followed by a GLU; LayerNorm
    normalises the channels of each pixel. ``dropout`` acts before each gate.

    Shapes: ``(B, C_in, H, W) -> (B, C_out, H, W)``; the output is zero at initialisation.
    References: Ho, Chen, Srinivas, Duan & Abbeel, "Flow++", 2019 (section 3.3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 96,
        blocks: int = 4,
        heads: int = 4,
        attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden < 1 or blocks < 1:
            raise ValueError(f"hidden={hidden!r} and blocks={blocks!r} must both be >= 1")
        if attention and (heads < 1 or hidden % heads):
            raise ValueError(
                f"heads={heads!r} must be >= 1 and divide hidden={hidden!r}; "
                "pick hidden as a multiple of heads"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        for _ in range(blocks):
            layers += [_GatedConvBlock(hidden, dropout), _ChannelLayerNorm(hidden)]
            if attention:
                layers += [_GatedAttentionBlock(hidden, heads, dropout), _ChannelLayerNorm(hidden)]
        layers.append(ZeroConv2d(hidden, out_channels))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
