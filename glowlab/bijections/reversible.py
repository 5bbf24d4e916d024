"""Memory-saving backprop for a chain of bijections (as in reversible networks).

The forward pass keeps no activations: only the chain's output. The backward pass walks the
chain in reverse, recomputing each layer's input from its output with ``inverse`` and then
re-running that one layer with autograd to get its gradients, so activation memory stays
constant in the chain's length instead of growing with it (at the price of one more forward
and one inverse per layer). References: Gomez et al., "The reversible residual network", 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _ReversibleChain(torch.autograd.Function):
    """Inputs ``(layers, cond, x, *params)``; outputs ``(z, logdet)``."""

    @staticmethod
    def forward(ctx, layers: Sequence[nn.Module], cond: Tensor | None, x: Tensor, *params):
        with torch.no_grad():
            logdet = x.new_zeros(x.shape[0])
            for layer in layers:
                x, step_logdet = layer(x, cond)
                logdet = logdet + step_logdet
        ctx.layers, ctx.cond, ctx.params = layers, cond, params
        ctx.save_for_backward(x)
        return x, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor):
        (z,) = ctx.saved_tensors
        grads = {id(p): None for p in ctx.params}
        for layer in reversed(ctx.layers):
            with torch.no_grad():
                x = layer.inverse(z, ctx.cond)
            layer_params = [p for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                z_again, logdet = layer(x, ctx.cond)
                outputs, cotangents = [z_again], [grad_z]
                if logdet.requires_grad:
                    outputs.append(logdet)
                    cotangents.append(grad_logdet)
                found = torch.autograd.grad(
                    outputs, [x, *layer_params], cotangents, allow_unused=True
                )
            grad_z, z = found[0], x.detach()
            for p, g in zip(layer_params, found[1:], strict=True):
                if g is not None:
                    grads[id(p)] = g if grads[id(p)] is None else grads[id(p)] + g
        return (None, None, grad_z, *(grads[id(p)] for p in ctx.params))


def reversible_forward(
    layers: Sequence[nn.Module], x: Tensor, cond: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Run ``layers`` on ``x`` like ``Sequential.forward``, keeping no activations for backward."""
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    return _ReversibleChain.apply(layers, cond, x, *params)
