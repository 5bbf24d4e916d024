"""Sampling-time techniques every family can use: classifier-free guidance and score-based
(Tweedie) denoising of samples from a noise-augmented model.

**Classifier-free guidance.** A class-conditional part trained with label dropout (the label
replaced by a "null" class with probability ``label_dropout``) models both ``p(·|y)`` and the
unconditional ``p(·)``. At sampling, guidance weight ``w`` moves its parameters away from the
unconditional ones: ``θ_w = θ_∅ + (1 + w)·(θ_y − θ_∅)`` (``w = 0``: the conditional model). A
"guided" part is any module with a ``guidance`` attribute, ``num_classes`` and
``label_dropout > 0``: the multiscale flows' class-conditional top prior
(``glowlab.priors.LearnedPrior``, guided mean ``μ_∅ + (1 + w)(μ_y − μ_∅)``) and TarFlow
blocks (``glowlab.bijections.tarflow.TarFlowBlock``, guided conditioner outputs
``θ_c + w·(θ_c − θ_∅)``, the same formula). :func:`guidance` sets ``w`` on all of them for a
block of code; ``MultiscaleFlow.sample(guidance=w)`` and ``glowlab-sample guidance=w`` use it.

**Tweedie denoising.** For ``y = x + s·ε`` with ``ε ~ N(0, I)``, Tweedie's formula gives the
posterior mean ``E[x | y] = y + s²·∇_y log p(y)`` exactly, for any distribution of ``x``. A
flow trained on noisy images (``model/dequantization=gaussian``) is a model of ``p(y)``, so
its own score gives a denoiser: :func:`tweedie_denoise`.

References: Ho & Salimans, "Classifier-free diffusion guidance", 2022; Efron, "Tweedie's
formula and selection bias", 2011; Zhai et al., "Normalizing flows are capable generative
models" (TarFlow), 2025.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def guided_parts(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that apply classifier-free guidance at sampling: those with a
    ``guidance`` weight, ``num_classes`` and a null class trained by ``label_dropout > 0``."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "guidance")
        and getattr(m, "num_classes", None)
        and getattr(m, "label_dropout", 0.0) > 0
    ]


def check_guidance(model: nn.Module, weight: float) -> float:
    """``weight`` as a float; ``ValueError`` unless it is a finite number and, when non-zero,
    ``model`` has a part trained for guidance."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight != weight:
        raise ValueError(f"guidance={weight!r} must be a number (0: the conditional model)")
    if weight and not guided_parts(model):
        raise ValueError(
            f"guidance={weight!r} needs a class-conditional model trained with label dropout "
            "(model.num_classes and model.label_dropout > 0, e.g. +model.label_dropout=0.1); "
            "this model has no null class to guide away from. Use guidance=0"
        )
    return float(weight)


@contextmanager
def guidance(model: nn.Module, weight: float | None) -> Iterator[list[nn.Module]]:
    """Set the guidance weight ``w`` of every guided part of ``model`` inside the block and put
    the previous weights back after it; ``weight=None`` changes nothing. Yields the parts."""
    if weight is None:
        yield []
        return
    weight = check_guidance(model, weight)
    parts = guided_parts(model)
    previous = [part.guidance for part in parts]
    try:
        for part in parts:
            part.guidance = weight
        yield parts
    finally:
        for part, value in zip(parts, previous, strict=True):
            part.guidance = value


def tweedie_denoise(log_density: Callable[[Tensor], Tensor], y: Tensor, std: float) -> Tensor:
    """``E[x | y] = y + std²·∇_y log p(y)`` for ``y = x + std·ε``: ``(B, ...) -> (B, ...)``.

    ``log_density(y)`` returns ``log p(y)`` per sample ``(B,)``; its gradient is taken with
    respect to ``y`` only (no parameter gradients are accumulated), with autograd on even if
    the caller runs under ``torch.no_grad``.
    """
    if not std > 0:
        raise ValueError(f"std={std!r} must be > 0 (the noise std of the model's data)")
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(y).sum(), y)
    return y.detach() + std * std * score
