"""The bijection contract shared by every layer in glowlab.

Direction: ``forward`` maps data -> latent and returns ``(z, logdet)`` where
``logdet = log|det dz/dx|`` has shape ``(B,)``; ``inverse`` maps latent -> data.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glowlab.bijections.reversible import reversible_forward
from glowlab.validation import choose

MEMORY_SAVING = ("none", "reversible", "checkpoint")


class Bijection(nn.Module):
    """Base class: an invertible map with a tractable log-determinant.

    Subclasses implement ``forward(x, cond=None) -> (z, logdet)`` with ``logdet`` of
    shape ``(B,)`` and ``inverse(z, cond=None) -> x``. ``cond`` is an optional context
    tensor (e.g. class labels) passed through unchanged.

    ``exact_inverse`` is False for layers whose inverse is numerical (fixed-point iteration,
    an ODE solve) or whose logdet is a random estimate: reversible backprop, which rebuilds
    inputs with ``inverse`` and re-runs ``forward``, refuses them.
    """

    exact_inverse = True

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class Sequential(Bijection):
    """Composition ``f_n ∘ ... ∘ f_1``; the logdets add up.

    ``memory_saving`` decides what a training forward keeps for backward:

    - ``"none"``: every activation (ordinary autograd);
    - ``"reversible"``: nothing but the output; the backward pass recomputes each layer's
      input from its output with ``inverse`` (``glowlab.bijections.reversible``) — memory
      flat in depth, for exactly invertible layers only;
    - ``"checkpoint"``: only the input; the backward pass re-runs the whole chain forward
      (``torch.utils.checkpoint``) — memory of one chain's activations at a time, any layer.
    """

    def __init__(self, layers: Iterable[Bijection], memory_saving: str = "none") -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory_saving = choose("memory_saving", memory_saving, MEMORY_SAVING)
        inexact = sorted({type(m).__name__ for m in self.layers if not m.exact_inverse})
        self.exact_inverse = not inexact
        if memory_saving == "reversible" and inexact:
            raise ValueError(
                f"memory_saving='reversible' needs exactly invertible layers, but "
                f"{inexact} invert numerically; use memory_saving='checkpoint'"
            )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.memory_saving != "none" and torch.is_grad_enabled() and self._needs_grad(x):
            if self.memory_saving == "reversible":
                return reversible_forward(list(self.layers), x, cond)
            return checkpoint(self._chain, x, cond, use_reentrant=False)
        return self._chain(x, cond)

    def _chain(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, step_logdet = layer(x, cond)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z, cond)
        return z

    def _needs_grad(self, x: Tensor) -> bool:
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def __len__(self) -> int:
        return len(self.layers)


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def constant_logdet(x: Tensor, value: Tensor) -> Tensor:
    """A per-sample logdet equal to ``value`` for every row of ``x``: ``(B,)``."""
    return value.to(x.dtype).expand(x.shape[0])


__all__ = ["Bijection", "Sequential", "constant_logdet", "sum_except_batch"]
