"""Channel mixing: fixed permutations and invertible 1×1 convolutions (Glow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, constant_logdet


class ChannelPermutation(Bijection):
    """Fixed reordering of channels, ``z[:, i] = x[:, perm[i]]``; logdet = 0.

    ``ChannelPermutation.reverse(C)`` is RealNVP/NICE's reversal; ``.shuffle(C, seed)`` a
    fixed random permutation (Glow's 'shuffle' baseline).
    """

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.long())
        self.register_buffer("inverse_perm", torch.argsort(perm.long()))

    @classmethod
    def reverse(cls, channels: int) -> ChannelPermutation:
        return cls(torch.arange(channels - 1, -1, -1))

    @classmethod
    def shuffle(cls, channels: int, seed: int = 0) -> ChannelPermutation:
        return cls(torch.randperm(channels, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z[:, self.inverse_perm]


def _random_rotation(channels: int, seed: int) -> Tensor:
    """A random orthogonal ``(C, C)`` matrix (QR of a Gaussian matrix)."""
    gaussian = torch.randn(channels, channels, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(gaussian)
    return q


class _CachedWeight(Bijection):
    """Shared by the 1×1 convolutions: when no gradient is needed (evaluation, sampling) the
    assembled weight and its inverse are computed once and reused while the parameters keep
    the values they were computed from.

    The cache compares a snapshot of the parameters' values, not their version counters:
    fused optimizers (``torch.optim.Adam(fused=True)``) and writes through ``.data`` change a
    parameter without bumping its version, and a stale weight would give wrong samples and a
    wrong bpd. The comparison costs ``O(C²)``, less than assembling the weight."""

    def weight(self) -> Tensor:
        raise NotImplementedError

    def _weight_and_inverse(self, need_inverse: bool) -> tuple[Tensor, Tensor | None]:
        params = list(self.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            weight = self.weight()
            return weight, torch.linalg.inv(weight.double()) if need_inverse else None
        cache = getattr(self, "_cache", None)
        if cache is None or not _same_values(cache[0], params):
            with torch.no_grad():
                weight = self.weight()
                snapshot = [p.detach().clone() for p in params]
                cache = (snapshot, weight, torch.linalg.inv(weight.double()))
            self._cache = cache
        return cache[1], cache[2]


def _same_values(snapshot: list[Tensor], params: list[Tensor]) -> bool:
    """Whether ``params`` still hold exactly the values (and device, dtype) of ``snapshot``."""
    return all(
        s.device == p.device and s.dtype == p.dtype and torch.equal(s, p)
        for s, p in zip(snapshot, params, strict=True)
    )


def _conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``z[:, i] = Σ_j W[i, j] x[:, j]`` at every pixel: ``(B, C, H, W) -> (B, C, H, W)``."""
    return F.conv2d(x, weight.to(x.dtype)[:, :, None, None])


class InvConv1x1(_CachedWeight):
    """Invertible 1×1 convolution with a full weight ``W``; logdet = ``H·W·log|det W|``.

    Initialised to a random rotation. References: Kingma & Dhariwal, "Glow", 2018.
    """

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        self.matrix = nn.Parameter(_random_rotation(channels, seed))

    def weight(self) -> Tensor:
        return self.matrix

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = torch.linalg.slogdet(self.matrix.double())[1] * (x.shape[2] * x.shape[3])
        return _conv1x1(x, self._weight_and_inverse(False)[0]), constant_logdet(x, logdet)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return _conv1x1(z, self._weight_and_inverse(True)[1])


class InvConv1x1LU(_CachedWeight):
    """LU-parametrised invertible 1×1 convolution, ``W = P · L · (U + diag(sign · exp(log_s)))``.

    ``P`` (permutation) and ``sign`` are fixed buffers; ``L`` is unit lower-triangular and
    ``U`` strictly upper-triangular. logdet = ``H·W·Σ log_s``: O(C) instead of O(C³).
    References: Kingma & Dhariwal, "Glow", 2018 (section 3.2).
    """

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        p, lower, upper = torch.linalg.lu(_random_rotation(channels, seed))
        diag = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        """The assembled ``(C, C)`` matrix ``W``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return _conv1x1(x, self._weight_and_inverse(False)[0]), constant_logdet(x, logdet)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return _conv1x1(z, self._weight_and_inverse(True)[1])
