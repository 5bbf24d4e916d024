"""Reference log-likelihoods of every model preset, to hold refactors to the same numbers.

``python -m tests.preset_reference`` (from the repo root) writes
``tests/data/preset_log_probs.json``: for every ``conf/model/<name>.yaml``, ``log_prob``
(float64, nats) of 4 real Fashion-MNIST images (tiled to 3 channels and padded for the
CIFAR-sized presets) under a fixed noise draw, after
ActNorm initialisation on those images and a seeded perturbation of every parameter. The
fixture was written from the code before the composable-parts refactor (commit 5ded016).
Since then ``ZeroConv2d`` stores its weight divided by a power-of-two step scale (Adam steps
independent of the width); the perturbation is applied to the weight it applies, so the same
functions are compared. The Transformer, flow-matching and RNODE presets were added to the
fixture when they arrived (the older entries unchanged).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import (  # noqa: E402
    CONF,
    FASHION_MNIST,
    model_config_shape,
    perturb_parameters,
    shrunk,
)

REFERENCE = ROOT / "tests" / "data" / "preset_log_probs.json"
# Bit-identical on the CPU that recorded the fixtures; another CPU's float kernels sum in another
# order: up to 9.4e-9 relative on 2026-12-06's AMD EPYC (nsf_paper). A wrong or missing logdet
# term moves log p by orders of magnitude more.
RELATIVE_TOLERANCE = 1e-7


@functools.cache
def recorded_log_probs() -> dict[str, list[float]]:
    """``{preset: log p of the 4 images}`` as recorded in ``REFERENCE`` (read once)."""
    return json.loads(REFERENCE.read_text())


def assert_matches_reference(name: str, got: list[float]) -> None:
    """``got`` equals the recorded log-likelihoods of preset ``name`` (to
    ``RELATIVE_TOLERANCE``, for other CPUs' rounding)."""
    expected = recorded_log_probs()[name]
    assert got == pytest.approx(expected, rel=RELATIVE_TOLERANCE, abs=0), (name, got, expected)


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def real_images(shape: tuple[int, int, int], n: int = 4) -> torch.Tensor:
    import gzip

    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read(16 + n * 28 * 28)
    x = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(n, 1, 28, 28).clone()
    c, h, w = shape
    if (h, w) != (28, 28):
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))[:, :, :h, :w]
    return x.expand(n, c, h, w).contiguous()


def compose_model(name: str, overrides: list[str] | None = None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={name}", *(overrides or [])]).model


def reference_log_prob(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """ActNorm init on ``x``, perturb, then ``log_prob`` in eval mode at a fixed noise/seed."""
    model = model.double()
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(x)
    perturb_parameters(model, scale=0.02, seed=1)
    with torch.no_grad():  # ZeroConv2d stores W / α (its width step scale): perturb W itself
        for module in model.modules():
            if hasattr(module, "step_scale"):
                module.conv.weight.div_(module.step_scale)
    model.eval()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(3)
    with torch.no_grad():
        return model.log_prob(x, noise=noise).tolist()


def build(name: str, overrides: list[str] | None = None) -> torch.nn.Module:
    """The preset, made small with ``shrunk`` (one step per level for the multiscale
    recipes: the layout stays the preset's), at its test image shape."""
    cfg = compose_model(name, overrides)
    shape = model_config_shape(name)
    torch.manual_seed(0)
    return instantiate(cfg, image_shape=shape, n_bits=8, **shrunk(cfg)), shape


def main() -> None:
    values = {}
    for name in preset_names():
        model, shape = build(name)
        values[name] = reference_log_prob(model, real_images(shape))
        print(name, values[name])
    REFERENCE.write_text(json.dumps(values, indent=1) + "\n")


if __name__ == "__main__":
    main()
