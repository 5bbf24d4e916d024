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

**Sampling options.** A layer whose inverse has options of its own declares them:
``sampling_options() -> {name: current value}`` and ``configure_sampling(**options)`` (and
optionally ``sampling_report() -> {name: value}`` of its latest inverse), e.g. a TarFlow
block's ``inversion``/``jacobi_tolerance``/``jacobi_max_iterations`` and an ODE block's
``sample_solver``/``sample_rtol``/``sample_atol``/``sample_step_size``. A model's options are
the union of its layers' plus ``guidance`` when it has guided parts; :func:`configure_sampling`
routes each option to every layer that declares it, so the tools name no family.

References: Ho & Salimans, "Classifier-free diffusion guidance", 2022; Efron, "Tweedie's
formula and selection bias", 2011; Zhai et al., "Normalizing flows are capable generative
models" (TarFlow), 2025.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


def _declaring(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if m is not model and hasattr(m, "sampling_options")]


def sampling_options(model: nn.Module) -> dict[str, Any]:
    """The sampling options of ``model`` with their current values (the first declaring
    layer's, in model order): its layers' options, and ``guidance`` when it has guided parts."""
    options: dict[str, Any] = {}
    for layer in _declaring(model):
        for name, value in layer.sampling_options().items():
            options.setdefault(name, value)
    parts = guided_parts(model)
    if parts:
        options["guidance"] = parts[0].guidance
    return options


def configure_sampling(model: nn.Module, **options: Any) -> dict[str, Any]:
    """Set sampling options of ``model`` (names of :func:`sampling_options`); ``None`` values
    are left as they are. Each goes to every layer that declares it; an option the model does
    not have raises one ``ValueError`` line listing those it has. Returns the new options."""
    options = {name: value for name, value in options.items() if value is not None}
    known = sampling_options(model)
    unknown = [name for name in options if name not in known]
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"this model has no sampling option {unknown[0]!r}; its options are: {have}"
        )
    if "guidance" in options:
        weight = check_guidance(model, options.pop("guidance"))
        for part in guided_parts(model):
            part.guidance = weight
    for layer in _declaring(model):
        mine = {k: v for k, v in options.items() if k in layer.sampling_options()}
        if mine:
            layer.configure_sampling(**mine)
    return sampling_options(model)


def sampling_report(model: nn.Module) -> dict[str, list[Any]]:
    """What the latest sampling did, per reporting layer in model order (e.g.
    ``{"jacobi_iterations": [3, 2]}``); entries that are None for every layer are left out."""
    report: dict[str, list[Any]] = {}
    for layer in _declaring(model):
        if hasattr(layer, "sampling_report"):
            for name, value in layer.sampling_report().items():
                report.setdefault(name, []).append(value)
    return {name: values for name, values in report.items() if any(v is not None for v in values)}
