"""``torch.compile`` for a flow, with a fallback to eager execution where it cannot run.

Each level's transform (the K flow steps) is compiled in place with ``nn.Module.compile``, so
parameter names, checkpoints and every caller stay as they are; density evaluation, training
and sampling's inverse (not compiled) are unchanged in meaning. On GPUs the win is fewer
kernel launches and Python overhead per step; on small CPU models it can be slower (measure
with ``scripts/benchmark.py --compile``).
"""

from __future__ import annotations

import warnings

import torch

from glowlab.models.multiscale import MultiscaleFlow
from glowlab.validation import choose

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_levels(
    model: MultiscaleFlow, mode: str = "default", backend: str = "inductor"
) -> bool:
    """Compile every level's transform in place; return False (and warn) if unavailable.

    ``mode``: one of ``COMPILE_MODES`` (``reduce-overhead`` adds CUDA graphs). A graph the
    compiler cannot handle at run time falls back to eager for that graph instead of failing.
    """
    choose("compile mode", mode, COMPILE_MODES)
    if not torch._dynamo.is_dynamo_supported():
        warnings.warn(
            "torch.compile is not supported on this platform/Python; running eagerly "
            "(set module.compile=null to silence this)",
            stacklevel=2,
        )
        return False
    torch._dynamo.config.suppress_errors = True
    for level in model.levels:
        level.transform.compile(mode=None if mode == "default" else mode, backend=backend)
    return True
