"""Masked autoregressive image layers: MAF and IAF with a PixelCNN-style masked conditioner.

The ``D = C·H·W`` elements of a ``(B, C, H, W)`` tensor are ordered in raster order over
pixels and, within a pixel, over channels: element ``(c, r, s)`` has position
``(r·W + s)·C + c`` (``reverse=True`` uses the opposite order). A masked-convolution
conditioner (``glowlab.nets.masked.MaskedConvConditioner``) gives the parameters ``θ_i`` of
an elementwise transform ``τ`` (any ``glowlab.transforms.ElementwiseTransform``; by default
the affine ``(x − μ)·exp(−α)``) for every element from the elements strictly before it, so
the Jacobian is triangular in that order and ``log|det| = Σ_i log|∂τ/∂x_i|``.

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
from torch import Tensor

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.nets.masked import MaskedConvConditioner
from glowlab.transforms import (
    CENTRED_AFFINE,
    ElementwiseTransform,
    TransformFactory,
    transform_factory,
)
from glowlab.validation import check_positive, choose, is_integer

DIRECTIONS = ("maf", "iaf")


def output_degrees(transform: ElementwiseTransform, channels: int) -> Tensor:
    """``(P·C,)``: the channel each conditioner output belongs to under the transform's
    ``split_params`` layout (so output ``j`` gets that channel's degree)."""
    width = transform.n_params * channels
    index = transform.split_params(torch.arange(width).view(1, width))[0]  # (C, P)
    degrees = torch.empty(width, dtype=torch.long)
    degrees[index] = torch.arange(channels).view(-1, 1).expand_as(index)
    return degrees


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
        transform: str | TransformFactory = CENTRED_AFFINE,
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


__all__ = ["MaskedAutoregressive", "output_degrees"]
