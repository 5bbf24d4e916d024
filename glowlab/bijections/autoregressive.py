"""Masked autoregressive image layers: MAF and IAF with a PixelCNN-style masked conditioner.

The ``D = C·H·W`` elements of a ``(B, C, H, W)`` tensor are ordered in raster order over
pixels and, within a pixel, over channels: element ``(c, r, s)`` has position
``(r·W + s)·C + c`` (``reverse=True`` uses the opposite order). A masked-convolution
conditioner gives the parameters ``θ_i`` of an elementwise transform ``τ`` (any
``glowlab.transforms.ElementwiseTransform``; by default the affine ``(x − μ)·exp(−α)``) for
every element from the elements strictly before it, so the Jacobian is triangular in that
order and ``log|det| = Σ_i log|∂τ/∂x_i|``.

- ``direction="maf"`` (Papamakarios et al. 2017), defined in the density direction:
  forward ``z_i = τ(x_i; θ_i(x_<i))`` is ONE network pass (fast training by likelihood);
  inverse (sampling) ``x_i = τ⁻¹(z_i; θ_i(x_<i))`` needs ``x_<i`` first, so it is sequential.
- ``direction="iaf"`` (Kingma et al. 2016), defined in the sampling direction:
  inverse ``x_i = τ⁻¹(z_i; θ_i(z_<i))`` is ONE network pass (fast sampling); forward
  (density) ``z_i = τ(x_i; θ_i(z_<i))`` is sequential.

Cost of the sequential direction: ``D`` conditioner passes, one per element, each over only
the window of already-solved pixels that can reach that element (rows ``r − R .. r``, columns
``s − R .. s + R`` with receptive radius ``R = (k // 2)·(1 + hidden_layers)``), and the 1×1
output layer only at that pixel. Its latency grows linearly with ``D`` (784 passes for
``(4, 14, 14)``), so MAF samples and IAF densities are slow; it is differentiable.

Default transform: ``Affine(scale="soft_clamp", centred=True, bound=3)``, i.e. log-scale
``α = m·tanh(a / m)`` of the raw output ``a`` (``m = 3``): the identity near 0, bounded by
``±m``, so neither direction can overflow.

References: Germain et al., "MADE", 2015; van den Oord et al., "Pixel recurrent neural
networks" / "Conditional image generation with PixelCNN decoders", 2016; Kingma et al.,
"Improved variational inference with inverse autoregressive flow", 2016; Papamakarios et al.,
"Masked autoregressive flow for density estimation", 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.transforms import (
    CENTRED_AFFINE,
    ElementwiseTransform,
    TransformFactory,
    transform_factory,
)
from glowlab.validation import check_positive, choose, is_integer

DIRECTIONS = ("maf", "iaf")
DEFAULT_TRANSFORM = CENTRED_AFFINE


def autoregressive_conv_mask(
    in_degrees: Tensor, out_degrees: Tensor, kernel_size: int, strict: bool
) -> Tensor:
    """``(out, in, k, k)`` mask of a causal convolution (MADE degrees for convolutions).

    Kernel taps on rows above the centre, or left of it on the centre row, are open (earlier
    pixels). The centre tap connects input unit ``j`` to output unit ``i`` when
    ``deg_in[j] < deg_out[i]`` (``strict``, PixelCNN mask "A") or ``<=`` (mask "B").
    """
    centre = kernel_size // 2
    mask = torch.zeros(len(out_degrees), len(in_degrees), kernel_size, kernel_size)
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    earlier = in_degrees[None, :] < out_degrees[:, None]
    same_or_earlier = in_degrees[None, :] <= out_degrees[:, None]
    mask[:, :, centre, centre] = (earlier if strict else same_or_earlier).float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """``k×k`` convolution, padding ``k // 2``, whose weight is multiplied by a fixed
    :func:`autoregressive_conv_mask` (a non-persistent buffer, rebuilt from the degrees)."""

    def __init__(
        self, in_degrees: Tensor, out_degrees: Tensor, kernel_size: int, strict: bool
    ) -> None:
        super().__init__(len(in_degrees), len(out_degrees), kernel_size, padding=kernel_size // 2)
        mask = autoregressive_conv_mask(in_degrees, out_degrees, kernel_size, strict)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """``(B, in, H, W) -> (B, out, H, W)``; ``weight`` reuses a precomputed masked weight."""
        weight = self.masked_weight() if weight is None else weight
        return F.conv2d(x, weight, self.bias, padding=self.padding)


def output_degrees(transform: ElementwiseTransform, channels: int) -> Tensor:
    """``(P·C,)``: the channel each conditioner output belongs to under the transform's
    ``split_params`` layout (so output ``j`` gets that channel's degree)."""
    width = transform.n_params * channels
    index = transform.split_params(torch.arange(width).view(1, width))[0]  # (C, P)
    degrees = torch.empty(width, dtype=torch.long)
    degrees[index] = torch.arange(channels).view(-1, 1).expand_as(index)
    return degrees


class MaskedConvConditioner(nn.Module):
    """``(B, C, H, W) -> (B, P·C, H, W)``: the raw transform parameters of every element, each
    depending only on the elements before it in raster-then-channel order.

    masked conv ``k×k`` (C → hidden, mask A) → ReLU → ``hidden_layers`` × [masked conv ``k×k``
    (hidden → hidden, mask B) → ReLU] → masked conv 1×1 (hidden → P·C, mask B,
    zero-initialised). Input channel ``c`` has degree ``c``; hidden channels are split into
    ``C`` contiguous groups of degrees ``0..C-1``; each output has the degree of the channel
    it parametrises (``out_degrees``, default: output ``j`` belongs to channel ``j mod C``).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        kernel_size: int = 3,
        hidden_layers: int = 1,
        out_degrees: Tensor | None = None,
    ) -> None:
        super().__init__()
        input_degrees = torch.arange(channels)
        hidden_degrees = torch.arange(hidden) * channels // hidden
        output_degrees = (
            torch.arange(2 * channels) % channels if out_degrees is None else out_degrees
        )
        self.layers = nn.ModuleList(
            [MaskedConv2d(input_degrees, hidden_degrees, kernel_size, strict=True)]
            + [
                MaskedConv2d(hidden_degrees, hidden_degrees, kernel_size, strict=False)
                for _ in range(hidden_layers)
            ]
        )
        self.output = MaskedConv2d(hidden_degrees, output_degrees, 1, strict=False)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.receptive_radius = (kernel_size // 2) * (1 + hidden_layers)

    def masked_weights(self) -> list[Tensor]:
        """The hidden layers' masked weights, to reuse across many passes."""
        return [layer.masked_weight() for layer in self.layers]

    def features(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """``(B, C, H, W) -> (B, hidden, H, W)``: the last hidden layer's activations."""
        for layer, weight in zip(self.layers, weights, strict=True):
            x = F.relu(layer(x, weight))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.features(x, self.masked_weights()))


class MaskedAutoregressive(Bijection):
    """Autoregressive layer over all ``C·H·W`` elements, ``(B, C, H, W)`` in and out, with any
    elementwise ``transform`` (a factory called with ``channels``, or a built-in name).

    ``direction="maf"``: parallel forward (density), sequential inverse (sampling).
    ``direction="iaf"``: parallel inverse (sampling), sequential forward (density).
    Either way ``logdet = log|det dz/dx| = Σ_i log|∂τ/∂x_i|`` (``−Σ α`` for the default
    affine). ``reverse=True`` flips the element order (stack layers alternating it). A fresh
    layer is the identity when the transform is at zero parameters. ``cond`` is ignored.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        direction: str = "maf",
        kernel_size: int = 3,
        hidden_layers: int = 1,
        reverse: bool = False,
        transform: str | TransformFactory = DEFAULT_TRANSFORM,
    ) -> None:
        super().__init__()
        self.direction = choose("direction", direction, DIRECTIONS)
        check_positive("channels", channels)
        check_positive("hidden", hidden)
        check_positive("hidden_layers", hidden_layers, allow_zero=True)
        if not is_integer(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size={kernel_size!r} must be a positive odd number (e.g. 3) so the "
                "kernel has a centre pixel"
            )
        elementwise = transform_factory(transform)(channels=channels)
        self.conditioner = MaskedConvConditioner(
            channels, hidden, kernel_size, hidden_layers, output_degrees(elementwise, channels)
        )
        self.transform = elementwise
        self.exact_inverse = elementwise.exact_inverse
        self.reverse = reverse

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._in_order(x)
        if self.direction == "maf":
            z, logdet = self._parallel(x, inverse=False)
        else:
            z, logdet = self._sequential(x, inverse=False)
        return self._in_order(z), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        z = self._in_order(z)
        if self.direction == "maf":
            x, _ = self._sequential(z, inverse=True)
        else:
            x, _ = self._parallel(z, inverse=True)
        return self._in_order(x)

    def _in_order(self, x: Tensor) -> Tensor:
        """Flip channels, rows and columns when ``reverse``: this reverses the element order
        (and undoes itself)."""
        return x.flip(1, 2, 3) if self.reverse else x

    def _transform_elements(
        self, known: Tensor, params: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        """``τ`` (or ``τ⁻¹``) of ``known`` with ``params (..., P)``; the log-derivative of the
        forward map (zeros for the inverse direction, whose callers drop it)."""
        if inverse:
            return self.transform.inverse(known, params), torch.zeros_like(known)
        result, log_derivative = self.transform(known, params)
        return result, torch.zeros_like(known) if log_derivative is None else log_derivative

    def _parallel(self, known: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Apply ``τ`` (``τ⁻¹``) with parameters computed from ``known`` itself, in one pass.

        Returns the result ``(B, C, H, W)`` and the logdet ``(B,)`` of the forward map.
        """
        params = self.transform.split_params(self.conditioner(known))  # (B, C, H, W, P)
        result, log_derivative = self._transform_elements(known, params, inverse)
        return result, sum_except_batch(log_derivative)

    def _sequential(self, known: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Solve ``u_i = τ(known_i; θ_i(u_<i))`` (``τ⁻¹`` when ``inverse``) one element at a time.

        Each of the ``C·H·W`` passes runs the hidden layers on the window of ``u`` that can
        reach the element (image borders zero-padded exactly as in the full pass; the window's
        inner borders are at least the receptive radius away) and the 1×1 output layer at the
        element's pixel. Returns ``u`` ``(B, C, H, W)`` and the forward logdet ``(B,)``.
        """
        channels, height, width = known.shape[1:]
        radius = self.conditioner.receptive_radius
        hidden_weights = self.conditioner.masked_weights()
        output_weight = self.conditioner.output.masked_weight()[:, :, 0, 0]  # (P·C, hidden)
        output_bias = self.conditioner.output.bias
        solved = torch.zeros_like(known)
        logdet = known.new_zeros(known.shape[0])
        for row in range(height):
            top = max(row - radius, 0)
            for col in range(width):
                left, right = max(col - radius, 0), min(col + radius + 1, width)
                for channel in range(channels):
                    # clone: autograd must not see later in-place writes to ``solved``
                    window = solved[:, :, top : row + 1, left:right].clone()
                    features = self.conditioner.features(window, hidden_weights)
                    features = features[:, :, row - top, col - left]  # (B, hidden)
                    raw = F.linear(features, output_weight, output_bias)  # (B, P·C)
                    params = self.transform.split_params(raw)  # (B, C, P)
                    # the whole pixel goes through τ (per-channel transform state broadcasts);
                    # only this channel's result is valid and kept
                    result, log_derivative = self._transform_elements(
                        known[:, :, row, col], params, inverse
                    )
                    solved[:, channel, row, col] = result[:, channel]
                    logdet = logdet + log_derivative[:, channel]
        return solved, logdet


__all__ = [
    "MaskedAutoregressive",
    "MaskedConv2d",
    "MaskedConvConditioner",
    "autoregressive_conv_mask",
]
